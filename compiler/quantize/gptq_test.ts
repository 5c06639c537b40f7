import assert from "node:assert/strict";
import { UsageError } from "../../schemas/errors.ts";
import { dequantize, type QuantBits } from "../../schemas/packing.ts";
import { pack, reconstruct } from "./common.ts";
import { choleskyLower, gptq, HessianAccumulator, upperCholeskyOfInverse } from "./gptq.ts";
import { rtnAsymmetric } from "./rtn.ts";
import { gaussianMatrix, normal, rng, value64 } from "./test_util.ts";

/** n correlated input rows of length d: x = z·A with a random mixing A (row-major [n, d]). */
function correlatedInputs(n: number, d: number, seed: number): Float64Array {
  const g = normal(rng(seed));
  const a = Float64Array.from({ length: d * d }, (_, i) => (i % (d + 1) === 0 ? 1 : 0) + 0.6 * g());
  const x = new Float64Array(n * d);
  const z = new Float64Array(d);
  for (let t = 0; t < n; t++) {
    for (let k = 0; k < d; k++) z[k] = g();
    for (let k = 0; k < d; k++) {
      for (let j = 0; j < d; j++) x[t * d + j] += z[k] * a[k * d + j];
    }
  }
  return x;
}

/** Float64 2·XᵀX/n, straight from the definition. */
function hessian64(x: Float64Array, n: number, d: number): Float64Array {
  const h = new Float64Array(d * d);
  for (let i = 0; i < d; i++) {
    for (let j = 0; j < d; j++) {
      let s = 0;
      for (let t = 0; t < n; t++) s += x[t * d + i] * x[t * d + j];
      h[i * d + j] = (2 * s) / n;
    }
  }
  return h;
}

Deno.test("HessianAccumulator matches 2·XᵀX/n in float64", () => {
  const [n, d] = [40, 13];
  const x = correlatedInputs(n, d, 1);
  const acc = new HessianAccumulator(d);
  acc.add(Float32Array.from(x.subarray(0, d))); // f32 input path
  acc.addRows(x.subarray(d));
  assert.equal(acc.count, n);
  const h = acc.finish();
  const want = hessian64(x, n, d);
  for (let i = 0; i < d * d; i++) {
    assert.ok(Math.abs(h[i] - want[i]) <= 1e-6 * (1 + Math.abs(want[i])), `H[${i}]`);
  }
  assert.deepEqual(new HessianAccumulator(3).finish(), new Float64Array(9));
  assert.throws(() => acc.add(new Float32Array(d + 1)), UsageError);
});

Deno.test("choleskyLower and upperCholeskyOfInverse: LLᵀ = A, UᵀU·H = I, U upper", () => {
  const d = 37;
  const h = hessian64(correlatedInputs(80, d, 2), 80, d);
  const l = h.slice();
  assert.ok(choleskyLower(l, d));
  let maxH = 0;
  for (const v of h) maxH = Math.max(maxH, Math.abs(v));
  for (let i = 0; i < d; i++) {
    for (let j = 0; j <= i; j++) {
      let s = 0;
      for (let k = 0; k <= j; k++) s += l[i * d + k] * l[j * d + k];
      assert.ok(Math.abs(s - h[i * d + j]) <= 1e-12 * maxH);
    }
  }
  const u = upperCholeskyOfInverse(h, d)!;
  for (let i = 0; i < d; i++) {
    for (let j = 0; j < i; j++) assert.equal(u[i * d + j], 0);
  }
  // (UᵀU)·H = I
  const hinv = new Float64Array(d * d);
  for (let i = 0; i < d; i++) {
    for (let j = 0; j < d; j++) {
      let s = 0;
      for (let k = 0; k < d; k++) s += u[k * d + i] * u[k * d + j];
      hinv[i * d + j] = s;
    }
  }
  for (let i = 0; i < d; i++) {
    for (let j = 0; j < d; j++) {
      let s = 0;
      for (let k = 0; k < d; k++) s += hinv[i * d + k] * h[k * d + j];
      assert.ok(Math.abs(s - (i === j ? 1 : 0)) <= 1e-8, `(H⁻¹H)[${i},${j}] = ${s}`);
    }
  }
  assert.equal(upperCholeskyOfInverse(Float64Array.of(1, 2, 2, 1), 2), null);
});

