/**
 * The engine refuses, at load and by name, every block variant it does not implement, and
 * accepts the shapes of the families it runs (no GPU needed: the check comes first).
 */
import assert from "node:assert/strict";
import { openArtifactBytes } from "../../schemas/artifact.ts";
import { UnsupportedError } from "../../schemas/errors.ts";
import {
  attentionBlock,
  decoderOnly,
  ffnBlock,
  gqa,
  MIXTRAL_LIKE,
  MLA_LIKE,
  mlp,
  moe,
  QWEN2_MOE_LIKE,
  rope,
  SWITCH_LIKE,
  TINY_MODEL,
  topkRouter,
} from "../../schemas/example_specs.ts";
import type { GqaAttentionSpec, ModelSpec, MoeFfnSpec } from "../../schemas/model.ts";
import { buildArtifact } from "../../schemas/testing.ts";
import { checkSupported, createWebGpuEngine } from "./mod.ts";

/** A one-layer decoder with this attention and this feed-forward block. */
function oneLayer(
  attention: Partial<GqaAttentionSpec> = {},
  ffn: Partial<MoeFfnSpec> = {},
  extra: Partial<ModelSpec> = {},
): ModelSpec {
  return decoderOnly("test", 32, 16, [[
    attentionBlock(gqa(4, 2, 4, attention)),
    ffnBlock(moe(4, 2, mlp(8), ffn)),
  ]], extra);
}

/** SWITCH_LIKE changed by `change` (on a deep copy; the stacks share block objects). */
function switchWith(change: (spec: ModelSpec) => void): ModelSpec {
  const spec = structuredClone(SWITCH_LIKE);
  change(spec);
  return spec;
}

/** Block `b` of layer `l` of a stack. */
function block(spec: ModelSpec, stack: "encoder" | "decoder", l: number, b: number) {
  return (stack === "encoder" ? spec.encoder! : spec.decoder).layers[l].blocks[b];
}

Deno.test("checkSupported accepts the families' shapes, multipliers, LayerNorm, sparsemixer, MLA, Switch", () => {
  for (const spec of [TINY_MODEL, MIXTRAL_LIKE, QWEN2_MOE_LIKE, MLA_LIKE, SWITCH_LIKE]) {
    checkSupported(spec);
  }
  checkSupported(oneLayer({ qkNorm: "head", clipQkv: 8, scale: 0.25 }));
  checkSupported(oneLayer({ qkNorm: "full", qkvBias: true }, {
    router: topkRouter({ normTopK: false, scale: 2.5 }),
    shared: { mlp: mlp(12), gated: false },
  }, { embedScale: 12, head: { tied: false, scale: 1 / 6, bias: true } }));
  // PhiMoE: LayerNorms with biases, attention output bias, sparsemixer routing.
  const layer = { kind: "layer", eps: 1e-5, bias: true } as const;
  const phi = oneLayer({ qkvBias: true, outBias: true }, {
    router: { kind: "sparsemixer", jitter: 0.01 },
  });
  for (const b of phi.decoder.layers[0].blocks) b.norm = layer;
  checkSupported({ ...phi, decoder: { ...phi.decoder, finalNorm: layer } });
  // gpt-oss: sinks, a window, YaRN, a biased router with softmax after top-k, biased clamped
  // SwiGLU experts.
  const yarn = {
    kind: "yarn",
    factor: 32,
    originalMaxPositions: 4096,
    betaFast: 32,
    betaSlow: 1,
    attentionFactor: 1.35,
    truncate: false,
  } as const;
  checkSupported(oneLayer(
    { sinks: true, slidingWindow: 4, outBias: true, position: { ...rope(1e4, 4), scaling: yarn } },
    {
      router: topkRouter({ softmaxAfterTopK: true, bias: true, normTopK: false }),
      expert: mlp(8, { kind: "swiglu_clamped", limit: 7, alpha: 1.702 }, true),
    },
  ));
  // GLM / ERNIE / DeepSeek routing and RoPE variants.
  checkSupported(oneLayer({ position: rope(1e4, 2) }, {
    router: topkRouter({
      scoring: "sigmoid",
      selectionBias: true,
      groups: { count: 2, keep: 1, score: "top2sum" },
    }),
  }));
  checkSupported(oneLayer({ position: { ...rope(1e4, 4), pairing: "interleaved" } }));
});

