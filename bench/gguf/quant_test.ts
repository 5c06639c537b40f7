import assert from "node:assert/strict";
import { decode, encode, QK, typeBytes } from "./quant.ts";
import { roundF16 } from "../../schemas/half.ts";
import { mulberry32 } from "../../schemas/prng.ts";

/** Random non-zero values: blocks of varied scale, signs and outliers. */
function randomValues(n: number, seed: number): Float32Array {
  const r = mulberry32(seed);
  const x = new Float32Array(n);
  for (let b = 0; b < n / QK; b++) {
    const scale = 10 ** (-3 + 4 * r());
    for (let j = 0; j < QK; j++) {
      x[b * QK + j] = (r() - 0.5) * scale * (r() < 0.05 ? 8 : 1) || scale * 1e-3;
    }
  }
  return x;
}

Deno.test("F16 and F32 decode to the f16-rounded / exact values", () => {
  const x = randomValues(1024, 1);
  const h = decode("F16", encode("F16", x), x.length);
  const f = decode("F32", encode("F32", x), x.length);
  for (let i = 0; i < x.length; i++) {
    assert.equal(h[i], roundF16(x[i]));
    assert.equal(f[i], x[i]);
  }
});

Deno.test("Q8_0 is within half a step of the float64 values (step = f16(max|x| / 127))", () => {
  const x = randomValues(32 * 512, 2);
  const bytes = encode("Q8_0", x);
  assert.equal(bytes.length, typeBytes("Q8_0", x.length));
  assert.equal(bytes.length, 34 * 512);
  const w = decode("Q8_0", bytes, x.length);
  let sumSq = 0, sumStep = 0;
  for (let b = 0; b < x.length / QK; b++) {
    let amax = 0;
    for (let j = 0; j < QK; j++) amax = Math.max(amax, Math.abs(x[b * QK + j]));
    const d = amax / 127, d16 = roundF16(d);
    // q is rounded against d (f32) but decoded with d16: half a step plus 127·|d16 − d|.
    const tol = 0.5 * d16 + 127 * Math.abs(d16 - d) + 1e-12;
    for (let j = 0; j < QK; j++) {
      const e = Math.abs(w[b * QK + j] - x[b * QK + j]);
      assert.ok(e <= tol, `block ${b} element ${j}: error ${e} > ${tol}`);
      sumSq += (e / d16) ** 2;
    }
    sumStep++;
  }
  // Rounding error is uniform on ±half a step: RMS ≈ step / √12 ≈ 0.289 steps.
  const rms = Math.sqrt(sumSq / x.length);
  assert.ok(rms > 0.2 && rms < 0.35, `RMS error ${rms} steps`);
  assert.equal(sumStep, 512);
});

Deno.test("Q4_0 is within half a step, or one step at the clamped top level", () => {
  const x = randomValues(32 * 512, 3);
  const bytes = encode("Q4_0", x);
  assert.equal(bytes.length, 18 * 512);
  const w = decode("Q4_0", bytes, x.length);
  for (let b = 0; b < x.length / QK; b++) {
    let max = 0;
    for (let j = 0; j < QK; j++) if (Math.abs(x[b * QK + j]) > Math.abs(max)) max = x[b * QK + j];
    const d = max / -8, d16 = roundF16(d);
    for (let j = 0; j < QK; j++) {
      const v = x[b * QK + j], level = v / d;
      // level ∈ [−8, 8]; 7.5 and above clamp to q = 15 (level 7): up to one step off.
      const tol = (level >= 7.5 ? 1 : 0.5) * Math.abs(d16) + 8 * Math.abs(d16 - d) + 1e-12;
      const e = Math.abs(w[b * QK + j] - v);
      assert.ok(e <= tol, `block ${b} element ${j}: error ${e} > ${tol}`);
    }
    // The element of largest magnitude is exactly level −8 (up to the f16 scale).
    const jm = Array.from(x.subarray(b * QK, (b + 1) * QK)).indexOf(max);
    assert.equal(w[b * QK + jm], -8 * d16);
  }
});

Deno.test("Q4_0 packs element j in the low nibble and j + 16 in the high nibble", () => {
  // d = max / −8 = −0.5 with max = 4: level of x is −2x, q = level + 8.
  const x = new Float32Array(QK);
  for (let j = 0; j < QK; j++) x[j] = j === 0 ? 4 : (j % 8) * 0.5 - 2;
  const bytes = encode("Q4_0", x);
  assert.equal(new DataView(bytes.buffer).getUint16(0, true), 0xb800); // f16(−0.5)
  for (let j = 0; j < 16; j++) {
    const q = (v: number) => Math.min(15, Math.trunc(-2 * v + 8.5));
    assert.equal(bytes[2 + j], q(x[j]) | (q(x[j + 16]) << 4), `byte ${j}`);
  }
  assert.deepEqual(Array.from(decode("Q4_0", bytes, QK), (v) => v + 0), Array.from(x)); // −0 → 0
});

Deno.test("Q8_0 stores f16(d) then int8 q = round(x / d), halves away from zero", () => {
  const x = new Float32Array(QK);
  for (let j = 0; j < QK; j++) x[j] = (j - 15.5) * 2; // max |x| = 31 → d = 31/127
  x[0] = -127;
  const bytes = encode("Q8_0", x);
  const dv = new DataView(bytes.buffer);
  assert.equal(dv.getUint16(0, true), 0x3c00); // d = 1
  for (let j = 0; j < QK; j++) {
    assert.equal(dv.getInt8(2 + j), Math.sign(x[j]) * Math.round(Math.abs(x[j])));
  }
});

Deno.test("encoders reject lengths that are not whole blocks", () => {
  assert.throws(() => encode("Q8_0", new Float32Array(33)), /multiple of 32/);
});
