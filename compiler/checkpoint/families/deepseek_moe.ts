/**
 * What the DeepSeek-style MoE families share (deepseek_v2, deepseek_v3, glm4_moe, ernie4_5_moe):
 * fine-grained routed experts beside always-on shared experts (`mlp.shared_experts.*`, width
 * moe_intermediate_size × the shared count), routers with a selection-only correction bias and
 * expert groups, and the first `first_k_dense_replace` layers dense.
 *
 * @module
 */

import { InputError, UnsupportedError } from "../../../schemas/errors.ts";
import type { MlaAttentionSpec, MoeFfnSpec, RopeSpec, RouterSpec } from "../../../schemas/model.ts";
import { type ConfigFields, MAX_COUNT } from "../fields.ts";
import { rmsNorm, rope, swiglu } from "./decoder.ts";

/** Per-layer tensor names of the shared experts (and the correction bias) in the hub layout. */
export const SHARED_EXPERTS_NAMES: Record<string, string> = {
  shared_gate: "mlp.shared_experts.gate_proj.weight",
  shared_up: "mlp.shared_experts.up_proj.weight",
  shared_down: "mlp.shared_experts.down_proj.weight",
  router_selection_bias: "mlp.gate.e_score_correction_bias",
};

/** Options of {@link groupedMoe}: the config keys and router of one family. */
export interface GroupedMoeOptions {
  numExperts: number;
  topK: number;
  intermediate: number;
  /** Shared experts fused into one MLP (0: none). */
  sharedCount: number;
  router: Extract<RouterSpec, { kind: "topk" }>;
}

/** A MoE block with SwiGLU experts and an ungated shared MLP of `sharedCount` experts' width. */
export function groupedMoe(f: ConfigFields, o: GroupedMoeOptions): MoeFfnSpec {
  if (o.topK > o.numExperts) {
    throw new InputError(
      `top-k (${o.topK}) exceeds the number of experts (${o.numExperts})`,
      f.file,
    );
  }
  return {
    kind: "moe",
    numExperts: o.numExperts,
    topK: o.topK,
    router: o.router,
    expert: swiglu(o.intermediate),
    shared: o.sharedCount > 0
      ? { mlp: swiglu(o.intermediate * o.sharedCount), gated: false }
      : null,
  };
}

/** A top-k router's expert groups (null: none). */
export type ExpertGroups = Extract<RouterSpec, { kind: "topk" }>["groups"];

/**
 * DeepSeek's expert groups from `n_group` / `topk_group` (null when the kept groups hold every
 * expert: the restriction is then a no-op). The group count must divide the experts.
 */
export function expertGroups(
  f: ConfigFields,
  numExperts: number,
  score: "max" | "top2sum",
): ExpertGroups {
  // transformers writes null for "no groups" (DeepSeek-V2 greedy).
  const count = f.raw.n_group === null ? 1 : f.positiveInt("n_group", 1, MAX_COUNT);
  const keep = f.raw.topk_group === null ? count : f.positiveInt("topk_group", 1, MAX_COUNT);
  if (numExperts % count !== 0) f.fail("n_group", `(${count}) must divide ${numExperts} experts`);
  if (keep > count) f.fail("topk_group", `(${keep}) exceeds n_group (${count})`);
  if (score === "top2sum" && numExperts / count < 2) {
    f.fail("n_group", `leaves fewer than 2 experts per group`);
  }
  return count === 1 || keep === count ? null : { count, keep, score };
}

/** Per-layer tensor names of multi-head latent attention in the hub layout. */
export const MLA_NAMES: Record<string, string> = {
  attn_q_a: "self_attn.q_a_proj.weight",
  attn_q_a_norm: "self_attn.q_a_layernorm.weight",
  attn_q_b: "self_attn.q_b_proj.weight",
  attn_kv_a: "self_attn.kv_a_proj_with_mqa.weight",
  attn_kv_a_norm: "self_attn.kv_a_layernorm.weight",
  attn_kv_b: "self_attn.kv_b_proj.weight",
};

/** YaRN's magnitude correction 0.1 · m · ln(factor) + 1 (1 for factor ≤ 1). */
function yarnMscale(factor: number, m = 1): number {
  return factor <= 1 ? 1 : 0.1 * m * Math.log(factor) + 1;
}

