/**
 * Small hand-written model descriptions for tests: the tiny model of the test artifacts and one
 * of each family shape (Mixtral-like, Qwen2-MoE-like with a dense layer and a gated shared
 * expert, a Switch-like encoder–decoder with T5 relative bias and ReLU experts, DeepSeek-like
 * MLA layers), plus the helpers that spell their blocks.
 *
 * @module
 */

import type {
  ActivationSpec,
  BlockSpec,
  GqaAttentionSpec,
  MlaAttentionSpec,
  MlpSpec,
  ModelSpec,
  MoeFfnSpec,
  NormSpec,
  RopeSpec,
  RouterSpec,
} from "./model.ts";

/** An RMSNorm (also the T5 norm). */
export function rmsNorm(eps = 1e-6): NormSpec {
  return { kind: "rms", eps, bias: false };
}

/** Plain RoPE over `rotaryDim` dims, half-split pairs, no scaling. */
export function rope(theta: number, rotaryDim: number): RopeSpec {
  return { kind: "rope", theta, rotaryDim, pairing: "half", scaling: { kind: "none" } };
}

/** A causal GQA attention with RoPE over the whole head and 1/√hd scale; `extra` overrides. */
export function gqa(
  numHeads: number,
  numKvHeads: number,
  headDim: number,
  extra: Partial<GqaAttentionSpec> = {},
): GqaAttentionSpec {
  return {
    kind: "gqa",
    numHeads,
    numKvHeads,
    headDim,
    qkvBias: false,
    outBias: false,
    qkNorm: "none",
    qkNormSpec: rmsNorm(),
    clipQkv: null,
    scale: 1 / Math.sqrt(headDim),
    sinks: false,
    slidingWindow: null,
    causal: true,
    position: rope(10000, headDim),
    ...extra,
  };
}

/** An MLP of `intermediate` width. */
export function mlp(
  intermediate: number,
  activation: ActivationSpec = { kind: "swiglu" },
  bias = false,
): MlpSpec {
  return { intermediate, activation, bias };
}

/** The softmax → top-k router of Mixtral (renormalised); `extra` overrides. */
export function topkRouter(extra: Partial<Extract<RouterSpec, { kind: "topk" }>> = {}): RouterSpec {
  return {
    kind: "topk",
    scoring: "softmax",
    softmaxAfterTopK: false,
    normTopK: true,
    scale: 1,
    bias: false,
    selectionBias: false,
    groups: null,
    ...extra,
  };
}

/** A MoE block of `numExperts` experts of `expert` shape. */
export function moe(
  numExperts: number,
  topK: number,
  expert: MlpSpec,
  extra: Partial<MoeFfnSpec> = {},
): MoeFfnSpec {
  return { kind: "moe", numExperts, topK, router: topkRouter(), expert, shared: null, ...extra };
}

/** An attention block with an RMSNorm. */
export function attentionBlock(
  attention: GqaAttentionSpec | MlaAttentionSpec,
  norm = rmsNorm(),
): BlockSpec {
  return { kind: "attention", norm, attention };
}

/** A feed-forward block with an RMSNorm. */
export function ffnBlock(ffn: MoeFfnSpec | MlpSpec, norm = rmsNorm()): BlockSpec {
  return { kind: "ffn", norm, ffn: "kind" in ffn ? ffn : { kind: "dense", mlp: ffn } };
}

/** A decoder-only model around `layers` (tied head unless `extra` says otherwise). */
export function decoderOnly(
  family: string,
  vocabSize: number,
  hiddenSize: number,
  layers: BlockSpec[][],
  extra: Partial<ModelSpec> = {},
): ModelSpec {
  return {
    family,
    vocabSize,
    hiddenSize,
    maxPositions: 64,
    embedScale: 1,
    encoder: null,
    decoder: {
      layers: layers.map((blocks) => ({ blocks, residualScale: 1 })),
      finalNorm: rmsNorm(),
    },
    head: { tied: false, scale: 1, bias: false },
    bosTokenId: 1,
    eosTokenIds: [2],
    decoderStartTokenId: null,
    ...extra,
  };
}

/**
 * The model of the tiny test artifacts: vocabulary 8, hidden 32, one layer of GQA attention
 * (2 heads, 1 KV head, head dim 16) and a MoE of 2 SwiGLU experts (intermediate 32), tied head:
 * 15 tensors.
 */
export const TINY_MODEL: ModelSpec = decoderOnly("mixtral", 8, 32, [[
  attentionBlock(gqa(2, 1, 16)),
  ffnBlock(moe(2, 1, mlp(32))),
]], { head: { tied: true, scale: 1, bias: false }, maxPositions: 64 });

