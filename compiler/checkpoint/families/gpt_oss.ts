/**
 * gpt-oss (`model_type: "gpt_oss"`): GQA with q/k/v/o biases, one learned sink logit per head,
 * a sliding window on the layers `layer_types` marks "sliding_attention" (default: every even
 * layer), YaRN RoPE (`rope_parameters`), RMSNorms; every layer MoE with a biased router (the
 * top-k logits, softmax over those k) and biased experts with the clamped SwiGLU
 * ((up + 1)·gate·σ(1.702·gate), gate ≤ 7, up ∈ [−7, 7]: transformers' constants; `swiglu_limit`
 * is not read by transformers either).
 *
 * Experts are stored as x·W: `mlp.experts.gate_up_proj` [E, H, 2I] with gate (even) and up (odd)
 * columns interleaved, `gate_up_proj_bias` [E, 2I] likewise, `down_proj` [E, I, H] and
 * `down_proj_bias` [E, H]; each expert matrix is a transposed column slice (family.ts `columns`).
 * Router `mlp.router.{weight,bias}`, sinks `self_attn.sinks`.
 *
 * Release checkpoints keep the expert matrices in MXFP4 as `<name>_blocks` / `<name>_scales`
 * ([E, rows, cols/32, 16] U8 codes and [E, rows, cols/32] U8 exponents, rows = output features);
 * this adapter reads the float layout (transformers' save_pretrained after dequantization) and
 * names the MXFP4 tensors in its refusal until the MXFP4 reader maps them.
 *
 * @module
 */

import { InputError, UnsupportedError } from "../../../schemas/errors.ts";
import { MXFP4_QUANT_METHOD } from "../mxfp4.ts";
import type { ModelSpec, MoeFfnSpec, RopeSpec } from "../../../schemas/model.ts";
import type { ConfigFields } from "../fields.ts";
import { decoderModel, decoderSizes, gqaAttention } from "./decoder.ts";
import type { FamilyAdapter, TensorSource } from "./family.ts";
import { hubNames, MLP_EXPERTS } from "./hub_names.ts";

const hub = hubNames(MLP_EXPERTS);
const EXPERTS = "mlp.experts.";
/** transformers' GptOssExperts constants. */
const SWIGLU_LIMIT = 7;
const SWIGLU_ALPHA = 1.702;

/** YaRN RoPE from `rope_parameters` (gpt-oss defaults when absent), or the default type. */
function gptOssRope(f: ConfigFields, rotaryDim: number): RopeSpec {
  const p = f.object("rope_parameters") ?? f.object("rope_scaling");
  const theta = p?.has("rope_theta")
    ? p.positiveNumber("rope_theta")
    : f.positiveNumber("rope_theta", 150000);
  const rope: RopeSpec = {
    kind: "rope",
    theta,
    rotaryDim,
    pairing: "half",
    scaling: { kind: "none" },
  };
  const type = p ? (p.raw.rope_type ?? p.raw.type ?? "default") : "yarn";
  if (type === "default") return rope;
  if (type !== "yarn") {
    throw new UnsupportedError(`${f.file}: RoPE type ${JSON.stringify(type)} is not supported`);
  }
  const get = (key: string, fallback: number) => p ? p.positiveNumber(key, fallback) : fallback;
  const factor = get("factor", 32);
  if (p?.has("mscale") || p?.has("mscale_all_dim")) {
    throw new UnsupportedError(`${f.file}: YaRN mscale is not supported for gpt_oss`);
  }
  const truncate = p ? p.bool("truncate", true) : false;
  return {
    ...rope,
    scaling: {
      kind: "yarn",
      factor,
      originalMaxPositions: p ? p.positiveInt("original_max_position_embeddings", 4096) : 4096,
      betaFast: get("beta_fast", 32),
      betaSlow: get("beta_slow", 1),
      attentionFactor: p?.has("attention_factor")
        ? p.positiveNumber("attention_factor")
        : factor <= 1
        ? 1
        : 0.1 * Math.log(factor) + 1,
      truncate,
    },
  };
}

/** The window of each layer from `layer_types` (default: sliding on even layers). */
function windows(f: ConfigFields, numLayers: number): (number | null)[] {
  const types = f.has("layer_types")
    ? f.raw.layer_types
    : Array.from({ length: numLayers }, (_, i) => i % 2 === 0 ? "sliding_attention" : "full");
  if (!Array.isArray(types) || types.length !== numLayers) {
    f.fail("layer_types", `must list ${numLayers} layer types`);
  }
  return types.map((t, i) => {
    if (t === "full_attention" || t === "full") return null;
    if (t !== "sliding_attention") {
      f.fail("layer_types", `entry ${i} ${JSON.stringify(t)} is not a known layer type`);
    }
    return f.positiveInt("sliding_window", 128);
  });
}

