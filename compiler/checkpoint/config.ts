/**
 * `config.json` → ModelConfig for every supported family, with transformers' defaults for the
 * optional fields and a one-line InputError naming the field for anything missing or malformed.
 *
 * @module
 */

import { InputError, UnsupportedError } from "../../schemas/errors.ts";
import type { Family, ModelConfig } from "../../schemas/model_legacy.ts";

/** The `model_type` values the adapters understand. */
export const SUPPORTED_MODEL_TYPES: readonly Family[] = [
  "mixtral",
  "qwen2_moe",
  "qwen3_moe",
  "olmoe",
];

/** Upper bound for any size field (2^24: far above real models, small enough for exact math). */
const MAX_DIMENSION = 1 << 24;
/** Upper bound for layer and expert counts. */
const MAX_COUNT = 1 << 16;

/** Typed access to config.json fields; every failure names the file and field. */
class Fields {
  constructor(readonly raw: Record<string, unknown>, readonly file: string) {}

  private fail(key: string, what: string): never {
    throw new InputError(`field "${key}" ${what}`, this.file);
  }

  /** True when the key is present and not null. */
  has(key: string): boolean {
    return this.raw[key] !== undefined && this.raw[key] !== null;
  }

  /** A positive integer no larger than `max` (a sanity bound that keeps later arithmetic exact). */
  positiveInt(key: string, fallback?: number, max = MAX_DIMENSION): number {
    if (!this.has(key)) {
      if (fallback !== undefined) return fallback;
      this.fail(key, "missing");
    }
    const v = this.raw[key];
    if (typeof v !== "number" || !Number.isSafeInteger(v) || v <= 0) {
      this.fail(key, `must be a positive integer, got ${JSON.stringify(v)}`);
    }
    if (v > max) this.fail(key, `is ${v}, above the supported maximum ${max}`);
    return v;
  }

  nonNegativeInt(key: string, fallback: number): number {
    if (!this.has(key)) return fallback;
    const v = this.raw[key];
    if (typeof v !== "number" || !Number.isSafeInteger(v) || v < 0) {
      this.fail(key, `must be a non-negative integer, got ${JSON.stringify(v)}`);
    }
    return v;
  }

  positiveNumber(key: string, fallback: number): number {
    if (!this.has(key)) return fallback;
    const v = this.raw[key];
    if (typeof v !== "number" || !Number.isFinite(v) || v <= 0) {
      this.fail(key, `must be a positive number, got ${JSON.stringify(v)}`);
    }
    return v;
  }

  bool(key: string, fallback: boolean): boolean {
    if (!this.has(key)) return fallback;
    const v = this.raw[key];
    if (typeof v !== "boolean") this.fail(key, `must be true or false, got ${JSON.stringify(v)}`);
    return v;
  }

  intList(key: string): number[] {
    if (!this.has(key)) return [];
    const v = this.raw[key];
    if (!Array.isArray(v) || !v.every((x) => Number.isSafeInteger(x) && x >= 0)) {
      this.fail(key, `must be a list of non-negative integers, got ${JSON.stringify(v)}`);
    }
    return v as number[];
  }

  /** A token id, or a list of them (eos_token_id); null/absent → []. */
  tokenIds(key: string, vocab: number): number[] {
    if (!this.has(key)) return [];
    const v = this.raw[key];
    const ids = Array.isArray(v) ? v : [v];
    for (const id of ids) {
      if (!Number.isSafeInteger(id) || id < 0 || id >= vocab) {
        this.fail(key, `must be a token id below vocab_size ${vocab}, got ${JSON.stringify(v)}`);
      }
    }
    return ids as number[];
  }
}

/** RoPE base from `rope_theta` or transformers-v5 `rope_parameters`; only plain RoPE is supported. */
function ropeTheta(f: Fields, fallback: number): number {
  const params = f.raw.rope_parameters ?? f.raw.rope_scaling;
  if (params !== undefined && params !== null) {
    if (typeof params !== "object" || Array.isArray(params)) {
      throw new InputError('field "rope_parameters" must be an object', f.file);
    }
    const p = params as Record<string, unknown>;
    const type = p.rope_type ?? p.type ?? "default";
    if (type !== "default") {
      throw new UnsupportedError(`${f.file}: RoPE type ${JSON.stringify(type)} is not supported`);
    }
    if (p.rope_theta !== undefined) {
      return new Fields(p, `${f.file} rope_parameters`).positiveNumber("rope_theta", fallback);
    }
  }
  return f.positiveNumber("rope_theta", fallback);
}

/**
 * Which layers are MoE under Qwen's rule: layer i is MoE unless listed in `mlp_only_layers`,
 * and only when (i + 1) is a multiple of `decoder_sparse_step`.
 */
function qwenLayerKinds(f: Fields, numLayers: number): ("moe" | "dense")[] {
  const step = f.positiveInt("decoder_sparse_step", 1);
  const mlpOnly = new Set(f.intList("mlp_only_layers"));
  return Array.from(
    { length: numLayers },
    (_, i) => !mlpOnly.has(i) && (i + 1) % step === 0 ? "moe" : "dense",
  );
}

/**
 * Parses a config.json object into ModelConfig. `file` names the file in error messages.
 * Throws InputError for missing/malformed fields and UnsupportedError for unknown families or
 * features outside the supported set (non-default RoPE, sliding windows, other activations).
 */
