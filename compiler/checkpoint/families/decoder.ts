/**
 * Building blocks for the config.json of a Hugging Face decoder-only MoE (the Llama lineage):
 * each family module composes these, so one field is parsed in one place.
 *
 * @module
 */

import { InputError, UnsupportedError } from "../../../schemas/errors.ts";
import type {
  AttentionSpec,
  FfnSpec,
  GqaAttentionSpec,
  MlpSpec,
  ModelSpec,
  MoeFfnSpec,
  NormSpec,
  QkNorm,
  RopeSpec,
} from "../../../schemas/model.ts";
import { type ConfigFields, MAX_COUNT } from "../fields.ts";

/** RMSNorm with this epsilon. */
export function rmsNorm(eps: number): NormSpec {
  return { kind: "rms", eps, bias: false };
}

/** A bias-free SwiGLU MLP of this width. */
export function swiglu(intermediate: number): MlpSpec {
  return { intermediate, activation: { kind: "swiglu" }, bias: false };
}

/** `hidden_act` must be silu (every expert here is SwiGLU). */
function requireSilu(f: ConfigFields): void {
  const act = f.raw.hidden_act ?? "silu";
  if (act !== "silu") {
    throw new UnsupportedError(`${f.file}: hidden_act ${JSON.stringify(act)} is not supported`);
  }
}

/**
 * The sizes every decoder config has: vocabulary, width, layer count, and the attention geometry
 * (heads, kv heads dividing them, head dim defaulting to hidden / heads); `hidden_act` must be silu.
 */
export function decoderSizes(f: ConfigFields) {
  requireSilu(f);
  const vocabSize = f.positiveInt("vocab_size");
  const hiddenSize = f.positiveInt("hidden_size");
  const numLayers = f.positiveInt("num_hidden_layers", undefined, MAX_COUNT);
  const numHeads = f.positiveInt("num_attention_heads", undefined, MAX_COUNT);
  const numKvHeads = f.positiveInt("num_key_value_heads", numHeads);
  if (numHeads % numKvHeads !== 0) {
    throw new InputError(
      `field "num_key_value_heads" (${numKvHeads}) must divide num_attention_heads (${numHeads})`,
      f.file,
    );
  }
  if (!f.has("head_dim") && hiddenSize % numHeads !== 0) {
    throw new InputError(
      `field "head_dim" missing and hidden_size ${hiddenSize} is not divisible by ${numHeads} heads`,
      f.file,
    );
  }
  const headDim = f.positiveInt("head_dim", hiddenSize / numHeads);
  if (headDim % 2 !== 0) f.fail("head_dim", `must be even for RoPE, got ${headDim}`);
  return { vocabSize, hiddenSize, numLayers, numHeads, numKvHeads, headDim };
}

/**
 * Full-width, half-split RoPE from `rope_theta` or transformers-v5 `rope_parameters` (or the
 * older `rope_scaling`); only the default (unscaled) type is supported.
 */
export function rope(f: ConfigFields, fallbackTheta: number, rotaryDim: number): RopeSpec {
  const key = f.has("rope_parameters") ? "rope_parameters" : "rope_scaling";
  let theta: number | null = null;
  if (f.has(key)) {
    const raw = f.raw[key];
    if (typeof raw !== "object" || Array.isArray(raw)) {
      throw new InputError('field "rope_parameters" must be an object', f.file);
    }
    const p = f.object(key)!;
    const type = p.raw.rope_type ?? p.raw.type ?? "default";
    if (type !== "default") {
      throw new UnsupportedError(`${f.file}: RoPE type ${JSON.stringify(type)} is not supported`);
    }
    if (p.raw.rope_theta !== undefined) {
      theta = p.positiveNumber("rope_theta", fallbackTheta);
    }
  }
  theta ??= f.positiveNumber("rope_theta", fallbackTheta);
  return { kind: "rope", theta, rotaryDim, pairing: "half", scaling: { kind: "none" } };
}

/** Options of {@link gqaAttention}: what differs between the families. */
export interface GqaOptions {
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  qkvBias: boolean;
  qkNorm: QkNorm;
  /** Epsilon of the q/k RMSNorm (the model's rms_norm_eps). */
  eps: number;
  clipQkv: number | null;
  position: RopeSpec;
}

/** Causal GQA attention with scale 1/√head_dim, no sinks, no window, no output bias. */
export function gqaAttention(o: GqaOptions): GqaAttentionSpec {
  return {
    kind: "gqa",
    numHeads: o.numHeads,
    numKvHeads: o.numKvHeads,
    headDim: o.headDim,
    qkvBias: o.qkvBias,
    outBias: false,
    qkNorm: o.qkNorm,
    qkNormSpec: rmsNorm(o.eps),
    clipQkv: o.clipQkv,
    scale: o.headDim ** -0.5,
    sinks: false,
    slidingWindow: null,
    causal: true,
    position: o.position,
  };
}

