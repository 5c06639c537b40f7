import assert from "node:assert/strict";
import { InputError } from "../../schemas/errors.ts";
import type { ExpertIR, LayerIR, ModelIR, TensorRef } from "../ir_legacy.ts";
import { expertScores } from "./collect.ts";
import { mulberry32 } from "../../schemas/prng.ts";

function ref(name: string, rows: number, cols: number, seed: number): TensorRef {
  const rng = mulberry32(seed);
  const data = Float32Array.from({ length: rows * cols }, () => rng() * 2 - 1 || 0.5);
  return { name, shape: [rows, cols], dtype: "F32", read: () => Promise.resolve(data.slice()) };
}

/** A model with only what the passes read: layer 1 dense, layers 0 and 2 MoE (E = 3, H = 8). */
function toyModel(seed: number, denseMiddle = true): ModelIR {
  const H = 8, I = 5, E = 3;
  const layers = [0, 1, 2].map((index): LayerIR => {
    const ffn: LayerIR["ffn"] = index === 1 && denseMiddle
      ? {
        kind: "dense",
        mlp: { gate: ref("g", I, H, 1), up: ref("u", I, H, 2), down: ref("d", H, I, 3) },
      }
      : {
        kind: "moe",
        router: ref(`l${index}.router`, E, H, seed + index),
        experts: Array.from({ length: E }, (_, e): ExpertIR => ({
          layer: index,
          index: e,
          gate: ref(`l${index}.e${e}.w1`, I, H, seed * 100 + index * 10 + e),
          up: ref(`l${index}.e${e}.w3`, I, H, seed * 200 + index * 10 + e),
          down: ref(`l${index}.e${e}.w2`, H, I, seed * 300 + index * 10 + e),
        })),
      };
    return { index, ffn } as LayerIR;
  });
  return { config: { hiddenSize: H }, layers, source: `toy${seed}` } as unknown as ModelIR;
}

Deno.test("expertScores: tables match the per-expert passes; dense layer empty", async () => {
  const fin = toyModel(1), init = toyModel(2);
  const s = await expertScores(fin, init);
  assert.equal(s.usedInit, true);
  assert.deepEqual(s.lambda.map((r) => r.length), [3, 0, 3]);
  assert.deepEqual(s.maxVar[1], []);
  // Independent reference for layer 2 expert 1: norms and variances computed here directly.
  const moe = fin.layers[2].ffn, moeInit = init.layers[2].ffn;
  assert.ok(moe.kind === "moe" && moeInit.kind === "moe");
  const r = await moe.router.read(), r0 = await moeInit.router.read();
  const norm = (a: Float32Array, s0: number) => Math.hypot(...a.subarray(s0 * 8, s0 * 8 + 8));
  assert.ok(Math.abs(s.lambda[2][1] - (norm(r, 1) - norm(r0, 1))) < 1e-12);
  const w1 = await moe.experts[1].gate.read();
  let best = 0;
  for (let row = 0; row < 5; row++) {
    const x = [...w1.subarray(row * 8, row * 8 + 8)];
    const m = x.reduce((a, b) => a + b, 0) / 8;
    best = Math.max(best, x.reduce((a, b) => a + (b - m) ** 2, 0) / 8);
  }
  assert.ok(Math.abs(s.maxVar[2][1] - best) < 1e-12);
  const all = [w1, await moe.experts[1].up.read(), await moe.experts[1].down.read()]
    .flatMap((a) => [...a]);
  assert.ok(Math.abs(s.range[2][1] - (Math.max(...all) - Math.min(...all))) < 1e-12);
  const noInit = await expertScores(fin);
  assert.equal(noInit.usedInit, false);
  assert.ok(Math.abs(noInit.lambda[2][1] - norm(r, 1)) < 1e-12);
});

Deno.test("expertScores: mismatched init checkpoint is an InputError", async () => {
  await assert.rejects(() => expertScores(toyModel(1), toyModel(2, false)), InputError);
  await assert.rejects(() => expertScores(toyModel(1, false), toyModel(2)), /layer 1 is moe/);
  const short = toyModel(2);
  short.layers.pop();
  await assert.rejects(() => expertScores(toyModel(1), short), /init checkpoint has 2 layers/);
});
