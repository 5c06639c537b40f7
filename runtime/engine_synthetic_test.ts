/**
 * Engine paths the HF fixtures do not exercise, on synthetic random models checked against the
 * CPU reference forward: per-head ("head", Qwen3) and full-width ("full", OLMoE) q/k norms,
 * dense layers, an ungated shared expert, GQA with 4:1 grouping, odd widths.
 */
import { mulberry32 as rng } from "../schemas/prng.ts";
import assert from "node:assert/strict";
import { emitArtifact } from "../compiler/emit/mod.ts";
import type { LayerIR, ModelIR, TensorRef } from "../compiler/ir_legacy.ts";
import { forward, prepareReference } from "../compiler/reference/forward.ts";
import type { ModelConfig } from "../schemas/model_legacy.ts";
import { loadModel } from "./mod.ts";

function syntheticModel(cfg: ModelConfig, seed: number): ModelIR {
  const rand = rng(seed);
  const t = (name: string, shape: number[], center = 0, scale = 0.3): TensorRef => {
    const n = shape.reduce((a, b) => a * b, 1);
    const data = Float32Array.from({ length: n }, () => center + scale * (rand() * 2 - 1));
    return { name, shape, dtype: "F32", read: () => Promise.resolve(data.slice()) };
  };
  const { hiddenSize: H, numHeads: nh, numKvHeads: nkv, headDim: hd } = cfg;
  const mlp = (p: string, I: number) => ({
    gate: t(`${p}.gate`, [I, H]),
    up: t(`${p}.up`, [I, H]),
    down: t(`${p}.down`, [H, I]),
  });
  const layers: LayerIR[] = [];
  for (let l = 0; l < cfg.numLayers; l++) {
    const p = `l${l}`;
    const qn = cfg.qkNorm === "head" ? hd : nh * hd;
    const kn = cfg.qkNorm === "head" ? hd : nkv * hd;
    layers.push({
      index: l,
      inputNorm: t(`${p}.in_norm`, [H], 1, 0.2),
      postAttentionNorm: t(`${p}.post_norm`, [H], 1, 0.2),
      attention: {
        q: t(`${p}.q`, [nh * hd, H]),
        k: t(`${p}.k`, [nkv * hd, H]),
        v: t(`${p}.v`, [nkv * hd, H]),
        o: t(`${p}.o`, [H, nh * hd]),
        qBias: cfg.qkvBias ? t(`${p}.qb`, [nh * hd]) : undefined,
        kBias: cfg.qkvBias ? t(`${p}.kb`, [nkv * hd]) : undefined,
        vBias: cfg.qkvBias ? t(`${p}.vb`, [nkv * hd]) : undefined,
        qNorm: cfg.qkNorm !== "none" ? t(`${p}.qn`, [qn], 1, 0.2) : undefined,
        kNorm: cfg.qkNorm !== "none" ? t(`${p}.kn`, [kn], 1, 0.2) : undefined,
      },
      ffn: cfg.layerKinds[l] === "dense"
        ? { kind: "dense", mlp: mlp(`${p}.dense`, cfg.denseIntermediateSize) }
        : {
          kind: "moe",
          router: t(`${p}.router`, [cfg.routing.numExperts, H], 0, 1),
          experts: Array.from({ length: cfg.routing.numExperts }, (_, e) => ({
            layer: l,
            index: e,
            ...mlp(`${p}.e${e}`, cfg.expertIntermediateSize),
          })),
          shared: cfg.sharedIntermediateSize > 0
            ? mlp(`${p}.shared`, cfg.sharedIntermediateSize)
            : undefined,
          sharedGate: cfg.sharedExpertGated ? t(`${p}.sgate`, [1, H]) : undefined,
        },
    });
  }
  const embed = t("embed", [cfg.vocabSize, H], 0, 1);
  return {
    config: cfg,
    embed,
    layers,
    finalNorm: t("final_norm", [H], 1, 0.2),
    lmHead: cfg.tieWordEmbeddings ? embed : t("lm_head", [cfg.vocabSize, H]),
    tokenizer: { tokenizerJson: null, chatTemplate: null },
    source: "synthetic",
  };
}

const BASE: ModelConfig = {
  family: "qwen3_moe",
  vocabSize: 53,
  hiddenSize: 40,
  numLayers: 3,
  numHeads: 4,
  numKvHeads: 1,
  headDim: 10,
  expertIntermediateSize: 24,
  denseIntermediateSize: 36,
  sharedIntermediateSize: 0,
  sharedExpertGated: false,
  ropeTheta: 1000000,
  rmsNormEps: 1e-6,
  maxPositions: 64,
  tieWordEmbeddings: true,
  qkvBias: false,
  qkNorm: "head",
  activation: "silu",
  routing: { scoring: "softmax", numExperts: 6, topK: 3, normTopK: true },
  layerKinds: ["moe", "dense", "moe"],
  bosTokenId: null,
  eosTokenIds: [0],
};

const CASES: { label: string; cfg: ModelConfig }[] = [
  { label: "per-head q/k norm, dense layer, tied embeddings, GQA 4:1", cfg: BASE },
  {
    label: "full-width q/k norm, ungated shared expert, q/k/v bias, no renorm",
    cfg: {
      ...BASE,
      family: "olmoe",
      qkNorm: "full",
      qkvBias: true,
      numKvHeads: 2,
      sharedIntermediateSize: 20,
      tieWordEmbeddings: false,
      layerKinds: ["moe", "moe", "moe"],
      routing: { ...BASE.routing, normTopK: false },
    },
  },
];

await Deno.mkdir(".tmp", { recursive: true });
for (const c of CASES) {
  Deno.test(`engine synthetic: ${c.label} vs CPU reference (rel ≤ 1e-5)`, async () => {
    const ir = syntheticModel(c.cfg, 5);
    const path = await Deno.makeTempFile({ dir: ".tmp", suffix: ".moeq" });
    await emitArtifact(ir, path);
    const engine = await loadModel(path, { prefillChunk: 4 });
    try {
      const ids = [1, 7, 52, 3, 3, 19, 44, 8, 0, 25];
      const want = forward(await prepareReference(ir), ids);
      const got = await engine.logits(ids);
      let num = 0, den = 0;
      got.forEach((row, t) =>
        row.forEach((v, i) => {
          num = Math.max(num, Math.abs(v - want[t][i]));
          den = Math.max(den, Math.abs(want[t][i]));
        })
      );
      console.log(`${c.label}: rel err ${(num / den).toExponential(2)}`);
      assert.ok(num / den <= 1e-5, `rel err ${num / den}`);
    } finally {
      engine.dispose();
      await Deno.remove(path);
    }
  });
}
