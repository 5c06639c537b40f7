import assert from "node:assert/strict";
import { InputError } from "../../schemas/errors.ts";
import { dequantize, E2M1_VALUES, e8m0Scale, groupsPerRow } from "../../schemas/packing.ts";
import { e2m1Code, mxfp4ScaleByte, quantizeMxfp4 } from "./mxfp4.ts";
import { gaussianMatrix, heavyTailedMatrix } from "./test_util.ts";

Deno.test("mxfp4: e2m1 rounding is nearest with ties to the even code, saturating", () => {
  for (let c = 0; c < 16; c++) {
    if (c !== 8) assert.equal(e2m1Code(E2M1_VALUES[c]), c);
  }
  const cases: [number, number][] = [
    [0.25, 0],
    [0.2500001, 1],
    [0.75, 2],
    [1.25, 2],
    [1.75, 4],
    [2.5, 4],
    [3.5, 6],
    [5, 6],
    [5.01, 7],
    [100, 7],
    [-0.75, 10],
    [-7, 15],
    [-0.1, 0],
  ];
  for (const [v, want] of cases) assert.equal(e2m1Code(v), want, `e2m1Code(${v})`);
});

Deno.test("mxfp4: the OCP scale puts a block's largest magnitude in [4, 8)", () => {
  for (const amax of [1e-30, 0.003, 0.25, 1, 1.5, 7.99, 8, 1000]) {
    const s = e8m0Scale(mxfp4ScaleByte(amax));
    assert.ok(amax / s >= 4 && amax / s < 8, `amax ${amax}: scale ${s}`);
  }
  assert.equal(mxfp4ScaleByte(0), 0);
  assert.equal(mxfp4ScaleByte(2 ** -200), 1);
});

Deno.test("mxfp4: every weight decodes to its block's nearest e2m1 point; error vs float64", () => {
  for (const [rows, cols] of [[5, 96], [3, 70], [2, 1]]) {
    const data: [Float32Array, number][] = [
      [gaussianMatrix(rows * cols, 0.02, cols), 0.15],
      [heavyTailedMatrix(rows * cols, 1, 7), 0.25],
    ];
    for (const [w, bound] of data) {
      const t = quantizeMxfp4(w, rows, cols);
      const dq = dequantize(t);
      const gpr = groupsPerRow(cols, 32);
      let err = 0, ref = 0;
      for (let r = 0; r < rows; r++) {
        for (let c = 0; c < cols; c++) {
          const i = r * cols + c;
          const s = e8m0Scale(t.scales[r * gpr + (c >> 5)]);
          // Brute force in float64: no grid point of the block is nearer than the chosen one.
          const best = Math.min(...E2M1_VALUES.map((v) => Math.abs(w[i] - v * s)));
          assert.ok(Math.abs(w[i] - dq[i]) <= best, `[${r}, ${c}]: ${dq[i]} for ${w[i]}`);
          err += (w[i] - dq[i]) ** 2;
          ref += w[i] ** 2;
        }
      }
      // e2m1 has 1 mantissa bit: relative RMS error ≈ 0.1 on Gaussian blocks, more with outliers.
      const rel = Math.sqrt(err / ref);
      console.log(`mxfp4 ${rows}x${cols}: relative RMS error vs float64 ${rel.toFixed(4)}`);
      assert.ok(rel < bound, `relative error ${rel} ≥ ${bound}`);
    }
  }
});

Deno.test("mxfp4: zero blocks, non-finite weights", () => {
  const t = quantizeMxfp4(new Float32Array(64), 1, 64);
  assert.deepEqual([...t.scales], [0, 0]);
  assert.deepEqual([...dequantize(t)], new Array(64).fill(0));
  assert.throws(
    () => quantizeMxfp4(Float32Array.of(1, NaN), 1, 2, "experts.0.w1"),
    (e) => e instanceof InputError && /experts\.0\.w1.*\[0, 1\]/.test(e.message),
  );
});