/** Mixtral-like: 2 layers of GQA 4/2 × 8 (RoPE θ 1e6) and 4 SwiGLU experts, top-2. */
export const MIXTRAL_LIKE: ModelSpec = decoderOnly(
  "mixtral",
  32,
  16,
  [0, 1].map(() => [
    attentionBlock(gqa(4, 2, 8, { position: rope(1e6, 8) })),
    ffnBlock(moe(4, 2, mlp(24))),
  ]),
);

/**
 * Qwen2-MoE-like: qkv biases; layer 0 a dense SwiGLU MLP, layer 1 4 experts top-2 (not
 * renormalised) plus a sigmoid-gated shared expert.
 */
export const QWEN2_MOE_LIKE: ModelSpec = decoderOnly("qwen2_moe", 32, 16, [
  [attentionBlock(gqa(4, 2, 4, { qkvBias: true })), ffnBlock(mlp(40))],
  [
    attentionBlock(gqa(4, 2, 4, { qkvBias: true })),
    ffnBlock(
      moe(4, 2, mlp(8), {
        router: topkRouter({ normTopK: false }),
        shared: { mlp: mlp(24), gated: true },
      }),
    ),
  ],
]);

/**
 * Switch-like encoder–decoder: T5 norms and relative position bias (layer 0 owns each stack's
 * table), unscaled attention, ReLU MLPs; layer 0 of each stack dense, layer 1 a top-1 capacity
 * MoE of 4 experts; the decoder's layers also attend to the encoder.
 */
export const SWITCH_LIKE: ModelSpec = (() => {
  const H = 16;
  const relu = mlp(32, { kind: "relu" });
  const self = (bidirectional: boolean, maxDistance: number): GqaAttentionSpec =>
    gqa(2, 2, 8, {
      scale: 1,
      causal: !bidirectional,
      position: { kind: "relative_bias", buckets: 8, maxDistance, bidirectional, ownerLayer: 0 },
    });
  const cross = gqa(2, 2, 8, { scale: 1, causal: false, position: { kind: "none" } });
  const experts = moe(4, 1, relu, { router: { kind: "capacity", capacity: 3 } });
  const stackOf = (layers: BlockSpec[][]) => ({
    layers: layers.map((blocks) => ({ blocks, residualScale: 1 })),
    finalNorm: rmsNorm(),
  });
  return {
    family: "switch_transformers",
    vocabSize: 32,
    hiddenSize: H,
    maxPositions: 64,
    embedScale: 1,
    encoder: stackOf([
      [attentionBlock(self(true, 16)), ffnBlock(relu)],
      [attentionBlock(self(true, 16)), ffnBlock(experts)],
    ]),
    decoder: stackOf([
      [
        attentionBlock(self(false, 16)),
        { kind: "cross_attention", norm: rmsNorm(), attention: cross },
        ffnBlock(relu),
      ],
      [
        attentionBlock(self(false, 16)),
        { kind: "cross_attention", norm: rmsNorm(), attention: cross },
        ffnBlock(experts),
      ],
    ]),
    head: { tied: true, scale: H ** -0.5, bias: false },
    bosTokenId: null,
    eosTokenIds: [1],
    decoderStartTokenId: 0,
  };
})();

/**
 * DeepSeek-like MLA: layer 0 queries directly with a dense MLP, layer 1 a q LoRA and 8 experts
 * (sigmoid scores, selection bias, 4 groups keep 2 by top-2 sum) with a shared expert.
 */
export const MLA_LIKE: ModelSpec = (() => {
  const mla = (qLoraRank: number | null): MlaAttentionSpec => ({
    kind: "mla",
    numHeads: 2,
    qLoraRank,
    kvLoraRank: 12,
    qkNopeHeadDim: 8,
    qkRopeHeadDim: 4,
    vHeadDim: 6,
    latentNorm: rmsNorm(),
    scale: 1 / Math.sqrt(12),
    position: { ...rope(10000, 4), pairing: "interleaved" },
  });
  return decoderOnly("deepseek_v3", 32, 16, [
    [attentionBlock(mla(null)), ffnBlock(mlp(40))],
    [
      attentionBlock(mla(10)),
      ffnBlock(
        moe(8, 2, mlp(8), {
          router: topkRouter({
            scoring: "sigmoid",
            selectionBias: true,
            scale: 2.5,
            groups: { count: 4, keep: 2, score: "top2sum" },
          }),
          shared: { mlp: mlp(16), gated: false },
        }),
      ),
    ],
  ]);
})();
