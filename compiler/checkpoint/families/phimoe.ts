/**
 * PhiMoE (`model_type: "phimoe"`): a Mixtral-like decoder with LayerNorms (weight and bias,
 * epsilon `rms_norm_eps`) instead of RMSNorms, q/k/v/o biases (`attention_bias`), an lm_head
 * bias (`lm_head_bias`), and the sparsemixer top-2 router (`router_jitter_noise`, inference
 * form); experts `block_sparse_moe.experts.E.w1/w3/w2` (gate/up/down), router
 * `block_sparse_moe.gate`. Only top-2 routing, default RoPE and windows that cover the context
 * are read; `input_jitter_noise` is a training-time noise and is ignored.
 *
 * @module
 */

import { InputError, UnsupportedError } from "../../../schemas/errors.ts";
import type { ModelSpec, NormSpec } from "../../../schemas/model.ts";
import { decoderModel, decoderSizes, gqaAttention, rope, softmaxMoe } from "./decoder.ts";
import type { ConfigFields } from "../fields.ts";
import type { FamilyAdapter } from "./family.ts";
import { hubNames } from "./hub_names.ts";

/** `router_jitter_noise` (≥ 0, default 0.01): the sparsemixer mask threshold is twice it. */
function jitterOf(f: ConfigFields): number {
  return f.raw.router_jitter_noise === 0 ? 0 : f.positiveNumber("router_jitter_noise", 0.01);
}

/** The PhiMoE adapter. */
export const phimoe: FamilyAdapter = {
  modelType: "phimoe",
  describe(f) {
    const size = decoderSizes(f);
    const moe = {
      ...softmaxMoe(f, {
        expertsKey: "num_local_experts",
        expertsAlias: "num_experts",
        intermediate: f.positiveInt("intermediate_size"),
        normTopK: true,
        shared: null,
      }),
      router: {
        kind: "sparsemixer" as const,
        jitter: jitterOf(f),
      },
    };
    if (moe.topK !== 2) {
      throw new UnsupportedError(
        `${f.file}: num_experts_per_tok ${moe.topK} is not supported (sparsemixer routes to 2)`,
      );
    }
    const position = rope(f, 1e6, size.headDim);
    const maxPositions = f.positiveInt("max_position_embeddings", 4096 * 32);
    if (f.has("sliding_window") && f.positiveInt("sliding_window") < maxPositions) {
      throw new UnsupportedError(
        `${f.file}: sliding_window ${f.raw.sliding_window} is not supported`,
      );
    }
    const eps = f.positiveNumber("rms_norm_eps", 1e-5);
    const bias = f.bool("attention_bias", false);
    const spec: ModelSpec = decoderModel(f, "phimoe", {
      ...size,
      maxPositions,
      eps,
      attention: {
        ...gqaAttention({ ...size, qkvBias: bias, qkNorm: "none", eps, clipQkv: null, position }),
        outBias: bias,
      },
      ffns: Array.from({ length: size.numLayers }, () => moe),
    });
    const norm: NormSpec = { kind: "layer", eps, bias: true };
    for (const layer of spec.decoder.layers) for (const b of layer.blocks) b.norm = norm;
    spec.decoder.finalNorm = norm;
    spec.head.bias = f.bool("lm_head_bias", false);
    if (spec.head.bias && spec.head.tied) {
      throw new InputError('field "lm_head_bias" with tied embeddings is not supported', f.file);
    }
    return spec;
  },
  ...hubNames({
    router: "block_sparse_moe.gate",
    experts: "block_sparse_moe.experts",
    matrices: { gate: "w1", up: "w3", down: "w2" },
  }),
};
