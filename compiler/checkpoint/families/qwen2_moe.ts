/**
 * Qwen2-MoE (`model_type: "qwen2_moe"`): GQA with q/k/v biases (`qkv_bias`, default true), RoPE,
 * softmax top-k router (`norm_topk_prob`, default false), a SwiGLU shared expert scaled by
 * sigmoid(`shared_expert_gate` · x), dense layers by Qwen's sparse-step rule. Sliding-window
 * attention shorter than the context is refused.
 *
 * @module
 */

import type { FfnSpec } from "../../../schemas/model.ts";
import {
  decoderModel,
  decoderSizes,
  gqaAttention,
  qwenSparseLayers,
  refuseShortWindow,
  rope,
  softmaxMoe,
  swiglu,
} from "./decoder.ts";
import type { FamilyAdapter } from "./family.ts";
import { hubNames, MLP_EXPERTS } from "./hub_names.ts";

/** The Qwen2-MoE adapter. */
export const qwen2Moe: FamilyAdapter = {
  modelType: "qwen2_moe",
  describe(f) {
    const size = decoderSizes(f);
    const moe = softmaxMoe(f, {
      expertsKey: "num_experts",
      expertsAlias: "num_local_experts",
      intermediate: f.positiveInt("moe_intermediate_size"),
      normTopK: f.bool("norm_topk_prob", false),
      shared: { mlp: swiglu(f.positiveInt("shared_expert_intermediate_size")), gated: true },
    });
    const sparse = qwenSparseLayers(f, size.numLayers);
    const dense: FfnSpec | null = sparse.every(Boolean)
      ? null
      : { kind: "dense", mlp: swiglu(f.positiveInt("intermediate_size")) };
    const position = rope(f, 10000, size.headDim);
    const maxPositions = f.positiveInt("max_position_embeddings", 32768);
    const eps = f.positiveNumber("rms_norm_eps", 1e-6);
    refuseShortWindow(f, maxPositions);
    const qkvBias = f.bool("qkv_bias", true);
    return decoderModel(f, "qwen2_moe", {
      ...size,
      maxPositions,
      eps,
      attention: gqaAttention({ ...size, qkvBias, qkNorm: "none", eps, clipQkv: null, position }),
      ffns: sparse.map((isMoe) => isMoe ? moe : dense!),
    });
  },
  ...hubNames(MLP_EXPERTS),
};
