/**
 * GLM-4.5 MoE (`model_type: "glm4_moe"`): GQA with q/k/v biases (`attention_bias`), per-head q/k
 * RMSNorm (`use_qk_norm`), RoPE over the first `partial_rotary_factor` (default 0.5) of each head,
 * half-split; the first `first_k_dense_replace` layers dense; the rest MoE with sigmoid scores,
 * a selection-only `e_score_correction_bias`, DeepSeek-V3 groups (`n_group` / `topk_group`, group
 * score the sum of its top two), `norm_topk_prob`, × `routed_scaling_factor`, and ungated shared
 * experts. The MTP layers (`num_nextn_predict_layers`) are not part of the transformers model.
 *
 * @module
 */

import type { FfnSpec } from "../../../schemas/model.ts";
import { MAX_COUNT } from "../fields.ts";
import { decoderModel, decoderSizes, gqaAttention, rope, swiglu } from "./decoder.ts";
import { expertGroups, groupedMoe, SHARED_EXPERTS_NAMES } from "./deepseek_moe.ts";
import type { FamilyAdapter } from "./family.ts";
import { hubNames, MLP_EXPERTS } from "./hub_names.ts";

/** The GLM-4.5 MoE adapter. */
export const glm4Moe: FamilyAdapter = {
  modelType: "glm4_moe",
  describe(f) {
    const size = decoderSizes(f);
    const key = f.has("n_routed_experts") || !f.has("num_local_experts")
      ? "n_routed_experts"
      : "num_local_experts";
    const numExperts = f.positiveInt(key, 128, MAX_COUNT);
    const moe = groupedMoe(f, {
      numExperts,
      topK: f.positiveInt("num_experts_per_tok", 8),
      intermediate: f.positiveInt("moe_intermediate_size", 1408),
      sharedCount: f.nonNegativeInt("n_shared_experts", 1),
      router: {
        kind: "topk",
        scoring: "sigmoid",
        softmaxAfterTopK: false,
        normTopK: f.bool("norm_topk_prob", true),
        scale: f.positiveNumber("routed_scaling_factor", 1),
        bias: false,
        selectionBias: true,
        groups: expertGroups(f, numExperts, "top2sum"),
      },
    });
    const dense: FfnSpec = { kind: "dense", mlp: swiglu(f.positiveInt("intermediate_size")) };
    const firstMoe = f.nonNegativeInt("first_k_dense_replace", 1);
    const params = f.object("rope_parameters");
    const factor = params?.has("partial_rotary_factor")
      ? params.positiveNumber("partial_rotary_factor")
      : f.positiveNumber("partial_rotary_factor", 0.5);
    const rotaryDim = Math.floor(size.headDim * factor);
    if (factor > 1 || rotaryDim % 2 !== 0 || rotaryDim === 0) {
      f.fail("partial_rotary_factor", `(${factor}) must give an even rotary width ≤ head_dim`);
    }
    const position = rope(f, 10000, rotaryDim);
    const eps = f.positiveNumber("rms_norm_eps", 1e-5);
    return decoderModel(f, "glm4_moe", {
      ...size,
      maxPositions: f.positiveInt("max_position_embeddings", 131072),
      eps,
      attention: gqaAttention({
        ...size,
        qkvBias: f.bool("attention_bias", false),
        qkNorm: f.bool("use_qk_norm", false) ? "head" : "none",
        eps,
        clipQkv: null,
        position,
      }),
      ffns: Array.from({ length: size.numLayers }, (_, l) => l >= firstMoe ? moe : dense),
    });
  },
  ...hubNames(MLP_EXPERTS, SHARED_EXPERTS_NAMES),
};
