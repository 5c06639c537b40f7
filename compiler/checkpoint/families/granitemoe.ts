/**
 * Granite MoE (`model_type: "granitemoe"`): a Mixtral-like decoder with four multipliers —
 * `embedding_multiplier` (embeddings), `attention_multiplier` (the q·k scale, instead of
 * 1/√head_dim), `residual_multiplier` (every block's output before the residual add) and
 * `logits_scaling` (the final hidden state is divided by it) — and fused experts:
 * `block_sparse_moe.input_linear.weight` [E, 2I, H] (gate rows first, then up),
 * `block_sparse_moe.output_linear.weight` [E, H, I], router `block_sparse_moe.router.layer`.
 *
 * The router takes the top-k logits and a softmax over those k; that equals a softmax over all
 * experts renormalised over the top k (same choice, same weights), which is how it is described.
 * `attention_bias` gives q/k/v and o biases.
 *
 * @module
 */

import type { ModelSpec } from "../../../schemas/model.ts";
import { decoderModel, decoderSizes, gqaAttention, rope, softmaxMoe } from "./decoder.ts";
import type { FamilyAdapter } from "./family.ts";
import { hubNames, MLP_EXPERTS } from "./hub_names.ts";

const hub = hubNames(MLP_EXPERTS);
const MOE = "block_sparse_moe.";

/** The Granite MoE adapter. */
export const granitemoe: FamilyAdapter = {
  modelType: "granitemoe",
  describe(f) {
    const size = decoderSizes(f);
    const moe = softmaxMoe(f, {
      expertsKey: "num_local_experts",
      expertsAlias: "num_experts",
      intermediate: f.positiveInt("intermediate_size"),
      normTopK: true,
      shared: null,
    });
    const position = rope(f, 10000, size.headDim);
    const maxPositions = f.positiveInt("max_position_embeddings", 2048);
    const eps = f.positiveNumber("rms_norm_eps", 1e-6);
    const bias = f.bool("attention_bias", false);
    const attention = {
      ...gqaAttention({ ...size, qkvBias: bias, qkNorm: "none", eps, clipQkv: null, position }),
      outBias: bias,
      scale: f.positiveNumber("attention_multiplier", 1),
    };
    const spec: ModelSpec = decoderModel(f, "granitemoe", {
      ...size,
      maxPositions,
      eps,
      attention,
      ffns: Array.from({ length: size.numLayers }, () => moe),
    });
    spec.embedScale = f.positiveNumber("embedding_multiplier", 1);
    const residual = f.positiveNumber("residual_multiplier", 1);
    for (const layer of spec.decoder.layers) layer.residualScale = residual;
    spec.head.scale = 1 / f.positiveNumber("logits_scaling", 1);
    return spec;
  },
  expertLayout: () => "packed",
  source(t, spec, layout) {
    const prefix = `model.layers.${t.layer}.${MOE}`;
    const block = t.layer >= 0 ? spec.decoder.layers[t.layer]?.blocks[1] : undefined;
    if (t.stack === "decoder" && block?.kind === "ffn" && block.ffn.kind === "moe") {
      const [E, I, H] = [block.ffn.numExperts, block.ffn.expert.intermediate, spec.hiddenSize];
      switch (t.role) {
        case "router":
          return { name: `${prefix}router.layer.weight` };
        case "expert_gate":
        case "expert_up":
          return {
            name: `${prefix}input_linear.weight`,
            packed: {
              shape: [E, 2 * I, H],
              block: t.expert,
              rowStart: t.role === "expert_up" ? I : 0,
            },
          };
        case "expert_down":
          return {
            name: `${prefix}output_linear.weight`,
            packed: { shape: [E, H, I], block: t.expert, rowStart: 0 },
          };
      }
    }
    return hub.source(t, spec, layout);
  },
  unused: hub.unused,
};