/** The gpt-oss adapter. */
export const gptOss: FamilyAdapter = {
  modelType: "gpt_oss",
  describe(f) {
    const size = decoderSizes(f);
    const numExperts = f.positiveInt("num_local_experts", 128);
    const topK = f.positiveInt("num_experts_per_tok", 4);
    if (topK > numExperts) {
      throw new InputError(
        `field "num_experts_per_tok" (${topK}) exceeds the number of experts (${numExperts})`,
        f.file,
      );
    }
    const quant = f.object("quantization_config");
    // MXFP4 releases are read (checkpoint/mxfp4.ts); other methods are not.
    if (quant && quant.raw.quant_method !== MXFP4_QUANT_METHOD) {
      throw new UnsupportedError(
        `${f.file}: quantization_config (quant_method ${
          JSON.stringify(quant.raw.quant_method)
        }) is not read yet`,
      );
    }
    const moe: MoeFfnSpec = {
      kind: "moe",
      numExperts,
      topK,
      router: {
        kind: "topk",
        scoring: "softmax",
        softmaxAfterTopK: true,
        normTopK: false,
        scale: 1,
        bias: true,
        selectionBias: false,
        groups: null,
      },
      expert: {
        intermediate: f.positiveInt("intermediate_size"),
        activation: { kind: "swiglu_clamped", limit: SWIGLU_LIMIT, alpha: SWIGLU_ALPHA },
        bias: true,
      },
      shared: null,
    };
    const eps = f.positiveNumber("rms_norm_eps", 1e-5);
    const bias = f.bool("attention_bias", true);
    const base = {
      ...gqaAttention({
        ...size,
        qkvBias: bias,
        qkNorm: "none",
        eps,
        clipQkv: null,
        position: gptOssRope(f, size.headDim),
      }),
      outBias: bias,
      sinks: true,
    };
    const spec: ModelSpec = decoderModel(f, "gpt_oss", {
      ...size,
      maxPositions: f.positiveInt("max_position_embeddings", 131072),
      eps,
      attention: base,
      ffns: Array.from({ length: size.numLayers }, () => moe),
    });
    windows(f, size.numLayers).forEach((slidingWindow, l) => {
      const layer = spec.decoder.layers[l];
      layer.blocks[0] = {
        kind: "attention",
        norm: layer.blocks[0].norm,
        attention: { ...base, slidingWindow },
      };
    });
    return spec;
  },
  expertLayout(has, _stack, layer) {
    // The release layout (checkpoint/mxfp4.ts): `<matrix>_blocks` / `<matrix>_scales` pairs.
    return has(`model.layers.${layer}.${EXPERTS}gate_up_proj_blocks`) ? "packed-mxfp4" : "packed";
  },
  source(t, spec, layout): TensorSource {
    const prefix = `model.layers.${t.layer}.`;
    const block = t.layer >= 0 ? spec.decoder.layers[t.layer]?.blocks[1] : undefined;
    if (t.stack === "decoder" && block?.kind === "ffn" && block.ffn.kind === "moe") {
      const [E, I, H] = [block.ffn.numExperts, block.ffn.expert.intermediate, spec.hiddenSize];
      const at = (name: string, shape: number[], start: number, step: number): TensorSource =>
        layout === "packed-mxfp4" && shape.length === 3
          // Released MXFP4 matrices are stored out × in ([E, 2I, H/32, 16], [E, H, I/32, 16]):
          // the same interleaved rows, no transpose.
          ? {
            name: prefix + EXPERTS + name,
            mxfp4: { block: t.expert, rowStart: start, rowStep: step },
          }
          : { name: prefix + EXPERTS + name, columns: { shape, block: t.expert, start, step } };
      switch (t.role) {
        case "router":
          return { name: `${prefix}mlp.router.weight` };
        case "router_bias":
          return { name: `${prefix}mlp.router.bias` };
        case "expert_gate":
          return at("gate_up_proj", [E, H, 2 * I], 0, 2);
        case "expert_up":
          return at("gate_up_proj", [E, H, 2 * I], 1, 2);
        case "expert_gate_bias":
          return at("gate_up_proj_bias", [E, 2 * I], 0, 2);
        case "expert_up_bias":
          return at("gate_up_proj_bias", [E, 2 * I], 1, 2);
        case "expert_down":
          return at("down_proj", [E, I, H], 0, 1);
        case "expert_down_bias":
          return at("down_proj_bias", [E, H], 0, 1);
      }
    }
    if (t.role === "attn_sinks") return { name: `${prefix}self_attn.sinks` };
    return hub.source(t, spec, layout);
  },
  unused: hub.unused,
};
