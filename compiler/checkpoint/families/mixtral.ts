/**
 * Mixtral (`model_type: "mixtral"`): GQA + RoPE (θ 1e6), softmax top-k router always
 * renormalised, SwiGLU experts `block_sparse_moe.experts.E.w1/w3/w2` (gate/up/down), every layer
 * MoE. A sliding window shorter than the context is refused.
 *
 * @module
 */

import { UnsupportedError } from "../../../schemas/errors.ts";
import { decoderModel, decoderSizes, gqaAttention, rope, softmaxMoe } from "./decoder.ts";
import type { FamilyAdapter } from "./family.ts";
import { hubNames } from "./hub_names.ts";

/** The Mixtral adapter. */
export const mixtral: FamilyAdapter = {
  modelType: "mixtral",
  describe(f) {
    const size = decoderSizes(f);
    const moe = softmaxMoe(f, {
      expertsKey: "num_local_experts",
      expertsAlias: "num_experts",
      intermediate: f.positiveInt("intermediate_size"),
      normTopK: true,
      shared: null,
    });
    const position = rope(f, 1e6, size.headDim);
    const maxPositions = f.positiveInt("max_position_embeddings", 4096 * 32);
    const eps = f.positiveNumber("rms_norm_eps", 1e-5);
    if (f.has("sliding_window")) {
      const window = f.positiveInt("sliding_window");
      if (window < maxPositions) {
        throw new UnsupportedError(`${f.file}: sliding_window ${window} is not supported`);
      }
    }
    return decoderModel(f, "mixtral", {
      ...size,
      maxPositions,
      eps,
      attention: gqaAttention({
        ...size,
        qkvBias: false,
        qkNorm: "none",
        eps,
        clipQkv: null,
        position,
      }),
      ffns: Array.from({ length: size.numLayers }, () => moe),
    });
  },
  ...hubNames({
    router: "block_sparse_moe.gate",
    experts: "block_sparse_moe.experts",
    matrices: { gate: "w1", up: "w3", down: "w2" },
  }),
};