/** Options of {@link softmaxMoe}. */
export interface MoeOptions {
  /** The config key of the expert count, and the alias transformers also accepts. */
  expertsKey: string;
  expertsAlias: string;
  /** Width of each routed expert. */
  intermediate: number;
  /** Renormalise the top-k weights. */
  normTopK: boolean;
  shared: MoeFfnSpec["shared"];
}

/**
 * A MoE block routed by softmax over all experts then top-k (`num_experts_per_tok`), optionally
 * renormalised, with SwiGLU experts.
 */
export function softmaxMoe(f: ConfigFields, o: MoeOptions): MoeFfnSpec {
  const key = f.has(o.expertsKey) || !f.has(o.expertsAlias) ? o.expertsKey : o.expertsAlias;
  const numExperts = f.positiveInt(key, undefined, MAX_COUNT);
  const topK = f.positiveInt("num_experts_per_tok");
  if (topK > numExperts) {
    throw new InputError(
      `field "num_experts_per_tok" (${topK}) exceeds the number of experts (${numExperts})`,
      f.file,
    );
  }
  return {
    kind: "moe",
    numExperts,
    topK,
    router: {
      kind: "topk",
      scoring: "softmax",
      softmaxAfterTopK: false,
      normTopK: o.normTopK,
      scale: 1,
      bias: false,
      selectionBias: false,
      groups: null,
    },
    expert: swiglu(o.intermediate),
    shared: o.shared,
  };
}

/**
 * Which layers are MoE under Qwen's rule: layer i is MoE unless listed in `mlp_only_layers`, and
 * only when (i + 1) is a multiple of `decoder_sparse_step`.
 */
export function qwenSparseLayers(f: ConfigFields, numLayers: number): boolean[] {
  const step = f.positiveInt("decoder_sparse_step", 1);
  const mlpOnly = new Set(f.intList("mlp_only_layers"));
  return Array.from({ length: numLayers }, (_, i) => !mlpOnly.has(i) && (i + 1) % step === 0);
}

/**
 * The feed-forward block of every layer of a Qwen-style MoE (Qwen2-MoE, Qwen3-MoE): a softmax
 * top-k MoE of `moe_intermediate_size` experts (`norm_topk_prob`, default false) where
 * {@link qwenSparseLayers} says so, a dense SwiGLU of `intermediate_size` elsewhere.
 */
export function qwenFfns(
  f: ConfigFields,
  numLayers: number,
  shared: MoeFfnSpec["shared"],
): FfnSpec[] {
  const moe = softmaxMoe(f, {
    expertsKey: "num_experts",
    expertsAlias: "num_local_experts",
    intermediate: f.positiveInt("moe_intermediate_size"),
    normTopK: f.bool("norm_topk_prob", false),
    shared,
  });
  const sparse = qwenSparseLayers(f, numLayers);
  const dense: FfnSpec | null = sparse.every(Boolean)
    ? null
    : { kind: "dense", mlp: swiglu(f.positiveInt("intermediate_size")) };
  return sparse.map((isMoe) => isMoe ? moe : dense!);
}

/** Qwen's `use_sliding_window`: accepted only when the window covers every position. */
export function refuseShortWindow(f: ConfigFields, positions: number): void {
  if (!f.bool("use_sliding_window", false)) return;
  if (f.has("sliding_window") && f.positiveInt("sliding_window") >= positions) return;
  throw new UnsupportedError(`${f.file}: use_sliding_window is not supported`);
}

/** The parts of a decoder-only description that differ between families. */
export interface DecoderParts {
  vocabSize: number;
  hiddenSize: number;
  maxPositions: number;
  /** Epsilon of the block and final RMSNorms. */
  eps: number;
  attention: AttentionSpec;
  /** The feed-forward block of each layer (its length is the layer count). */
  ffns: FfnSpec[];
}

/**
 * A decoder-only model: per layer an attention block and an ffn block, both pre-RMSNorm, unit
 * multipliers, `tie_word_embeddings`, bos/eos from the config.
 */
export function decoderModel(f: ConfigFields, family: string, p: DecoderParts): ModelSpec {
  const norm = rmsNorm(p.eps);
  const bos = f.tokenIds("bos_token_id", p.vocabSize);
  if (bos.length > 1) throw new InputError('field "bos_token_id" must be a single id', f.file);
  return {
    family,
    vocabSize: p.vocabSize,
    hiddenSize: p.hiddenSize,
    maxPositions: p.maxPositions,
    embedScale: 1,
    encoder: null,
    decoder: {
      layers: p.ffns.map((ffn) => ({
        blocks: [
          { kind: "attention", norm, attention: p.attention },
          { kind: "ffn", norm, ffn },
        ],
        residualScale: 1,
      })),
      finalNorm: norm,
    },
    head: { tied: f.bool("tie_word_embeddings", false), scale: 1, bias: false },
    bosTokenId: bos.length ? bos[0] : null,
    eosTokenIds: f.tokenIds("eos_token_id", p.vocabSize),
    decoderStartTokenId: null,
  };
}
