/**
 * Qwen3-MoE (`model_type: "qwen3_moe"`): GQA with per-head q/k RMSNorm and `head_dim` that may
 * differ from hidden / heads, RoPE, softmax top-k router (`norm_topk_prob`, default false), no
 * shared expert, dense layers by Qwen's sparse-step rule. `attention_bias` is refused.
 *
 * @module
 */

import { UnsupportedError } from "../../../schemas/errors.ts";
import {
  decoderModel,
  decoderSizes,
  gqaAttention,
  qwenFfns,
  refuseShortWindow,
  rope,
} from "./decoder.ts";
import type { FamilyAdapter } from "./family.ts";
import { hubNames, MLP_EXPERTS } from "./hub_names.ts";

/** The Qwen3-MoE adapter. */
export const qwen3Moe: FamilyAdapter = {
  modelType: "qwen3_moe",
  describe(f) {
    const size = decoderSizes(f);
    const ffns = qwenFfns(f, size.numLayers, null);
    const position = rope(f, 10000, size.headDim);
    const maxPositions = f.positiveInt("max_position_embeddings", 32768);
    const eps = f.positiveNumber("rms_norm_eps", 1e-6);
    refuseShortWindow(f, maxPositions);
    if (f.bool("attention_bias", false)) {
      throw new UnsupportedError(`${f.file}: attention_bias is not supported for qwen3_moe`);
    }
    return decoderModel(f, "qwen3_moe", {
      ...size,
      maxPositions,
      eps,
      attention: gqaAttention({
        ...size,
        qkvBias: false,
        qkNorm: "head",
        eps,
        clipQkv: null,
        position,
      }),
      ffns,
    });
  },
  ...hubNames(MLP_EXPERTS),
};
