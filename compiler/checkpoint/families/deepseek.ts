/**
 * DeepSeek-V2 (`model_type: "deepseek_v2"`) and DeepSeek-V3 (`"deepseek_v3"`, also Moonlight;
 * Kimi K2's `"kimi_k2"` is the same layout): multi-head latent attention (deepseek_moe.ts mlaAttention), the first
 * `first_k_dense_replace` layers dense, the rest MoE with `n_shared_experts` ungated shared
 * experts; hub (`mlp.experts.E.*_proj`) or transformers-v5 packed experts.
 * - V2: softmax scores, `topk_method` greedy or group_limited_greedy (group score = its max),
 *   weights = top-k probabilities × `routed_scaling_factor` (norm_topk_prob is ignored, as
 *   transformers does); RoPE on consecutive pairs (complex multiply).
 * - V3: sigmoid scores + `e_score_correction_bias` for the choice, groups by the sum of their top
 *   two, weights the unbiased scores renormalised when `norm_topk_prob`, × the scaling factor;
 *   RoPE interleaved (`rope_interleave`, default true) or half-split.
 *
 * @module
 */

import type { FfnSpec } from "../../../schemas/model.ts";
import type { ConfigFields } from "../fields.ts";
import { MAX_COUNT } from "../fields.ts";
import { decoderModel, swiglu } from "./decoder.ts";
import {
  type ExpertGroups,
  expertGroups,
  groupedMoe,
  MLA_NAMES,
  mlaAttention,
  SHARED_EXPERTS_NAMES,
} from "./deepseek_moe.ts";
import type { FamilyAdapter } from "./family.ts";
import { hubNames, MLP_EXPERTS } from "./hub_names.ts";

function describe(f: ConfigFields, family: "deepseek_v2" | "deepseek_v3" | "kimi_k2") {
  const v3 = family !== "deepseek_v2";
  const act = f.raw.hidden_act ?? "silu";
  if (act !== "silu") f.fail("hidden_act", `${JSON.stringify(act)} is not supported`);
  const vocabSize = f.positiveInt("vocab_size");
  const hiddenSize = f.positiveInt("hidden_size");
  const numLayers = f.positiveInt("num_hidden_layers", undefined, MAX_COUNT);
  const key = f.has("n_routed_experts") || !f.has(v3 ? "num_local_experts" : "num_experts")
    ? "n_routed_experts"
    : v3
    ? "num_local_experts"
    : "num_experts";
  const numExperts = f.positiveInt(key, v3 ? 256 : 64, MAX_COUNT);
  let groups: ExpertGroups = null;
  if (v3) groups = expertGroups(f, numExperts, "top2sum");
  else {
    const method = f.raw.topk_method ?? "greedy";
    if (method === "group_limited_greedy") groups = expertGroups(f, numExperts, "max");
    else if (method !== "greedy") {
      f.fail("topk_method", `${JSON.stringify(method)} is not supported`);
    }
  }
  const moe = groupedMoe(f, {
    numExperts,
    topK: f.positiveInt("num_experts_per_tok", v3 ? 8 : 6),
    intermediate: f.positiveInt("moe_intermediate_size", v3 ? 2048 : 1407),
    sharedCount: f.nonNegativeInt("n_shared_experts", v3 ? 1 : 2),
    router: {
      kind: "topk",
      scoring: v3 ? "sigmoid" : "softmax",
      softmaxAfterTopK: false,
      normTopK: v3 ? f.bool("norm_topk_prob", true) : false,
      scale: f.positiveNumber("routed_scaling_factor", v3 ? 2.5 : 1),
      bias: false,
      selectionBias: v3,
      groups,
    },
  });
  const dense: FfnSpec = { kind: "dense", mlp: swiglu(f.positiveInt("intermediate_size")) };
  const firstMoe = f.nonNegativeInt("first_k_dense_replace", v3 ? 3 : 0);
  const pairing = !v3 || f.bool("rope_interleave", true) ? "interleaved" : "half";
  return decoderModel(f, family, {
    vocabSize,
    hiddenSize,
    maxPositions: f.positiveInt("max_position_embeddings", v3 ? 4096 : 2048),
    eps: f.positiveNumber("rms_norm_eps", 1e-6),
    attention: mlaAttention(f, pairing),
    ffns: Array.from({ length: numLayers }, (_, l) => l >= firstMoe ? moe : dense),
  });
}

const names = hubNames(MLP_EXPERTS, { ...SHARED_EXPERTS_NAMES, ...MLA_NAMES });

/** The DeepSeek-V2 adapter. */
export const deepseekV2: FamilyAdapter = {
  modelType: "deepseek_v2",
  describe: (f) => describe(f, "deepseek_v2"),
  ...names,
};

/** The DeepSeek-V3 adapter (Moonlight-16B-A3B ships as deepseek_v3). */
export const deepseekV3: FamilyAdapter = {
  modelType: "deepseek_v3",
  describe: (f) => describe(f, "deepseek_v3"),
  ...names,
};

/** Kimi K2 (`model_type: "kimi_k2"`, DeepseekV3ForCausalLM): the DeepSeek-V3 layout. */
export const kimiK2: FamilyAdapter = {
  modelType: "kimi_k2",
  describe: (f) => describe(f, "kimi_k2"),
  ...names,
};
