/**
 * The compile stages over a model no checkpoint family has yet: an encoder–decoder whose MoE
 * layers (one per stack, after a dense layer) have two-matrix ReLU experts. Everything that is
 * indexed by MoE layer (scores, allocation, budget costs, report) must land on the right
 * (stack, layer, expert), MaxVar must read the first matrix (`up` here), and each expert matrix
 * must be stored at its expert's width. Values are seeded random non-zero f32; every figure is
 * checked against an independent float64 computation (exact where the same operations run).
 *
 * @module
 */

import assert from "node:assert/strict";
import { openArtifact } from "../../schemas/artifact.ts";
import { UsageError } from "../../schemas/errors.ts";
import { attentionBlock, ffnBlock, gqa, mlp, moe, rmsNorm } from "../../schemas/example_specs.ts";
import type { BlockSpec, GqaAttentionSpec, ModelSpec } from "../../schemas/model.ts";
import { mulberry32 } from "../../schemas/prng.ts";
import { expectedTensors, keyString } from "../../schemas/tensors.ts";
import { compileModel } from "../compile.ts";
import { expertImportance, normedWeightError } from "../data_free.ts";
import { weightError } from "../expert_error.ts";
import { expertBytes, quantizeExpert, readExpert } from "../expert_weights.ts";
import { type ModelIR, moeLayers } from "../ir.ts";
import { inlineRunner } from "../parallel/block.ts";
import { allocateBudget, maxVariance } from "../passes/mod.ts";
import { weightScores } from "./weight_scores.ts";

const H = 32, I = 64, E = 4;

/** Encoder–decoder: layer 0 of each stack dense, layer `moeAt` a MoE of 4 ReLU experts. */
function encoderDecoder(moeAt = 1): ModelSpec {
  const relu = mlp(I, { kind: "relu" });
  const self = (bidirectional: boolean): GqaAttentionSpec =>
    gqa(2, 2, 16, {
      scale: 1,
      causal: !bidirectional,
      position: {
        kind: "relative_bias",
        buckets: 8,
        maxDistance: 16,
        bidirectional,
        ownerLayer: 0,
      },
    });
  const cross = gqa(2, 2, 16, { scale: 1, causal: false, position: { kind: "none" } });
  const ffn = (l: number) =>
    ffnBlock(l === moeAt ? moe(E, 1, relu, { router: { kind: "capacity", capacity: 3 } }) : relu);
  const stack = (layer: (l: number) => BlockSpec[]) => ({
    layers: [0, 1].map((l) => ({ blocks: layer(l), residualScale: 1 })),
    finalNorm: rmsNorm(),
  });
  return {
    family: "test-encoder-decoder",
    vocabSize: 32,
    hiddenSize: H,
    maxPositions: 64,
    embedScale: 1,
    encoder: stack((l) => [attentionBlock(self(true)), ffn(l)]),
    decoder: stack((l) => [
      attentionBlock(self(false)),
      { kind: "cross_attention", norm: rmsNorm(), attention: cross },
      ffn(l),
    ]),
    head: { tied: true, scale: H ** -0.5, bias: false },
    bosTokenId: null,
    eosTokenIds: [1],
    decoderStartTokenId: 0,
  };
}

/** Every tensor of `spec` in memory: seeded non-zero values in ±[0.01, 1] · 0.1. */
function syntheticIR(spec: ModelSpec, seed: number): ModelIR {
  const tensors = expectedTensors(spec).map((t, i) => {
    const rng = mulberry32(seed * 100003 + i);
    const n = t.shape.reduce((a, b) => a * b, 1);
    const values = Float32Array.from({ length: n }, () => {
      const m = 0.1 * (0.01 + 0.99 * rng());
      return rng() < 0.5 ? -m : m;
    });
    const cols = t.shape[1] ?? n;
    return {
      stack: t.stack,
      layer: t.layer,
      expert: t.expert,
      role: t.role,
      ref: {
        name: keyString(t),
        shape: t.shape,
        dtype: "F32",
        read: () => Promise.resolve(values.slice()),
        readRows: (start: number, count: number) =>
          Promise.resolve(values.slice(start * cols, (start + count) * cols)),
      },
    };
  });
  return {
    spec,
    tensors,
    tokenizer: { tokenizerJson: null, chatTemplate: null },
    source: `synthetic-${seed}`,
  };
}

