/**
 * Which block variants the WebGPU engine implements, checked once at load: a description that
 * uses any other variant is refused with an UnsupportedError naming the variant and where it is,
 * before any weight is read.
 *
 * Implemented: decoder-only stacks of RMSNorm or LayerNorm (+ bias) pre-norm blocks; GQA
 * attention (causal, RoPE half-split or interleaved over the first rotaryDim dims of each head,
 * unscaled or YaRN frequencies; q/k/v and output biases, q/k RMSNorm per head or full width, q/k/v
 * clamp, any attention scale, sinks, sliding windows); MLA attention with a latent KV cache
 * (unscaled or YaRN RoPE); dense and MoE SwiGLU MLPs without biases, routed experts also with
 * biases and the clamped SwiGLU; top-k routing with softmax or sigmoid scores, a selection-only
 * bias and expert groups (renormalised or not, scaled; up to MAX_ROUTED_EXPERTS experts), or
 * softmax after top-k, with or without a router bias; PhiMoE's sparsemixer; shared experts, gated
 * or not;
 * the embedding, residual and head multipliers, tied or untied head, head bias.
 *
 * Encoder–decoder models (engine/seq2seq.ts): RMSNorm; GQA self-attention without biases, q/k
 * norms, clamps, sinks or windows, positioned by a T5 relative bias or not at all (bidirectional in
 * the encoder, causal in the decoder); cross-attention without positions; dense ReLU MLPs and MoE
 * blocks of ReLU experts behind the top-1 capacity router, without biases or shared experts; tied
 * or untied head without bias.
 *
 * @module
 */

import { UnsupportedError } from "../../schemas/errors.ts";
import type {
  AttentionSpec,
  MlpSpec,
  ModelSpec,
  MoeFfnSpec,
  NormSpec,
} from "../../schemas/model.ts";
import { MAX_ROUTED_EXPERTS } from "../kernels/moe.ts";

/** Throws an UnsupportedError for the first variant of `spec` the engine does not implement. */
export function checkSupported(spec: ModelSpec): void {
  const refuse = (variant: string, where: string): never => {
    throw new UnsupportedError(
      `model ${spec.family}: the WebGPU engine does not implement ${variant} (${where})`,
    );
  };
  if (spec.encoder) return checkEncoderDecoder(spec, refuse);
  const norm = (n: NormSpec, where: string) => {
    if (n.kind === "rms" && n.bias) refuse("RMSNorm biases", where);
  };
  /** Routed experts may also have biases and the clamped SwiGLU (gpt-oss). */
  const mlp = (m: MlpSpec, where: string, routed = false) => {
    const act = m.activation.kind;
    if (act !== "swiglu" && !(routed && act === "swiglu_clamped")) {
      refuse(`the ${act} activation`, where);
    }
    if (m.bias && !routed) refuse("MLP biases", where);
  };
  spec.decoder.layers.forEach((layer, l) => {
    for (const block of layer.blocks) {
      const where = `decoder layer ${l} ${block.kind} block`;
      norm(block.norm, where);
      switch (block.kind) {
        case "cross_attention":
          refuse("cross-attention", where);
          break;
        case "attention":
          attention(block.attention, where, refuse, norm);
          break;
        case "ffn": {
          const ffn = block.ffn;
          if (ffn.kind === "dense") {
            mlp(ffn.mlp, where);
            break;
          }
          router(ffn, where, refuse);
          mlp(ffn.expert, `${where}, routed experts`, true);
          if (ffn.shared) mlp(ffn.shared.mlp, `${where}, shared expert`);
        }
      }
    }
  });
  norm(spec.decoder.finalNorm, "decoder final norm");
}

type Refuse = (variant: string, where: string) => never;

