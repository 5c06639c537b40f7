import { randomMatrix, readF32, stepBuffer } from "./testing.ts";
import { mulberry32 as rng } from "../../schemas/prng.ts";
import assert from "node:assert/strict";
import { requestGpu } from "../device.ts";
import type { QuantBits, ScaleType } from "../../schemas/packing.ts";
import { bindKernel, getKernel, storageBuffer } from "./kernel.ts";
import { matmulGroups, type MatmulKey, matmulSource } from "./matmul.ts";
import { uploadWeightSet, weightBuffers, type WeightFormat } from "./weights.ts";

const ctx = await requestGpu();
const device = ctx.device;

/** max |gpu − ref| / max |ref| */
function relErr(gpu: ArrayLike<number>, ref: ArrayLike<number>): number {
  let num = 0, den = 0;
  for (let i = 0; i < ref.length; i++) {
    num = Math.max(num, Math.abs(gpu[i] - ref[i]));
    den = Math.max(den, Math.abs(ref[i]));
  }
  return num / den;
}

const FORMATS: WeightFormat[] = [
  { kind: "f32" },
  { kind: "f16" },
  { kind: "bf16" },
  ...([2, 3, 4, 8] as QuantBits[]).flatMap((bits) =>
    (["f16", "f32"] as ScaleType[]).flatMap((scaleType) =>
      [32, 64, 0].map((groupSize) => ({ kind: "q" as const, bits, groupSize, scaleType }))
    )
  ),
  { kind: "q", bits: 4, groupSize: 32, scaleType: "e8m0" }, // MXFP4
];

function label(f: WeightFormat): string {
  return f.kind === "q" ? `q${f.bits} g${f.groupSize || "row"} ${f.scaleType}` : f.kind;
}

const ROWS = 37;
const COLS = 77; // not a multiple of 2, 4 or 32

for (const format0 of FORMATS) {
  const tol = format0.kind === "f32" ? 1e-5 : 1e-3;
  Deno.test(`matmul dense ${label(format0)}: decode and prefill with scale/bias/residual vs f64 (rel ≤ ${tol})`, async () => {
    const format = format0.kind === "q" && format0.groupSize === 0
      ? { ...format0, groupSize: COLS }
      : format0;
    const rand = rng(7 + COLS);
    const { host, values } = randomMatrix(format, ROWS, COLS, rand);
    const set = uploadWeightSet(device, format, ROWS, COLS, [host]);
    for (const [T, tokenTile, scale] of [[1, 1, 1], [5, 4, -0.375]]) {
      const x = Float32Array.from({ length: T * COLS }, () => rand() * 2 - 1);
      const bias = Float32Array.from({ length: ROWS }, () => rand() - 0.5);
      const y0 = Float32Array.from({ length: T * ROWS }, () => rand() - 0.5);
      const key: MatmulKey = {
        format,
        rows: ROWS,
        cols: COLS,
        tokenTile,
        mode: "dense",
        bias: true,
        accumulate: true,
        scale,
      };
      const kernel = getKernel(device, matmulSource(key));
      const bufs: Record<string, GPUBuffer> = {
        step: stepBuffer(device, T),
        x: storageBuffer(device, x.byteLength, "x", x),
        y: storageBuffer(device, y0.byteLength, "y", y0),
        bias: storageBuffer(device, bias.byteLength, "bias", bias),
        ...weightBuffers(set),
      };
      const enc = device.createCommandEncoder();
      const pass = enc.beginComputePass();
      pass.setPipeline(kernel.pipeline);
      pass.setBindGroup(0, bindKernel(device, kernel, bufs));
      pass.dispatchWorkgroups(...matmulGroups(key, T));
      pass.end();
      device.queue.submit([enc.finish()]);
      const got = await readF32(device, bufs.y, T * ROWS);
      const ref = new Float64Array(T * ROWS);
      for (let t = 0; t < T; t++) {
        for (let r = 0; r < ROWS; r++) {
          let s = 0;
          for (let c = 0; c < COLS; c++) s += values[r * COLS + c] * x[t * COLS + c];
          ref[t * ROWS + r] = scale * s + bias[r] + y0[t * ROWS + r];
        }
      }
      const err = relErr(got, ref);
      assert.ok(err <= tol, `${label(format)} T=${T}: rel err ${err}`);
    }
  });
}

