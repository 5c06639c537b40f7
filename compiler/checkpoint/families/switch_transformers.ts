/**
 * Switch Transformer (`model_type: "switch_transformers"`): a T5 encoder–decoder whose
 * feed-forward blocks are, every `*_sparse_step` layers, top-1 MoEs with expert capacity.
 *
 * - Both stacks: per layer pre-norm self-attention (unscaled, T5 relative position bias whose
 *   table layer 0 owns: bidirectional buckets in the encoder, causal in the decoder), the decoder
 *   then cross-attention over the encoder output (no positions), then the feed-forward block.
 * - T5 norm = RMSNorm (no mean, no bias), `layer_norm_epsilon`.
 * - Feed-forward: `DenseReluDense`-style ReLU MLP (`wi` = up, `wo` = down), or a MoE of such
 *   experts routed by the capacity router: argmax of the float32 softmax, weight = its
 *   probability, at most `expert_capacity` tokens per expert and sequence, in position order.
 *   Layer i is sparse when i mod step = 1 or step = 1, with step = layers / sparse layers
 *   (transformers' config rule; `num_sparse_*_layers` 0 makes step = layers).
 * - Tied embeddings (`shared.weight`) with the final hidden state × d_model^-½ before the head.
 *
 * Hub layout: `shared.weight`; `{encoder,decoder}.block.L.layer.N` with N = 0 SelfAttention
 * (q, k, v, o; `relative_attention_bias` in block 0), decoder N = 1 EncDecAttention, last N the
 * feed-forward (`mlp.wi/wo`, or `mlp.router.classifier` + `mlp.experts.expert_E.{wi,wo}`), each
 * with its `layer_norm`; `{encoder,decoder}.final_layer_norm`; `lm_head` when untied.
 *
 * Refused: `router_bias`, a `dense_act_fn` other than relu.
 *
 * @module
 */

import { UnsupportedError } from "../../../schemas/errors.ts";
import type {
  BlockSpec,
  FfnSpec,
  GqaAttentionSpec,
  MlpSpec,
  ModelSpec,
  StackName,
  StackSpec,
} from "../../../schemas/model.ts";
import { describeKey } from "../../../schemas/tensors.ts";
import { type ConfigFields, MAX_COUNT } from "../fields.ts";
import { rmsNorm } from "./decoder.ts";
import type { FamilyAdapter } from "./family.ts";

/** T5 has no position limit; this is what `maxPositions` records (T5's n_positions). */
const MAX_POSITIONS = 512;

/** Which layers of a stack of `layers` are sparse, transformers' way. */
export function switchSparseLayers(layers: number, sparseLayers: number): boolean[] {
  const step = sparseLayers > 0 ? Math.floor(layers / sparseLayers) : layers;
  return Array.from({ length: layers }, (_, i) => step > 0 && (i % step === 1 || step === 1));
}