async function withTempDir(f: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "moeq-stages-" });
  try {
    await f(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

const norm = (a: Float32Array, row: number) => {
  let s = 0;
  for (let c = 0; c < H; c++) s += a[row * H + c] ** 2;
  return Math.sqrt(s);
};

Deno.test("compile: encoder–decoder ReLU experts, scores and widths per (stack, layer, expert)", async () => {
  const ir = syntheticIR(encoderDecoder(), 1);
  const init = syntheticIR(encoderDecoder(), 2);
  const layers = moeLayers(ir);
  assert.deepEqual(layers.map((l) => [l.stack, l.layer]), [["encoder", 1], ["decoder", 1]]);
  await withTempDir(async (dir) => {
    const opts = {
      denseStorage: { kind: "float", storage: "f32" } as const,
      groupSize: 32,
      quantizer: "rtn" as const,
    };
    const paper = await compileModel(ir, `${dir}/p.moeq`, {
      ...opts,
      expertStorage: { kind: "bits", average: 2.5 },
      allocator: "paper",
      init,
    });
    const uniform = await compileModel(ir, `${dir}/u.moeq`, {
      ...opts,
      expertStorage: { kind: "bits", average: 3 },
      allocator: "uniform",
    });
    assert.equal(paper.allocation!.achievedAverage, 2.5);
    assert.deepEqual(
      paper.experts.map((r) => `${r.stack}/${r.layer}/${r.expert}`),
      layers.flatMap((l) => l.experts.map((e) => `${l.stack}/${l.layer}/${e.index}`)),
    );
    const initLayers = moeLayers(init);
    for (const [i, row] of paper.experts.entries()) {
      const m = Math.floor(i / E);
      const expert = layers[m].experts[row.expert];
      // Λ: router row norms, final minus init.
      const [r, r0] = [await layers[m].router.read(), await initLayers[m].router.read()];
      const lambda = norm(r, row.expert) - norm(r0, row.expert);
      assert.ok(Math.abs(row.scores.lambda - lambda) <= 1e-12, `lambda ${i}`);
      // MaxVar of the first matrix, `up` for ReLU: up front (paper) and streamed (uniform).
      assert.equal(expert.matrices[0].name, "up");
      const up = expert.matrices[0].weight;
      const want = maxVariance(await up.read(), I, H);
      assert.equal(row.scores.maxVar, want, `paper maxVar ${i}`);
      assert.equal(uniform.experts[i].scores.maxVar, want, `uniform maxVar ${i}`);
      assert.equal(row.bytes, expertBytes([[I, H], [H, I]], row.bits as 2 | 3, 32));
      assert.ok(row.relError > 0 && row.relError < 1, `relError ${row.relError}`);
    }
    // The artifact: every expert matrix at its expert's width, everything else f32.
    const art = await openArtifact(`${dir}/p.moeq`);
    try {
      const bits = new Map(paper.experts.map((r) => [`${r.stack}/${r.layer}/${r.expert}`, r.bits]));
      let quantized = 0;
      for (const t of art.tensors) {
        const want = t.expert >= 0 && /^expert_(up|down)$/.test(t.role)
          ? bits.get(`${t.stack}/${t.layer}/${t.expert}`)
          : undefined;
        if (want === undefined) {
          assert.equal(t.storage, "f32", `${t.stack} ${t.layer} ${t.role}`);
          continue;
        }
        assert.equal(t.quant?.bits, want, `${t.stack} ${t.layer} ${t.expert} ${t.role}`);
        quantized++;
      }
      assert.equal(quantized, 2 * E * 2);
    } finally {
      art.close();
    }
  });
});

Deno.test("compile: budget weight-error costs per MoE layer match a direct computation", async () => {
  const ir = syntheticIR(encoderDecoder(), 3);
  const layers = moeLayers(ir);
  await withTempDir(async (dir) => {
    const r = await compileModel(ir, `${dir}/b.moeq`, {
      expertStorage: { kind: "bits", average: 2.5 },
      denseStorage: { kind: "float", storage: "f16" },
      allocator: "budget",
      quantizer: "rtn",
      groupSize: 32,
      dataFreeCost: "plain",
    });
    const widths = [2, 3, 4] as const;
    const cost: number[][][] = [];
    for (const layer of layers) {
      const row: number[][] = [];
      for (const expert of layer.experts) {
        const w = await readExpert(expert);
        row.push(widths.map((b) => weightError(w, quantizeExpert(w, b, 32, "rtn"))));
      }
      cost.push(row);
    }
    const want = allocateBudget({ widths, cost, targetAverage: 2.5 });
    assert.deepEqual(r.experts.map((e) => e.bits), want.bits.flat());
    assert.equal(r.allocation!.totalCost, want.summary.totalCost);
    assert.ok(r.allocation!.notes.includes("budget cost: weight error"));
  });
});

Deno.test("weight scores: an init checkpoint with MoE layers elsewhere is a UsageError", async () => {
  const ir = syntheticIR(encoderDecoder(1), 4);
  const init = syntheticIR(encoderDecoder(0), 5);
  const run = () =>
    weightScores(moeLayers(ir), H, {
      init,
      maxVarFirst: false,
      runner: inlineRunner,
      onProgress: () => {},
    });
  await assert.rejects(run, UsageError);
  await assert.rejects(run, /--init synthetic-5: MoE layers \[encoder 0, decoder 0\]/);
});

Deno.test("compile: data-free budget costs (default: normed error × routing) match a direct computation", async () => {
  const ir = syntheticIR(encoderDecoder(), 3);
  const layers = moeLayers(ir);
  const refs = new Map(ir.tensors.map((t) => [keyString(t), t.ref]));
  await withTempDir(async (dir) => {
    const r = await compileModel(ir, `${dir}/b.moeq`, {
      expertStorage: { kind: "bits", average: 2.5 },
      denseStorage: { kind: "float", storage: "f16" },
      allocator: "budget",
      quantizer: "rtn",
      groupSize: 32,
    });
    const widths = [2, 3, 4] as const;
    const cost: number[][][] = [];
    for (const layer of layers) {
      const key = { stack: layer.stack, layer: layer.layer, expert: -1, role: "ffn_norm" };
      const g = await refs.get(keyString(key))!.read();
      const imp = expertImportance("routing", layer.spec, await layer.router.read(), g);
      const row: number[][] = [];
      for (const expert of layer.experts) {
        const w = await readExpert(expert);
        row.push(
          widths.map((b) =>
            normedWeightError(w, quantizeExpert(w, b, 32, "rtn"), g) * imp[expert.index]
          ),
        );
      }
      cost.push(row);
    }
    const want = allocateBudget({ widths, cost, targetAverage: 2.5 });
    assert.deepEqual(r.experts.map((e) => e.bits), want.bits.flat());
    const total = want.summary.totalCost!;
    assert.ok(Math.abs(r.allocation!.totalCost! - total) <= 1e-9 * total);
  });
});
