/**
 * ERNIE-4.5 MoE (`model_type: "ernie4_5_moe"`): GQA without biases (`use_bias` true is refused),
 * RoPE with interleaved pairs (2i, 2i + 1) over the whole head; MoE on the layers i with
 * (i + 1) % `moe_layer_interval` = 0 inside [`moe_layer_start_index`, `moe_layer_end_index`]
 * (−1: the last layer), dense elsewhere; softmax router whose choice adds the selection-only
 * `moe_statics.e_score_correction_bias` ([1, E] in the checkpoint) and whose weights are the
 * chosen unbiased probabilities, always renormalised (transformers divides by max(sum,
 * moe_norm_min); the sum of k probabilities is far above the 1e-12 default); ungated shared
 * experts; tied embeddings by default.
 *
 * @module
 */

import { UnsupportedError } from "../../../schemas/errors.ts";
import type { FfnSpec } from "../../../schemas/model.ts";
import { MAX_COUNT } from "../fields.ts";
import { decoderModel, decoderSizes, gqaAttention, rope, swiglu } from "./decoder.ts";
import { groupedMoe, SHARED_EXPERTS_NAMES } from "./deepseek_moe.ts";
import type { FamilyAdapter } from "./family.ts";
import { hubNames, MLP_EXPERTS } from "./hub_names.ts";

const names = hubNames(MLP_EXPERTS, SHARED_EXPERTS_NAMES);

/** The ERNIE-4.5 MoE adapter. */
export const ernie45Moe: FamilyAdapter = {
  modelType: "ernie4_5_moe",
  describe(f) {
    const size = decoderSizes(f);
    if (f.bool("use_bias", false)) {
      throw new UnsupportedError(`${f.file}: use_bias is not supported for ernie4_5_moe`);
    }
    const expertsKey = f.has("moe_num_experts") || !f.has("num_experts")
      ? "moe_num_experts"
      : "num_experts";
    const topKKey = f.has("moe_k") || !f.has("num_experts_per_tok")
      ? "moe_k"
      : "num_experts_per_tok";
    const moe = groupedMoe(f, {
      numExperts: f.positiveInt(expertsKey, 64, MAX_COUNT),
      topK: f.positiveInt(topKKey, 6),
      intermediate: f.positiveInt("moe_intermediate_size", 1536),
      sharedCount: f.nonNegativeInt("moe_num_shared_experts", 2),
      router: {
        kind: "topk",
        scoring: "softmax",
        softmaxAfterTopK: false,
        normTopK: true,
        scale: 1,
        bias: false,
        selectionBias: true,
        groups: null,
      },
    });
    const dense: FfnSpec = { kind: "dense", mlp: swiglu(f.positiveInt("intermediate_size")) };
    const start = f.nonNegativeInt("moe_layer_start_index", 1);
    const endRaw = f.raw.moe_layer_end_index ?? -1;
    const end = endRaw === -1 ? size.numLayers - 1 : f.nonNegativeInt("moe_layer_end_index", -1);
    const interval = f.positiveInt("moe_layer_interval", 1);
    const isMoe = (l: number) => (l + 1) % interval === 0 && l >= start && l <= end;
    const position = { ...rope(f, 10000, size.headDim), pairing: "interleaved" as const };
    const eps = f.positiveNumber("rms_norm_eps", 1e-5);
    const spec = decoderModel(f, "ernie4_5_moe", {
      ...size,
      maxPositions: f.positiveInt("max_position_embeddings", 131072),
      eps,
      attention: gqaAttention({
        ...size,
        qkvBias: false,
        qkNorm: "none",
        eps,
        clipQkv: null,
        position,
      }),
      ffns: Array.from({ length: size.numLayers }, (_, l) => isMoe(l) ? moe : dense),
    });
    spec.head.tied = f.bool("tie_word_embeddings", true);
    return spec;
  },
  ...names,
  source(t, spec, layout) {
    if (t.role === "router_selection_bias") {
      return {
        name: `model.layers.${t.layer}.mlp.moe_statics.e_score_correction_bias`,
        stored: [1, ...t.shape],
      };
    }
    return names.source(t, spec, layout);
  },
};