/** The Switch Transformer adapter. */
export const switchTransformers: FamilyAdapter = {
  modelType: "switch_transformers",
  describe(f: ConfigFields): ModelSpec {
    const vocabSize = f.positiveInt("vocab_size", 32128);
    const H = f.positiveInt("d_model", 768);
    const headDim = f.positiveInt("d_kv", 64);
    const numHeads = f.positiveInt("num_heads", 12, MAX_COUNT);
    const encoderLayers = f.positiveInt("num_layers", 12, MAX_COUNT);
    const decoderLayers = f.has("num_decoder_layers") && f.raw.num_decoder_layers !== null
      ? f.positiveInt("num_decoder_layers", undefined, MAX_COUNT)
      : encoderLayers;
    const eps = f.positiveNumber("layer_norm_epsilon", 1e-6);
    const buckets = f.positiveInt("relative_attention_num_buckets", 32);
    const maxDistance = f.positiveInt("relative_attention_max_distance", 128);
    const act = f.raw.dense_act_fn ?? "relu";
    if (act !== "relu") {
      throw new UnsupportedError(`${f.file}: dense_act_fn ${JSON.stringify(act)} is not supported`);
    }
    if (f.bool("router_bias", false)) {
      throw new UnsupportedError(`${f.file}: router_bias is not supported for switch_transformers`);
    }
    const norm = rmsNorm(eps);
    const relu: MlpSpec = {
      intermediate: f.positiveInt("d_ff", 2048),
      activation: { kind: "relu" },
      bias: false,
    };
    const moe: FfnSpec = {
      kind: "moe",
      numExperts: f.positiveInt("num_experts", 8, MAX_COUNT),
      topK: 1,
      router: { kind: "capacity", capacity: f.positiveInt("expert_capacity", 64) },
      expert: relu,
      shared: null,
    };
    const attention = (causal: boolean, relative: boolean): GqaAttentionSpec => ({
      kind: "gqa",
      numHeads,
      numKvHeads: numHeads,
      headDim,
      qkvBias: false,
      outBias: false,
      qkNorm: "none",
      qkNormSpec: norm,
      clipQkv: null,
      scale: 1,
      sinks: false,
      slidingWindow: null,
      causal,
      position: relative
        ? { kind: "relative_bias", buckets, maxDistance, bidirectional: !causal, ownerLayer: 0 }
        : { kind: "none" },
    });
    const stack = (name: StackName, layers: number, sparseKey: string): StackSpec => {
      const sparse = switchSparseLayers(layers, f.nonNegativeInt(sparseKey, 3));
      const self: BlockSpec = {
        kind: "attention",
        norm,
        attention: attention(name === "decoder", true),
      };
      const cross: BlockSpec = {
        kind: "cross_attention",
        norm,
        attention: attention(false, false),
      };
      return {
        layers: sparse.map((isMoe) => ({
          blocks: [
            self,
            ...(name === "decoder" ? [cross] : []),
            { kind: "ffn", norm, ffn: isMoe ? moe : { kind: "dense", mlp: relu } },
          ],
          residualScale: 1,
        })),
        finalNorm: norm,
      };
    };
    const tied = f.bool("tie_word_embeddings", true);
    const bos = f.tokenIds("bos_token_id", vocabSize);
    // transformers starts the decoder with decoder_start_token_id, else pad_token_id.
    const start = f.tokenIds("decoder_start_token_id", vocabSize);
    const pad = f.tokenIds("pad_token_id", vocabSize);
    return {
      family: "switch_transformers",
      vocabSize,
      hiddenSize: H,
      maxPositions: MAX_POSITIONS,
      embedScale: 1,
      encoder: stack("encoder", encoderLayers, "num_sparse_encoder_layers"),
      decoder: stack("decoder", decoderLayers, "num_sparse_decoder_layers"),
      head: { tied, scale: tied ? H ** -0.5 : 1, bias: false },
      bosTokenId: bos.length ? bos[0] : null,
      eosTokenIds: f.has("eos_token_id") ? f.tokenIds("eos_token_id", vocabSize) : [1],
      decoderStartTokenId: start[0] ?? pad[0] ?? 0,
    };
  },
  expertLayout() {
    return "classic";
  },
  source(t, spec) {
    if (t.layer < 0) {
      if (t.role === "embed") return { name: "shared.weight" };
      if (t.role === "lm_head") return { name: "lm_head.weight" };
      if (t.role === "final_norm") return { name: `${t.stack}.final_layer_norm.weight` };
    } else {
      const blocks = (t.stack === "encoder" ? spec.encoder! : spec.decoder).layers[t.layer].blocks;
      const ffn = blocks.findIndex((b) => b.kind === "ffn");
      const prefix = `${t.stack}.block.${t.layer}.layer.`;
      const name = layerTensor(t.role, t.expert, ffn);
      if (name) return { name: prefix + name };
    }
    throw new Error(`no checkpoint tensor name for ${describeKey(t)}`);
  },
  unused(spec) {
    const copies = ["encoder.embed_tokens.weight", "decoder.embed_tokens.weight"];
    return spec.head.tied ? [...copies, "lm_head.weight"] : copies;
  },
};

/** The name of a layer tensor after `block.L.layer.`; `ffn` is the feed-forward's sublayer. */
function layerTensor(role: string, expert: number, ffn: number): string | null {
  const attention = /^(attn|cross)_(q|k|v|o|norm|relative_bias)$/.exec(role);
  if (attention) {
    const [, which, part] = attention;
    const sub = which === "attn" ? "0.SelfAttention" : "1.EncDecAttention";
    if (part === "norm") return `${which === "attn" ? 0 : 1}.layer_norm.weight`;
    if (part === "relative_bias") return `${sub}.relative_attention_bias.weight`;
    return `${sub}.${part}.weight`;
  }
  const matrix: Record<string, string> = { up: "wi", down: "wo" };
  switch (role) {
    case "ffn_norm":
      return `${ffn}.layer_norm.weight`;
    case "dense_up":
    case "dense_down":
      return `${ffn}.mlp.${matrix[role.slice(6)]}.weight`;
    case "router":
      return `${ffn}.mlp.router.classifier.weight`;
    case "expert_up":
    case "expert_down":
      return `${ffn}.mlp.experts.expert_${expert}.${matrix[role.slice(7)]}.weight`;
  }
  return null;
}