/** The variants engine/seq2seq.ts implements (see the module docs). */
function checkEncoderDecoder(spec: ModelSpec, refuse: Refuse): void {
  if (spec.head.bias) refuse("a head bias", "encoder–decoder head");
  const norm = (n: NormSpec, where: string) => {
    if (n.kind !== "rms" || n.bias) refuse(`${n.kind} norms${n.bias ? " with biases" : ""}`, where);
  };
  const mlp = (m: MlpSpec, where: string) => {
    if (m.activation.kind !== "relu") refuse(`the ${m.activation.kind} activation`, where);
    if (m.bias) refuse("MLP biases", where);
  };
  for (const [name, stack] of [["encoder", spec.encoder!], ["decoder", spec.decoder]] as const) {
    stack.layers.forEach((layer, l) => {
      for (const block of layer.blocks) {
        const where = `${name} layer ${l} ${block.kind} block`;
        norm(block.norm, where);
        if (block.kind === "ffn") {
          const f = block.ffn;
          if (f.kind === "dense") {
            mlp(f.mlp, where);
            continue;
          }
          if (f.router.kind !== "capacity") refuse(`${f.router.kind} routing`, where);
          if (f.shared) refuse("shared experts", where);
          mlp(f.expert, `${where}, routed experts`);
          continue;
        }
        const a = block.attention;
        if (a.kind !== "gqa") return refuse(`${a.kind} attention`, where);
        if (a.numHeads % a.numKvHeads !== 0) {
          refuse(`${a.numHeads} heads over ${a.numKvHeads} KV heads`, where);
        }
        if (a.qkvBias || a.outBias) refuse("attention biases", where);
        if (a.qkNorm !== "none") refuse("q/k norms", where);
        if (a.clipQkv !== null) refuse("q/k/v clamping", where);
        if (a.sinks) refuse("attention sinks", where);
        if (a.slidingWindow !== null) refuse("sliding windows", where);
        const p = a.position.kind;
        if (p === "rope") refuse("RoPE", where);
        if (block.kind === "cross_attention" && p !== "none") refuse(`${p} positions`, where);
        if (block.kind === "attention" && a.causal !== (name === "decoder")) {
          refuse(`${a.causal ? "causal" : "bidirectional"} ${name} self-attention`, where);
        }
      }
    });
    norm(stack.finalNorm, `${name} final norm`);
  }
}

function attention(
  a: AttentionSpec,
  where: string,
  refuse: Refuse,
  norm: (n: NormSpec, where: string) => void,
): void {
  if (a.kind === "mla") {
    norm(a.latentNorm, `${where}, latent norms`);
    if (a.latentNorm.kind !== "rms") refuse(`${a.latentNorm.kind} latent norms`, where);
    if (a.position.scaling.kind !== "none" && a.position.scaling.kind !== "yarn") {
      refuse(`${a.position.scaling.kind} RoPE scaling`, where);
    }
    if (a.position.rotaryDim !== a.qkRopeHeadDim || a.qkRopeHeadDim % 2 !== 0) {
      refuse(`MLA RoPE over ${a.position.rotaryDim} of ${a.qkRopeHeadDim} dims`, where);
    }
    return;
  }
  if (a.numHeads % a.numKvHeads !== 0) {
    refuse(`${a.numHeads} heads over ${a.numKvHeads} KV heads`, where);
  }
  if (!a.causal) refuse("bidirectional attention", where);
  if (a.qkNorm !== "none") {
    norm(a.qkNormSpec, `${where}, q/k norm`);
    if (a.qkNormSpec.kind !== "rms") refuse(`${a.qkNormSpec.kind} q/k norms`, where);
  }
  const p = a.position;
  if (p.kind === "none") refuse("attention without positions", where);
  if (p.kind === "relative_bias") refuse("relative position bias", where);
  if (p.kind !== "rope") return;
  if (p.rotaryDim % 2 !== 0 || p.rotaryDim > a.headDim) {
    refuse(`RoPE over ${p.rotaryDim} of ${a.headDim} dims`, where);
  }
  if (p.scaling.kind !== "none" && p.scaling.kind !== "yarn") {
    refuse(`${p.scaling.kind} RoPE scaling`, where);
  }
  if (a.headDim % 2 !== 0) refuse(`odd head size ${a.headDim}`, where);
}

function router(f: MoeFfnSpec, where: string, refuse: Refuse): void {
  const r = f.router;
  if (r.kind === "sparsemixer") return;
  if (r.kind !== "topk") return refuse(`${r.kind} routing`, where);
  if (r.softmaxAfterTopK && (r.scoring !== "softmax" || r.selectionBias || r.groups)) {
    refuse("softmax after top-k with sigmoid scores, a selection bias or groups", where);
  }
  if (f.numExperts > MAX_ROUTED_EXPERTS) {
    refuse(`more than ${MAX_ROUTED_EXPERTS} routed experts (${f.numExperts})`, where);
  }
  const g = r.groups;
  if (g && f.topK > (f.numExperts / g.count) * g.keep) {
    refuse(`top-${f.topK} from ${g.keep} groups of ${f.numExperts / g.count} experts`, where);
  }
}