export function parseConfig(raw: unknown, file = "config.json"): ModelConfig {
  if (typeof raw !== "object" || raw === null || Array.isArray(raw)) {
    throw new InputError("not a JSON object", file);
  }
  const f = new Fields(raw as Record<string, unknown>, file);
  const modelType = f.raw.model_type;
  if (typeof modelType !== "string") {
    throw new InputError('field "model_type" missing or not a string', file);
  }
  if (!(SUPPORTED_MODEL_TYPES as readonly string[]).includes(modelType)) {
    throw new UnsupportedError(
      `${file}: model_type "${modelType}" is not supported (supported: ${
        SUPPORTED_MODEL_TYPES.join(", ")
      })`,
    );
  }
  const family = modelType as Family;
  const act = f.raw.hidden_act ?? "silu";
  if (act !== "silu") {
    throw new UnsupportedError(`${file}: hidden_act ${JSON.stringify(act)} is not supported`);
  }

  const vocabSize = f.positiveInt("vocab_size");
  const hiddenSize = f.positiveInt("hidden_size");
  const numLayers = f.positiveInt("num_hidden_layers", undefined, MAX_COUNT);
  const numHeads = f.positiveInt("num_attention_heads", undefined, MAX_COUNT);
  const numKvHeads = f.positiveInt("num_key_value_heads", numHeads);
  if (numHeads % numKvHeads !== 0) {
    throw new InputError(
      `field "num_key_value_heads" (${numKvHeads}) must divide num_attention_heads (${numHeads})`,
      file,
    );
  }
  if (!f.has("head_dim") && hiddenSize % numHeads !== 0) {
    throw new InputError(
      `field "head_dim" missing and hidden_size ${hiddenSize} is not divisible by ${numHeads} heads`,
      file,
    );
  }
  const headDim = f.positiveInt("head_dim", hiddenSize / numHeads);
  // Mixtral calls it num_local_experts; the others num_experts (transformers aliases the two).
  const expertsKey = family === "mixtral" || (f.has("num_local_experts") && !f.has("num_experts"))
    ? "num_local_experts"
    : "num_experts";
  const numExperts = f.positiveInt(expertsKey, undefined, MAX_COUNT);
  const topK = f.positiveInt("num_experts_per_tok");
  if (topK > numExperts) {
    throw new InputError(
      `field "num_experts_per_tok" (${topK}) exceeds the number of experts (${numExperts})`,
      file,
    );
  }

  let layerKinds: ("moe" | "dense")[] = Array(numLayers).fill("moe");
  let expertIntermediateSize: number;
  let denseIntermediateSize = 0;
  let sharedIntermediateSize = 0;
  let qkvBias = false;
  let qkNorm: ModelConfig["qkNorm"] = "none";
  let normTopK: boolean;
  let theta: number;
  let maxPositions: number;
  let rmsNormEps: number;

  switch (family) {
    case "mixtral": {
      expertIntermediateSize = f.positiveInt("intermediate_size");
      normTopK = true;
      theta = ropeTheta(f, 1e6);
      maxPositions = f.positiveInt("max_position_embeddings", 4096 * 32);
      rmsNormEps = f.positiveNumber("rms_norm_eps", 1e-5);
      const window = f.raw.sliding_window;
      if (window !== undefined && window !== null) {
        const w = f.positiveInt("sliding_window");
        if (w < maxPositions) {
          throw new UnsupportedError(`${file}: sliding_window ${w} is not supported`);
        }
      }
      break;
    }
    case "qwen2_moe":
    case "qwen3_moe": {
      expertIntermediateSize = f.positiveInt("moe_intermediate_size");
      layerKinds = qwenLayerKinds(f, numLayers);
      if (layerKinds.includes("dense")) denseIntermediateSize = f.positiveInt("intermediate_size");
      normTopK = f.bool("norm_topk_prob", false);
      theta = ropeTheta(f, 10000);
      maxPositions = f.positiveInt("max_position_embeddings", 32768);
      rmsNormEps = f.positiveNumber("rms_norm_eps", 1e-6);
      if (f.bool("use_sliding_window", false)) {
        throw new UnsupportedError(`${file}: use_sliding_window is not supported`);
      }
      if (family === "qwen2_moe") {
        sharedIntermediateSize = f.positiveInt("shared_expert_intermediate_size");
        qkvBias = true;
      } else {
        qkNorm = "head";
        if (f.bool("attention_bias", false)) {
          throw new UnsupportedError(`${file}: attention_bias is not supported for qwen3_moe`);
        }
      }
      break;
    }
    case "olmoe": {
      expertIntermediateSize = f.positiveInt("intermediate_size");
      normTopK = f.bool("norm_topk_prob", false);
      theta = ropeTheta(f, 10000);
      maxPositions = f.positiveInt("max_position_embeddings", 4096);
      rmsNormEps = f.positiveNumber("rms_norm_eps", 1e-5);
      qkNorm = "full";
      if (f.has("clip_qkv")) throw new UnsupportedError(`${file}: clip_qkv is not supported`);
      if (f.bool("attention_bias", false)) {
        throw new UnsupportedError(`${file}: attention_bias is not supported for olmoe`);
      }
      break;
    }
  }

  const bos = f.tokenIds("bos_token_id", vocabSize);
  if (bos.length > 1) throw new InputError('field "bos_token_id" must be a single id', file);
  return {
    family,
    vocabSize,
    hiddenSize,
    numLayers,
    numHeads,
    numKvHeads,
    headDim,
    expertIntermediateSize,
    denseIntermediateSize,
    sharedIntermediateSize,
    sharedExpertGated: sharedIntermediateSize > 0,
    ropeTheta: theta,
    rmsNormEps,
    maxPositions,
    tieWordEmbeddings: f.bool("tie_word_embeddings", false),
    qkvBias,
    qkNorm,
    activation: "silu",
    routing: { scoring: "softmax", numExperts, topK, normTopK },
    layerKinds,
    bosTokenId: bos.length ? bos[0] : null,
    eosTokenIds: f.tokenIds("eos_token_id", vocabSize),
  };
}