/** Plain float64 GPTQ following the paper: H⁻¹ by Gauss-Jordan, Cholesky, column loop. */
function gptqReference(
  w: Float32Array,
  rows: number,
  cols: number,
  bits: QuantBits,
  gs: number,
  hIn: Float64Array,
): Float64Array {
  const h = [...Array(cols)].map((_, i) => [...hIn.subarray(i * cols, (i + 1) * cols)]);
  let mean = 0;
  for (let i = 0; i < cols; i++) {
    if (h[i][i] === 0) h[i][i] = 1;
    mean += h[i][i] / cols;
  }
  for (let i = 0; i < cols; i++) h[i][i] += 0.01 * mean;
  // Gauss-Jordan inverse.
  const aug = h.map((row, i) => [...row, ...row.map((_, j) => (i === j ? 1 : 0))]);
  for (let c = 0; c < cols; c++) {
    const p = aug[c][c];
    aug[c] = aug[c].map((v) => v / p);
    for (let r = 0; r < cols; r++) {
      if (r === c) continue;
      const f = aug[r][c];
      aug[r] = aug[r].map((v, j) => v - f * aug[c][j]);
    }
  }
  const hinv = aug.map((row) => row.slice(cols));
  // Upper Cholesky: hinv = UᵀU, computed row by row.
  const u = hinv.map(() => new Array(cols).fill(0));
  for (let i = 0; i < cols; i++) {
    let s = hinv[i][i];
    for (let k = 0; k < i; k++) s -= u[k][i] ** 2;
    u[i][i] = Math.sqrt(s);
    for (let j = i + 1; j < cols; j++) {
      let t = hinv[i][j];
      for (let k = 0; k < i; k++) t -= u[k][i] * u[k][j];
      u[i][j] = t / u[i][i];
    }
  }
  const qmax = 2 ** bits - 1;
  const out = new Float64Array(rows * cols);
  for (let r = 0; r < rows; r++) {
    const x = [...w.subarray(r * cols, (r + 1) * cols)];
    let s = 0;
    let z = 0;
    for (let i = 0; i < cols; i++) {
      if (i % gs === 0) {
        const grp = x.slice(i, i + gs);
        const lo = Math.min(...grp);
        const hi = Math.max(...grp);
        s = (hi - lo) / qmax; // float64 params: the reference is not bound to f16
        z = -lo / s;
      }
      const q = Math.min(qmax, Math.max(0, Math.round(x[i] / s + z)));
      const xq = (q - z) * s;
      out[r * cols + i] = xq;
      const err = (x[i] - xq) / u[i][i];
      for (let j = i + 1; j < cols; j++) x[j] -= err * u[i][j];
    }
  }
  return out;
}

/** ‖X(W − Ŵ)ᵀ‖_F in float64. */
function outputError(
  x: Float64Array,
  n: number,
  w: ArrayLike<number>,
  wHat: ArrayLike<number>,
  rows: number,
  cols: number,
): number {
  let s = 0;
  for (let t = 0; t < n; t++) {
    for (let r = 0; r < rows; r++) {
      let y = 0;
      for (let c = 0; c < cols; c++) y += x[t * cols + c] * (w[r * cols + c] - wHat[r * cols + c]);
      s += y * y;
    }
  }
  return Math.sqrt(s);
}

Deno.test("gptq: close to a plain float64 GPTQ and better than RTN on the layer output", () => {
  const [rows, cols, n] = [12, 100, 300];
  const x = correlatedInputs(n, cols, 3);
  const h = hessian64(x, n, cols);
  const w = gaussianMatrix(rows * cols, 0.02, 4);
  for (const bits of [2, 3, 4, 8] as const) {
    for (const gs of [32, cols]) {
      const u = gptq(w, rows, cols, { bits, groupSize: gs, hessian: h, scaleType: "f32" });
      const mine = reconstruct(u);
      assert.deepEqual(dequantize(pack(u)), mine);
      const ref = gptqReference(w, rows, cols, bits, gs, h);
      const eMine = outputError(x, n, w, mine, rows, cols);
      const eRef = outputError(x, n, w, ref, rows, cols);
      const eRtn = outputError(
        x,
        n,
        w,
        reconstruct(rtnAsymmetric(w, rows, cols, { bits, groupSize: gs })),
        rows,
        cols,
      );
      // f32 params vs float64 ones can flip a tie now and then: same output error within 0.5%.
      assert.ok(
        Math.abs(eMine - eRef) <= 0.005 * eRef,
        `bits ${bits} gs ${gs}: ${eMine} vs ref ${eRef}`,
      );
      assert.ok(eMine < eRtn, `bits ${bits} gs ${gs}: gptq ${eMine} >= rtn ${eRtn}`);
    }
  }
});

Deno.test("gptq: zero Hessian is RTN; dead columns keep their weights; bad Hessian rejected", () => {
  const [rows, cols] = [5, 64];
  const w = gaussianMatrix(rows * cols, 0.02, 6);
  const opts = { bits: 3 as const, groupSize: 32 };
  assert.deepEqual(
    gptq(w, rows, cols, { ...opts, hessian: new Float64Array(cols * cols) }),
    rtnAsymmetric(w, rows, cols, opts),
  );
  // Column 7 never sees input: its weights are quantized to nearest, not zeroed.
  const x = correlatedInputs(200, cols, 7);
  for (let t = 0; t < 200; t++) x[t * cols + 7] = 0;
  const u = gptq(w, rows, cols, { ...opts, hessian: hessian64(x, 200, cols) });
  for (let r = 0; r < rows; r++) {
    const q = u.codes[r * cols + 7];
    const d = (q2: number) => Math.abs(w[r * cols + 7] - value64(u, r, 7, q2));
    if (q > 0) assert.ok(d(q) <= d(q - 1), `row ${r}: dead column not nearest`);
    if (q < 7) assert.ok(d(q) <= d(q + 1), `row ${r}: dead column not nearest`);
  }
  assert.throws(() => gptq(w, rows, cols, { ...opts, hessian: new Float64Array(10) }), UsageError);
});
