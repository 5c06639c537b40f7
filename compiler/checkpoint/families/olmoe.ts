/**
 * OLMoE (`model_type: "olmoe"`): attention with RMSNorm over the full q and k projections, then
 * (when `clip_qkv` is set) q, k and v clamped to ±clip_qkv, then RoPE; softmax top-k router
 * (`norm_topk_prob`, default false); every layer MoE. `attention_bias` is refused.
 *
 * @module
 */

import { UnsupportedError } from "../../../schemas/errors.ts";
import { decoderModel, decoderSizes, gqaAttention, rope, softmaxMoe } from "./decoder.ts";
import type { FamilyAdapter } from "./family.ts";
import { hubNames, MLP_EXPERTS } from "./hub_names.ts";

/** The OLMoE adapter. */
export const olmoe: FamilyAdapter = {
  modelType: "olmoe",
  describe(f) {
    const size = decoderSizes(f);
    const moe = softmaxMoe(f, {
      expertsKey: "num_experts",
      expertsAlias: "num_local_experts",
      intermediate: f.positiveInt("intermediate_size"),
      normTopK: f.bool("norm_topk_prob", false),
      shared: null,
    });
    const position = rope(f, 10000, size.headDim);
    const maxPositions = f.positiveInt("max_position_embeddings", 4096);
    const eps = f.positiveNumber("rms_norm_eps", 1e-5);
    const clipQkv = f.has("clip_qkv") ? f.positiveNumber("clip_qkv") : null;
    if (f.bool("attention_bias", false)) {
      throw new UnsupportedError(`${f.file}: attention_bias is not supported for olmoe`);
    }
    return decoderModel(f, "olmoe", {
      ...size,
      maxPositions,
      eps,
      attention: gqaAttention({ ...size, qkvBias: false, qkNorm: "full", eps, clipQkv, position }),
      ffns: Array.from({ length: size.numLayers }, () => moe),
    });
  },
  ...hubNames(MLP_EXPERTS),
};