const REFUSED: [string, ModelSpec, string][] = [
  [
    "SwiGLU experts in an encoder–decoder model",
    switchWith((s) => {
      const b = block(s, "decoder", 1, 2);
      if (b.kind === "ffn" && b.ffn.kind === "moe") b.ffn = { ...b.ffn, expert: mlp(32) };
    }),
    "the swiglu activation (decoder layer 1 ffn block, routed experts)",
  ],
  [
    "top-k routing in an encoder–decoder model",
    switchWith((s) => {
      const b = block(s, "encoder", 1, 1);
      if (b.kind === "ffn" && b.ffn.kind === "moe") b.ffn.router = topkRouter();
    }),
    "topk routing (encoder layer 1 ffn block)",
  ],
  [
    "positions in cross-attention",
    switchWith((s) => {
      const b = block(s, "decoder", 0, 1);
      if (b.kind === "cross_attention") b.attention.position = rope(1e4, 8);
    }),
    "RoPE (decoder layer 0 cross_attention block)",
  ],
  [
    "a causal encoder",
    switchWith((s) => {
      const b = block(s, "encoder", 0, 0);
      if (b.kind === "attention" && b.attention.kind === "gqa") b.attention.causal = true;
    }),
    "causal encoder self-attention (encoder layer 0 attention block)",
  ],
  [
    "MLA with scaled RoPE",
    {
      ...MLA_LIKE,
      decoder: {
        ...MLA_LIKE.decoder,
        layers: MLA_LIKE.decoder.layers.map((l) => ({
          ...l,
          blocks: l.blocks.map((b) =>
            b.kind === "attention" && b.attention.kind === "mla"
              ? {
                ...b,
                attention: {
                  ...b.attention,
                  position: { ...b.attention.position, scaling: { kind: "linear", factor: 2 } },
                },
              }
              : b
          ),
        })),
      },
    } as ModelSpec,
    "linear RoPE scaling (decoder layer 0 attention block)",
  ],
  ["bidirectional", oneLayer({ causal: false }), "bidirectional attention"],
  ["no positions", oneLayer({ position: { kind: "none" } }), "attention without positions"],
  ["odd RoPE width", oneLayer({ position: rope(1e4, 3) }), "RoPE over 3 of 4 dims"],
  [
    "RoPE scaling",
    oneLayer({ position: { ...rope(1e4, 4), scaling: { kind: "linear", factor: 2 } } }),
    "linear RoPE scaling",
  ],
  [
    "RMSNorm bias",
    oneLayer({}, {}, {
      decoder: { ...MIXTRAL_LIKE.decoder, finalNorm: { kind: "rms", eps: 1e-5, bias: true } },
    }),
    "RMSNorm biases (decoder final norm)",
  ],
  [
    "LayerNorm q/k norm",
    oneLayer({ qkNorm: "head", qkNormSpec: { kind: "layer", eps: 1e-5, bias: false } }),
    "layer q/k norms",
  ],
  [
    "softmax after top-k with sigmoid scores",
    oneLayer({}, { router: topkRouter({ scoring: "sigmoid", softmaxAfterTopK: true }) }),
    "softmax after top-k with sigmoid scores",
  ],
  [
    "top-k above the kept groups' experts",
    oneLayer({}, {
      topK: 3,
      router: topkRouter({ groups: { count: 2, keep: 1, score: "max" } }),
    }),
    "top-3 from 1 groups of 2 experts",
  ],
  ["capacity", oneLayer({}, { router: { kind: "capacity", capacity: 4 } }), "capacity routing"],
  [
    "clamped SwiGLU shared expert",
    oneLayer({}, {
      shared: { mlp: mlp(8, { kind: "swiglu_clamped", limit: 7, alpha: 1.702 }), gated: false },
    }),
    "the swiglu_clamped activation (decoder layer 0 ffn block, shared expert)",
  ],
  ["GeGLU", oneLayer({}, { expert: mlp(8, { kind: "geglu" }) }), "the geglu activation"],
  [
    "shared expert bias",
    oneLayer({}, { shared: { mlp: mlp(8, { kind: "swiglu" }, true), gated: false } }),
    "MLP biases",
  ],
  [
    "ReLU shared expert",
    oneLayer({}, { shared: { mlp: mlp(8, { kind: "relu" }), gated: false } }),
    "the relu activation (decoder layer 0 ffn block, shared expert)",
  ],
];

for (const [label, spec, variant] of REFUSED) {
  Deno.test(`checkSupported refuses ${label}, naming it`, () => {
    assert.throws(
      () => checkSupported(spec),
      (e) =>
        e instanceof UnsupportedError && e.message.includes(variant) &&
        e.message.startsWith(`model ${spec.family}: the WebGPU engine does not implement`),
    );
  });
}

Deno.test("createWebGpuEngine refuses an unsupported artifact at load, before any device", async () => {
  for (
    const spec of [
      switchWith((s) => (s.decoder.finalNorm = { kind: "layer", eps: 1e-6, bias: false })),
      oneLayer({}, { expert: mlp(8, { kind: "geglu" }) }, { family: "t" }),
    ]
  ) {
    const artifact = await openArtifactBytes(buildArtifact(spec));
    await assert.rejects(() => createWebGpuEngine(artifact), UnsupportedError);
    artifact.close();
  }
});
