import assert from "node:assert/strict";
import { InputError } from "../../schemas/errors.ts";
import { f32BitsToF16, f32ToF16 } from "../../schemas/half.ts";
import { groupsPerRow } from "../../schemas/packing.ts";
import { castMatrix } from "./cast.ts";
import { codeOf, decodeCode, inverseScale, minMaxParams, type QuantOptions } from "./common.ts";
import { rtnAsymmetric, rtnAsymmetricWithError } from "./rtn.ts";
import { gaussianMatrix, heavyTailedMatrix } from "./test_util.ts";

// The straightforward RTN the fused loop replaced: min-max, Math.round codes, then a separate
// error pass. Used as the reference the fast path must match bit for bit.
function rtnReference(w: Float32Array, rows: number, cols: number, opts: QuantOptions) {
  const scaleType = opts.scaleType ?? "f16";
  const qmax = (1 << opts.bits) - 1;
  const gpr = groupsPerRow(cols, opts.groupSize);
  const codes = new Uint8Array(rows * cols);
  const scales = new Float32Array(rows * gpr);
  const zeros = new Float32Array(rows * gpr);
  const p = new Float64Array(2);
  let err = 0;
  let ref = 0;
  for (let r = 0; r < rows; r++) {
    for (let g = 0; g < gpr; g++) {
      const s = r * cols + g * opts.groupSize;
      const e = r * cols + Math.min((g + 1) * opts.groupSize, cols);
      let lo = Infinity;
      let hi = -Infinity;
      for (let i = s; i < e; i++) {
        if (w[i] < lo) lo = w[i];
        if (w[i] > hi) hi = w[i];
      }
      minMaxParams(lo, hi, qmax, scaleType, p);
      scales[r * gpr + g] = p[0];
      zeros[r * gpr + g] = p[1];
      for (let i = s; i < e; i++) {
        codes[i] = codeOf(w[i], inverseScale(p[0]), p[1], qmax);
        const d = w[i] - decodeCode(codes[i], p[1], p[0]);
        err += d * d;
        ref += w[i] * w[i];
      }
    }
  }
  return { codes, scales, zeros, err, ref };
}

Deno.test("rtn fused loop = Math.round reference bit for bit, error sums included", () => {
  const rows = 24;
  const cols = 96;
  const mats = [gaussianMatrix(rows * cols, 0.02, 7), heavyTailedMatrix(rows * cols, 1, 8)];
  // Exact ties: integers and half-integers on a grid of scale 1/8 (every 2nd value a midpoint).
  const ties = new Float32Array(rows * cols);
  for (let i = 0; i < ties.length; i++) ties[i] = ((i * 7) % 61 - 30) / 16;
  mats.push(ties);
  for (const w of mats) {
    for (const bits of [2, 3, 4, 8] as const) {
      for (const groupSize of [32, cols]) {
        for (const scaleType of ["f16", "f32"] as const) {
          const opts = { bits, groupSize, scaleType };
          const want = rtnReference(w, rows, cols, opts);
          const got = rtnAsymmetricWithError(w, rows, cols, opts);
          const plain = rtnAsymmetric(w, rows, cols, opts);
          const tag = `${bits} bits, g${groupSize}, ${scaleType}`;
          assert.deepEqual(got.u.codes, want.codes, tag);
          assert.deepEqual(plain.codes, want.codes, tag);
          assert.deepEqual(got.u.scales, want.scales, tag);
          assert.deepEqual(got.u.zeros, want.zeros, tag);
          assert.equal(got.err, want.err, tag);
          assert.equal(got.ref, want.ref, tag);
        }
      }
    }
  }
});

Deno.test("rtn fused loop: a NaN is an InputError even after a group whose range overflows f16", () => {
  const w = new Float32Array(64);
  w[0] = -1e7; // group 0 overflows an f16 scale (a LimitError on its own)
  w[1] = 1e7;
  w[40] = NaN; // group 1
  for (const f of [rtnAsymmetric, rtnAsymmetricWithError]) {
    assert.throws(
      () => f(w, 1, 64, { bits: 4, groupSize: 32, name: "w1" }),
      (e: Error) => e instanceof InputError && e.message === "w1: non-finite weight NaN at [0, 40]",
    );
  }
});

Deno.test("f32BitsToF16 = f32ToF16 on a sweep of f32 bit patterns (every exponent, both signs)", () => {
  const f = new Float32Array(1);
  const u = new Uint32Array(f.buffer);
  // A prime stride visits ~1.3M patterns spread over all exponents and mantissa bits.
  for (let x = 0; x < 2 ** 32; x += 3301) {
    u[0] = x;
    assert.equal(f32BitsToF16(x), f32ToF16(f[0]), `0x${x.toString(16)}`);
  }
  // Rounding edges around the largest binade, the normal/subnormal boundary and underflow.
  for (
    const v of [65504, 65519.99, 65520, 2 ** -14, 2 ** -14 * (1 - 2 ** -12), 2 ** -25, 2 ** -24]
  ) {
    for (const s of [v, -v]) {
      f[0] = s;
      assert.equal(f32BitsToF16(u[0]), f32ToF16(s), `${s}`);
    }
  }
});

Deno.test("castMatrix f16 from bit patterns = f32ToF16 per element", () => {
  const w = heavyTailedMatrix(5000, 0.3, 9);
  w[1] = 2 ** -20; // f16 subnormal
  w[2] = -0;
  w[3] = Infinity; // non-finite values are kept, not errors
  w[4] = NaN;
  const h = castMatrix(w, "f16");
  for (let i = 0; i < w.length; i++) assert.equal(h[i], f32ToF16(w[i]), `${i}`);
});