for (
  const format of [FORMATS[0], FORMATS[1], FORMATS[3], FORMATS[9], FORMATS[15], FORMATS.at(-1)!]
) {
  Deno.test(`matmul expert ${label(format)}: sparse dispatch writes only selected slots`, async () => {
    const fmt = format.kind === "q" && format.groupSize === 0
      ? { ...format, groupSize: COLS }
      : format;
    const rand = rng(99);
    const setExperts = [5, 2, 7]; // global expert ids of the set's matrices
    const mats = setExperts.map(() => randomMatrix(fmt, ROWS, COLS, rand));
    const set = uploadWeightSet(device, fmt, ROWS, COLS, mats.map((m) => m.host));
    const K = 2;
    for (const [T, tokenTile, xRows] of [[1, 1, "token"], [6, 4, "slot"]] as const) {
      const ids = new Uint32Array(T * K);
      for (let t = 0; t < T; t++) {
        const pool = [2, 5, 7, 9]; // 9 is not in this set
        for (let k = 0; k < K; k++) {
          ids[t * K + k] = pool.splice(Math.floor(rand() * pool.length), 1)[0];
        }
      }
      const xn = xRows === "slot" ? T * K : T;
      const x = Float32Array.from({ length: xn * COLS }, () => rand() * 2 - 1);
      const SENTINEL = 12345;
      const y0 = new Float32Array(T * K * ROWS).fill(SENTINEL);
      const key: MatmulKey = {
        format: fmt,
        rows: ROWS,
        cols: COLS,
        tokenTile,
        mode: "expert",
        xRows,
        topK: K,
      };
      const kernel = getKernel(device, matmulSource(key));
      const bufs: Record<string, GPUBuffer> = {
        step: stepBuffer(device, T),
        x: storageBuffer(device, x.byteLength, "x", x),
        y: storageBuffer(device, y0.byteLength, "y", y0),
        expertIds: storageBuffer(device, ids.byteLength, "expertIds", ids),
        setExperts: storageBuffer(device, 12, "setExperts", new Uint32Array(setExperts)),
        ...weightBuffers(set),
      };
      const enc = device.createCommandEncoder();
      const pass = enc.beginComputePass();
      pass.setPipeline(kernel.pipeline);
      pass.setBindGroup(0, bindKernel(device, kernel, bufs));
      pass.dispatchWorkgroups(...matmulGroups(key, T, setExperts.length));
      pass.end();
      device.queue.submit([enc.finish()]);
      const got = await readF32(device, bufs.y, T * K * ROWS);
      const ref = new Float64Array(T * K * ROWS).fill(SENTINEL);
      for (let t = 0; t < T; t++) {
        for (let k = 0; k < K; k++) {
          const m = setExperts.indexOf(ids[t * K + k]);
          if (m < 0) continue;
          const xr = xRows === "slot" ? t * K + k : t;
          for (let r = 0; r < ROWS; r++) {
            let s = 0;
            for (let c = 0; c < COLS; c++) s += mats[m].values[r * COLS + c] * x[xr * COLS + c];
            ref[(t * K + k) * ROWS + r] = s;
          }
        }
      }
      for (let i = 0; i < ref.length; i++) {
        if (ref[i] === SENTINEL) assert.equal(got[i], SENTINEL, `slot ${i} written`);
      }
      const err = relErr(
        got.map((v, i) => ref[i] === SENTINEL ? 0 : v),
        ref.map((v) => v === SENTINEL ? 0 : v),
      );
      const tol = fmt.kind === "f32" ? 1e-5 : 1e-3;
      assert.ok(err <= tol, `${label(fmt)} T=${T}: rel err ${err}`);
    }
  });
}
