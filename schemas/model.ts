/**
 * A model is a description: the block vocabulary shared by the compiler (adapters build it from
 * config.json), the artifact header (it is stored there) and both forward passes (the float64
 * reference and the WebGPU engine each implement every variant once and pick it per layer).
 *
 * A stack is a list of layers; a layer is a list of pre-norm residual blocks,
 * `x += residualScale · block(norm(x))`; the head is `logitScale · lmHead(finalNorm(x))`.
 * Every variant is a tagged union member with its parameters, so a new family is an adapter that
 * fills these records, plus at most one new variant.
 *
 * Tensors belong to blocks by role (schemas/tensors.ts lists the roles and shapes): the record
 * (stack, layer, expert, role) names one tensor. The description says which optional tensors
 * exist (biases, norms, sinks...), so a reader knows what to expect without a family switch.
 *
 * @module
 */

// ---------------------------------------------------------------------------------------------
// Norms and positions

/**
 * A normalisation with a learned weight: `rms` is x·w/√(mean(x²)+eps) (RMSNorm, and the T5
 * norm, which is the same formula), `layer` is (x−mean)·w/√(var+eps) (+ b when `bias`).
 */
export interface NormSpec {
  kind: "rms" | "layer";
  eps: number;
  /** LayerNorm with a bias vector. */
  bias: boolean;
}

/** How RoPE frequencies are scaled for long contexts. */
export type RopeScaling =
  | { kind: "none" }
  | { kind: "linear"; factor: number }
  | {
    kind: "yarn";
    factor: number;
    originalMaxPositions: number;
    betaFast: number;
    betaSlow: number;
    /** cos/sin multiplier (transformers' attention_factor; default 0.1·ln(factor)+1). */
    attentionFactor: number;
    /** Round the correction range to integers (transformers' `truncate`, default true). */
    truncate: boolean;
  }
  | {
    kind: "llama3";
    factor: number;
    lowFreqFactor: number;
    highFreqFactor: number;
    originalMaxPositions: number;
  };

/** Rotary position embedding of the first `rotaryDim` dims of each head. */
export interface RopeSpec {
  kind: "rope";
  theta: number;
  /** Dims rotated per head (= head dim, or partial_rotary_factor · head dim). Even. */
  rotaryDim: number;
  /**
   * Which dims form a rotated pair: "half" (i, i + rotaryDim/2: transformers' rotate_half) or
   * "interleaved" (2i, 2i + 1: DeepSeek-V2/V3, GPT-J style).
   */
  pairing: "half" | "interleaved";
  scaling: RopeScaling;
}

/** T5 relative position bias: one learned scalar per (bucket, head), added to the scores. */
export interface RelativeBiasSpec {
  kind: "relative_bias";
  buckets: number;
  maxDistance: number;
  /** Encoder: both directions get buckets; decoder: only the past. */
  bidirectional: boolean;
  /** The layer that owns the bias table; the stack's other layers reuse it (T5: layer 0). */
  ownerLayer: number;
}

/** Where positions enter attention. */
export type PositionSpec = RopeSpec | RelativeBiasSpec | { kind: "none" };

// ---------------------------------------------------------------------------------------------
// Attention

/** How q and k are normalised before positions: per head, over the full projection, or not. */
export type QkNorm = "none" | "head" | "full";

/**
 * Multi-head attention with grouped K/V heads (MHA when numKvHeads = numHeads). Tensors:
 * attn_q [nh·hd, H], attn_k/attn_v [nkv·hd, H], attn_o [H, nh·hd]; optional biases, q/k norms
 * ([hd] per head or [nh·hd]/[nkv·hd] full), sinks [nh].
 */
export interface GqaAttentionSpec {
  kind: "gqa";
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  /** q/k/v projections have biases. */
  qkvBias: boolean;
  /** The output projection has a bias. */
  outBias: boolean;
  qkNorm: QkNorm;
  /** The q/k norm's formula (RMS for every current family). */
  qkNormSpec: NormSpec;
  /** q, k and v are clamped to [−clip, clip] (OLMoE clip_qkv); null for no clamp. */
  clipQkv: number | null;
  /** Multiplier of q·k (1/√hd by default; Granite attention_multiplier; T5 1). */
  scale: number;
  /** One learned logit per head joins the softmax as an extra key column (gpt-oss). */
  sinks: boolean;
  /** Keys visible to query q: kv > q − window; null for full causal attention. */
  slidingWindow: number | null;
  /** Causal (decoder) or bidirectional (encoder). */
  causal: boolean;
  position: PositionSpec;
}

/**
 * Multi-head latent attention (DeepSeek-V2/V3): queries directly (attn_q) or through a LoRA
 * (attn_q_a → attn_q_a_norm → attn_q_b); attn_kv_a gives the compressed latent (kvLoraRank) and
 * the shared RoPE key (qkRopeHeadDim); attn_kv_a_norm, attn_kv_b up-projects the latent to
 * per-head nope keys and values.
 */
export interface MlaAttentionSpec {
  kind: "mla";
  numHeads: number;
  /** null: queries come from attn_q directly. */
  qLoraRank: number | null;
  kvLoraRank: number;
  qkNopeHeadDim: number;
  qkRopeHeadDim: number;
  vHeadDim: number;
  /** Norm of the q and kv latents. */
  latentNorm: NormSpec;
  /** Multiplier of q·k (DeepSeek: mscale² / √(nope + rope)). */
  scale: number;
  position: RopeSpec;
}