/**
 * DeepSeek's RoPE over `rotaryDim` dims: unscaled, or YaRN (`rope_parameters` / `rope_scaling`
 * with type "yarn": factor, original_max_position_embeddings, beta_fast 32, beta_slow 1,
 * truncate true; the cos/sin factor mscale(factor, mscale) / mscale(factor, mscale_all_dim), or
 * mscale(factor) without both, unless attention_factor is given). Also returns the softmax-scale
 * multiplier mscale(factor, mscale_all_dim)² that DeepSeek applies when mscale_all_dim is set.
 */
export function deepseekRope(
  f: ConfigFields,
  rotaryDim: number,
  pairing: "half" | "interleaved",
): { position: RopeSpec; scaleFactor: number } {
  const key = f.has("rope_parameters") ? "rope_parameters" : "rope_scaling";
  const p = f.raw[key] && typeof f.raw[key] === "object" ? f.object(key) : null;
  const type = p ? (p.raw.rope_type ?? p.raw.type ?? "default") : "default";
  if (type !== "yarn") {
    return { position: { ...rope(f, 10000, rotaryDim), pairing }, scaleFactor: 1 };
  }
  const q = p!;
  const theta = q.has("rope_theta")
    ? q.positiveNumber("rope_theta")
    : f.positiveNumber("rope_theta", 10000);
  const factor = q.positiveNumber("factor");
  const mscale = q.raw.mscale == null ? 0 : q.positiveNumber("mscale");
  const mscaleAllDim = q.raw.mscale_all_dim == null ? 0 : q.positiveNumber("mscale_all_dim");
  const attentionFactor = q.raw.attention_factor != null
    ? q.positiveNumber("attention_factor")
    : mscale && mscaleAllDim
    ? yarnMscale(factor, mscale) / yarnMscale(factor, mscaleAllDim)
    : yarnMscale(factor);
  return {
    position: {
      kind: "rope",
      theta,
      rotaryDim,
      pairing,
      scaling: {
        kind: "yarn",
        factor,
        originalMaxPositions: q.positiveInt("original_max_position_embeddings"),
        betaFast: q.raw.beta_fast ? q.positiveNumber("beta_fast") : 32,
        betaSlow: q.raw.beta_slow ? q.positiveNumber("beta_slow") : 1,
        attentionFactor,
        truncate: q.bool("truncate", true),
      },
    },
    scaleFactor: mscaleAllDim ? yarnMscale(factor, mscaleAllDim) ** 2 : 1,
  };
}

/**
 * DeepSeek's MLA from config.json: `q_lora_rank` (null: direct queries), `kv_lora_rank`,
 * `qk_nope_head_dim`, `qk_rope_head_dim`, `v_head_dim`; the latent norms are RMSNorms with
 * transformers' default eps 1e-6 (not rms_norm_eps); scale (nope + rope)^−½, times YaRN's
 * mscale² when the RoPE is YaRN with mscale_all_dim ({@link deepseekRope}); RoPE over the rope
 * dims with `pairing`. `attention_bias` is refused.
 */
export function mlaAttention(
  f: ConfigFields,
  pairing: "half" | "interleaved",
): MlaAttentionSpec {
  if (f.bool("attention_bias", false)) {
    throw new UnsupportedError(`${f.file}: attention_bias is not supported for MLA`);
  }
  const qkRopeHeadDim = f.positiveInt("qk_rope_head_dim", 64);
  if (qkRopeHeadDim % 2 !== 0) f.fail("qk_rope_head_dim", `must be even, got ${qkRopeHeadDim}`);
  const qkNopeHeadDim = f.positiveInt("qk_nope_head_dim", 128);
  const { position, scaleFactor } = deepseekRope(f, qkRopeHeadDim, pairing);
  return {
    kind: "mla",
    numHeads: f.positiveInt("num_attention_heads", undefined, MAX_COUNT),
    qLoraRank: f.raw.q_lora_rank == null ? null : f.positiveInt("q_lora_rank"),
    kvLoraRank: f.positiveInt("kv_lora_rank", 512),
    qkNopeHeadDim,
    qkRopeHeadDim,
    vHeadDim: f.positiveInt("v_head_dim", 128),
    latentNorm: rmsNorm(1e-6),
    scale: (qkNopeHeadDim + qkRopeHeadDim) ** -0.5 * scaleFactor,
    position,
  };
}
