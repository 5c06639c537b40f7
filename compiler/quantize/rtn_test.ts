import assert from "node:assert/strict";
import { InputError, LimitError, UsageError } from "../../schemas/errors.ts";
import { roundF16 } from "../../schemas/half.ts";
import { dequantize, groupsPerRow, type QuantBits } from "../../schemas/packing.ts";
import { minMaxParams, pack, reconstruct } from "./common.ts";
import { rtnAsymmetric, rtnSymmetric } from "./rtn.ts";
import { assertNearest, gaussianMatrix, heavyTailedMatrix, value64 } from "./test_util.ts";

const BITS: QuantBits[] = [2, 3, 4, 8];
const SHAPES: [number, number, number][] = [[5, 100, 32], [3, 257, 64], [4, 33, 33], [2, 1, 1]];

Deno.test("rtn: min-max params, nearest codes, error bound, on odd shapes", () => {
  for (const [rows, cols, gs] of SHAPES) {
    const w = gaussianMatrix(rows * cols, 0.02, rows * 1000 + cols);
    for (const bits of BITS) {
      const u = rtnAsymmetric(w, rows, cols, { bits, groupSize: gs });
      assertNearest(w, u);
      const qmax = (1 << bits) - 1;
      const gpr = groupsPerRow(cols, gs);
      for (let r = 0; r < rows; r++) {
        for (let g = 0; g < gpr; g++) {
          const grp = w.subarray(r * cols + g * gs, r * cols + Math.min((g + 1) * gs, cols));
          const lo = Math.min(...grp);
          const hi = Math.max(...grp);
          const s = u.scales[r * gpr + g];
          const z = u.zeros[r * gpr + g];
          if (hi === lo) continue;
          // Stored params are the f16 roundings of the float64 formulas.
          assert.equal(s, roundF16((hi - lo) / qmax));
          assert.equal(z, roundF16(-lo / s));
          // Max error: half a step plus the f16 rounding of scale (·qmax) and zero (·scale).
          const bound = s / 2 + (hi - lo) * 2 ** -10 + s * Math.abs(z) * 2 ** -10;
          for (let i = 0; i < grp.length; i++) {
            const x = grp[i];
            const e = Math.abs(x - value64(u, r, g * gs + i, u.codes[r * cols + g * gs + i]));
            assert.ok(e <= bound, `rtn error ${e} > ${bound}`);
          }
        }
      }
    }
  }
});

Deno.test("rtn: reconstruct equals packed dequantize exactly, and float64 within 2^-23", () => {
  const w = heavyTailedMatrix(7 * 95, 0.02, 3);
  for (const bits of BITS) {
    for (const scaleType of ["f16", "f32"] as const) {
      for (const f of [rtnAsymmetric, rtnSymmetric]) {
        const u = f(w, 7, 95, { bits, groupSize: 32, scaleType });
        const mine = reconstruct(u);
        assert.deepEqual(dequantize(pack(u)), mine);
        for (let i = 0; i < mine.length; i++) {
          const exact = value64(u, Math.floor(i / 95), i % 95, u.codes[i]);
          assert.ok(Math.abs(mine[i] - exact) <= Math.abs(exact) * 2 ** -23 + 1e-30);
        }
      }
    }
  }
});

Deno.test("rtn-sym: zero is 2^(b-1), largest weight kept, nearest codes", () => {
  const [rows, cols] = [6, 100];
  const w = heavyTailedMatrix(rows * cols, 0.02, 11);
  for (const bits of BITS) {
    const u = rtnSymmetric(w, rows, cols, { bits, groupSize: cols });
    assertNearest(w, u);
    for (let r = 0; r < rows; r++) {
      assert.equal(u.zeros[r], 2 ** (bits - 1));
      const row = w.subarray(r * cols, (r + 1) * cols);
      let m = 0;
      for (const x of row) if (Math.abs(x) > Math.abs(m)) m = x;
      const i = row.indexOf(m);
      const back = value64(u, r, i, u.codes[r * cols + i]);
      assert.ok(Math.abs(back - m) <= Math.abs(m) * 2 ** -11, `row ${r}: ${back} vs ${m}`);
    }
  }
});

Deno.test("rtn: degenerate groups give no NaN", () => {
  const out = new Float64Array(2);
  minMaxParams(0, 0, 15, "f16", out);
  assert.deepEqual([...out], [0, 0]);
  // A constant group decodes to (nearly) its value.
  for (const c of [0.75, -3.5, 1e-3]) {
    minMaxParams(c, c, 15, "f16", out);
    const [s, z] = out;
    const q = Math.min(15, Math.max(0, Math.round(c / s + z)));
    assert.ok(Math.abs((q - z) * s - c) <= Math.abs(c) * 2 ** -10, `constant ${c}`);
  }
  // A tiny range far from 0 would need an f16 zero beyond 65504: the range is widened.
  minMaxParams(1000, 1000.01, 3, "f16", out);
  assert.ok(Number.isFinite(out[1]) && out[1] >= 0 && out[1] <= 3);
  assert.throws(() => minMaxParams(-1e6, 1e6, 3, "f16", out), LimitError);
  minMaxParams(-1e6, 1e6, 3, "f32", out);
  assert.ok(Number.isFinite(out[0]));

  const rows = 3;
  const cols = 64;
  const w = new Float32Array(rows * cols); // row 0 zeros, row 1 constant, row 2 mixed
  w.fill(0.5, cols, 2 * cols);
  for (let c = 0; c < cols; c++) w[2 * cols + c] = c % 2 ? 0.25 : -0.25;
  for (const f of [rtnAsymmetric, rtnSymmetric]) {
    const hat = reconstruct(f(w, rows, cols, { bits: 4, groupSize: 32 }));
    for (let i = 0; i < w.length; i++) {
      // Symmetric: the side opposite the largest weight tops out one step (0.25/8) short.
      const tol = f === rtnSymmetric && i >= 2 * cols ? 0.25 / 8 + 1e-6 : 1e-3;
      assert.ok(Math.abs(hat[i] - w[i]) <= tol, `${f.name} [${i}]: ${hat[i]} vs ${w[i]}`);
    }
  }
});

Deno.test("rtn: bad arguments are UsageErrors naming the tensor", () => {
  const w = new Float32Array(64);
  const bad = [
    () => rtnAsymmetric(w, 2, 33, { bits: 4, groupSize: 32, name: "t" }),
    () => rtnAsymmetric(w, 2, 32, { bits: 5 as QuantBits, groupSize: 32, name: "t" }),
    () => rtnAsymmetric(w, 1, 64, { bits: 4, groupSize: 48, name: "t" }),
    () => rtnAsymmetric(w, 0, 64, { bits: 4, groupSize: 64, name: "t" }),
  ];
  for (const f of bad) {
    assert.throws(f, (e: Error) => e instanceof UsageError && /^t: /.test(e.message));
  }
  // A non-finite weight is bad input data (exit 3), not a bad argument.
  assert.throws(
    () => rtnAsymmetric(Float32Array.of(1, NaN), 1, 2, { bits: 4, groupSize: 2, name: "t" }),
    (e: Error) =>
      e instanceof InputError && /^t: non-finite weight NaN at \[0, 1\]/.test(e.message),
  );
});
