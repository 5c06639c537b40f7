/**
 * Qwen2-MoE (`model_type: "qwen2_moe"`): GQA with q/k/v biases (`qkv_bias`, default true), RoPE,
 * softmax top-k router (`norm_topk_prob`, default false), a SwiGLU shared expert scaled by
 * sigmoid(`shared_expert_gate` · x), dense layers by Qwen's sparse-step rule. Sliding-window
 * attention shorter than the context is refused.
 *
 * @module
 */

import {
  decoderModel,
  decoderSizes,
  gqaAttention,
  qwenFfns,
  refuseShortWindow,
  rope,
  swiglu,
} from "./decoder.ts";
import type { FamilyAdapter } from "./family.ts";
import { hubNames, MLP_EXPERTS } from "./hub_names.ts";

/** The Qwen2-MoE adapter. */
export const qwen2Moe: FamilyAdapter = {
  modelType: "qwen2_moe",
  describe(f) {
    const size = decoderSizes(f);
    const ffns = qwenFfns(f, size.numLayers, {
      mlp: swiglu(f.positiveInt("shared_expert_intermediate_size")),
      gated: true,
    });
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
      ffns,
    });
  },
  ...hubNames(MLP_EXPERTS),
};