/** Self-attention variants. */
export type AttentionSpec = GqaAttentionSpec | MlaAttentionSpec;

// ---------------------------------------------------------------------------------------------
// Feed-forward

/**
 * The non-linearity of an MLP, which also fixes its matrices (see {@link mlpMatrices}):
 * - `swiglu`: down(silu(gate·x) ⊙ up·x)
 * - `swiglu_clamped` (gpt-oss): gate ≤ limit, up ∈ [−limit, limit], down((up+1)·gate·σ(alpha·gate))
 * - `geglu`: down(gelu_tanh(gate·x) ⊙ up·x)
 * - `relu` (Switch/T5): down(relu(up·x)), two matrices
 */
export type ActivationSpec =
  | { kind: "swiglu" }
  | { kind: "swiglu_clamped"; limit: number; alpha: number }
  | { kind: "geglu" }
  | { kind: "relu" };

/** A two- or three-matrix MLP. Matrices [I, H] in, [H, I] out, optional biases. */
export interface MlpSpec {
  intermediate: number;
  activation: ActivationSpec;
  bias: boolean;
}

/** The names of an MLP's matrices, in order: the first is what MaxVar reads. */
export type MatrixName = "gate" | "up" | "down";

/** The matrices of an MLP with this activation, input side first. */
export function mlpMatrices(activation: ActivationSpec): readonly MatrixName[] {
  return activation.kind === "relu" ? ["up", "down"] : ["gate", "up", "down"];
}

/**
 * How tokens pick experts.
 * - `topk`: scores = softmax or sigmoid of the router logits (+ router bias); the choice uses
 *   scores + selection bias (when `selectionBias`), optionally restricted to the best `groups.keep`
 *   of `groups.count` expert groups (group score: its max, or the sum of its top two); weights are
 *   the unbiased scores of the chosen experts, renormalised when `normTopK`, times `scale`.
 *   `softmaxAfterTopK` (gpt-oss): choose by logits, weights = softmax over the k chosen logits.
 * - `sparsemixer` (PhiMoE, inference form): two rounds of argmax with a jitter-masked softmax.
 * - `capacity` (Switch): top-1 by softmax, weight = its probability; each expert takes at most
 *   `capacity` tokens per sequence, in position order; a refused token's FF output is zero.
 */
export type RouterSpec =
  | {
    kind: "topk";
    scoring: "softmax" | "sigmoid";
    softmaxAfterTopK: boolean;
    normTopK: boolean;
    scale: number;
    /** The router Linear has a bias (router_bias). */
    bias: boolean;
    /** A selection-only correction bias (router_selection_bias, e_score_correction_bias). */
    selectionBias: boolean;
    groups: { count: number; keep: number; score: "max" | "top2sum" } | null;
  }
  | { kind: "sparsemixer"; jitter: number }
  | { kind: "capacity"; capacity: number };

/** A sparse MoE feed-forward block. */
export interface MoeFfnSpec {
  kind: "moe";
  numExperts: number;
  topK: number;
  router: RouterSpec;
  /** Every routed expert has this shape (its matrices: expert_gate/up/down roles). */
  expert: MlpSpec;
  /** An always-on shared expert (shared_* roles); `gated`: × sigmoid(shared_expert_gate · x). */
  shared: { mlp: MlpSpec; gated: boolean } | null;
}

/** A dense feed-forward block (dense_* roles). */
export interface DenseFfnSpec {
  kind: "dense";
  mlp: MlpSpec;
}

/** Feed-forward variants. */
export type FfnSpec = MoeFfnSpec | DenseFfnSpec;

// ---------------------------------------------------------------------------------------------
// Blocks, layers, stacks, model

/** A pre-norm residual block: x += residualScale · body(norm(x)). */
export type BlockSpec =
  | { kind: "attention"; norm: NormSpec; attention: AttentionSpec }
  /** Decoder attention over the encoder output (K/V once per request). */
  | { kind: "cross_attention"; norm: NormSpec; attention: GqaAttentionSpec }
  | { kind: "ffn"; norm: NormSpec; ffn: FfnSpec };

/** One layer: its blocks in order. */
export interface LayerSpec {
  blocks: BlockSpec[];
  /** Multiplier of every block's output before the residual add (Granite residual_multiplier). */
  residualScale: number;
}

/** A stack of layers with its final norm. */
export interface StackSpec {
  layers: LayerSpec[];
  finalNorm: NormSpec;
}

/** Which stack a tensor belongs to. */
export type StackName = "decoder" | "encoder";

/** The whole model. */
export interface ModelSpec {
  /** The adapter that produced this (informational: nothing downstream switches on it). */
  family: string;
  vocabSize: number;
  hiddenSize: number;
  /** Longest sequence the model was trained for. */
  maxPositions: number;
  /** Multiplier of the token embeddings (Granite embedding_multiplier; 1 otherwise). */
  embedScale: number;
  /** null for decoder-only models. */
  encoder: StackSpec | null;
  decoder: StackSpec;
  head: {
    /** lm_head is the embedding matrix. */
    tied: boolean;
    /** Multiplier of the final hidden state before the head (Granite 1/logits_scaling; T5 d^-½). */
    scale: number;
    /** lm_head has a bias (lm_head_bias). */
    bias: boolean;
  };
  bosTokenId: number | null;
  eosTokenIds: number[];
  /** First decoder input of an encoder–decoder model; null for decoder-only. */
  decoderStartTokenId: number | null;
}
