import assert from "node:assert/strict";
import { UsageError } from "../../schemas/errors.ts";
import { dequantize, packedByteSizes, QUANT_BITS, unpackCodes } from "../../schemas/packing.ts";
import {
  HessianAccumulator,
  QUANT_METHODS,
  quantizeMatrix,
  quantizeUnpacked,
  type QuantMethod,
  reconstruct,
  relativeError,
} from "./mod.ts";
import { gaussianMatrix, heavyTailedMatrix, normal, rng } from "./test_util.ts";

const verbose = Deno.env.get("MOEQ_VERBOSE") === "1";
const [ROWS, COLS, N] = [24, 161, 256];

/** Correlated calibration inputs [N, COLS] (a random walk across features) and their Hessian. */
function calibration(): { x: Float64Array; h: Float64Array } {
  const g = normal(rng(42));
  const x = new Float64Array(N * COLS);
  const acc = new HessianAccumulator(COLS);
  for (let t = 0; t < N; t++) {
    const row = x.subarray(t * COLS, (t + 1) * COLS);
    let v = g();
    for (let c = 0; c < COLS; c++) row[c] = v = 0.9 * v + 0.45 * g();
    acc.add(row);
  }
  return { x, h: acc.finish() };
}

/** ‖X(W − Ŵ)ᵀ‖_F / ‖XWᵀ‖_F in float64. */
function relOutputError(x: Float64Array, w: Float32Array, wHat: Float32Array): number {
  let num = 0;
  let den = 0;
  for (let t = 0; t < N; t++) {
    for (let r = 0; r < ROWS; r++) {
      let y = 0;
      let d = 0;
      for (let c = 0; c < COLS; c++) {
        y += x[t * COLS + c] * w[r * COLS + c];
        d += x[t * COLS + c] * (w[r * COLS + c] - wHat[r * COLS + c]);
      }
      num += d * d;
      den += y * y;
    }
  }
  return Math.sqrt(num / den);
}

Deno.test("quantizeMatrix: every method, bits and data: codes in range, exact round trip, error falls with bits", () => {
  const { x, h } = calibration();
  const data = {
    gaussian: gaussianMatrix(ROWS * COLS, 0.02, 1),
    "student-t3": heavyTailedMatrix(ROWS * COLS, 0.02, 2),
  };
  for (const [dist, w] of Object.entries(data)) {
    for (const groupSize of [64, COLS]) {
      const weightErr = new Map<QuantMethod, number[]>();
      const outputErr = new Map<QuantMethod, number[]>();
      for (const method of QUANT_METHODS) {
        const errs: number[] = [];
        const outs: number[] = [];
        for (const bits of QUANT_BITS) {
          const opts = { bits, groupSize, method, hessian: h };
          const u = quantizeUnpacked(w, ROWS, COLS, opts);
          const t = quantizeMatrix(w, ROWS, COLS, opts);
          assert.equal(t.codes.length * 4, packedByteSizes(t).codes);
          const codes = unpackCodes(t.codes, ROWS, COLS, bits);
          assert.deepEqual(codes, u.codes);
          assert.ok(codes.every((q) => q < 2 ** bits));
          const hat = dequantize(t);
          assert.deepEqual(hat, reconstruct(u));
          errs.push(relativeError(w, hat));
          outs.push(relOutputError(x, w, hat));
        }
        for (let i = 1; i < errs.length; i++) {
          assert.ok(errs[i] < errs[i - 1], `${dist} gs ${groupSize} ${method}: ${errs}`);
        }
        weightErr.set(method, errs);
        outputErr.set(method, outs);
      }
      const rtn = weightErr.get("rtn")!;
      const hqq = weightErr.get("hqq")!;
      for (let i = 0; i < QUANT_BITS.length; i++) {
        assert.ok(hqq[i] <= rtn[i], `${dist} gs ${groupSize} ${QUANT_BITS[i]}-bit: hqq > rtn`);
        assert.ok(
          outputErr.get("gptq")![i] < outputErr.get("rtn")![i],
          `${dist} gs ${groupSize} ${QUANT_BITS[i]}-bit: gptq output error >= rtn`,
        );
      }
      if (verbose) {
        for (const m of QUANT_METHODS) {
          const f = (a: number[]) => a.map((v) => v.toFixed(4)).join(" ");
          console.log(
            `${dist} gs=${groupSize} ${m.padEnd(7)} weight ${f(weightErr.get(m)!)}  output ${
              f(outputErr.get(m)!)
            }`,
          );
        }
      }
    }
  }
});

Deno.test("quantizeMatrix: f32 scales, and argument errors", () => {
  const w = gaussianMatrix(4 * 64, 1, 3);
  const t = quantizeMatrix(w, 4, 64, { bits: 4, groupSize: 32, method: "rtn", scaleType: "f32" });
  assert.ok(t.scales instanceof Float32Array && t.zeros instanceof Float32Array);
  assert.throws(
    () => quantizeMatrix(w, 4, 64, { bits: 4, groupSize: 32, method: "gptq" }),
    UsageError,
  );
  assert.throws(
    () => quantizeMatrix(w, 4, 64, { bits: 4, groupSize: 32, method: "awq" as QuantMethod }),
    UsageError,
  );
  assert.throws(() => relativeError(w, w.subarray(1)), UsageError);
  assert.equal(relativeError(new Float32Array(3), new Float32Array(3)), 0);
});
