/**
 * The compiler's intermediate representation: a model as layers, attention, routers and
 * per-layer expert groups whose tensors are lazy references into the checkpoint (or artifact).
 * Nothing is read until a pass asks for it, so the IR of a 100 GB model costs kilobytes.
 *
 * @module
 */

import type { ModelConfig } from "../schemas/model_legacy.ts";

export type { Family, ModelConfig, RoutingSpec } from "../schemas/model_legacy.ts";

/**
 * Raw little-endian bytes of a run of a tensor's elements as stored at the source, with what
 * decoding them needs (`compiler/checkpoint/raw.ts` `decodeRaw`): a block can be read on one
 * thread and decoded and checked on another.
 */
export interface RawElements {
  /** The bytes, in a buffer of their own (offset 0, transferable). */
  bytes: Uint8Array;
  /** Source dtype: "F32" | "F16" | "BF16" | "F64". */
  dtype: string;
  /** Checkpoint tensor name, for messages. */
  name: string;
  /** File holding it, for messages. */
  file: string;
  /** Flat index of the first element in the tensor. */
  start: number;
  /** Read NaN/±Inf as 0 instead of failing (the checkpoint's read option). */
  allowNonFinite: boolean;
}

/** A lazy 2-D (or 1-D) tensor: `read()` returns its values row-major as f32 (dequantized if needed). */
export interface TensorRef {
  /** Where it comes from, for messages (checkpoint tensor name, with a slice when packed). */
  readonly name: string;
  /** [rows, cols] for matrices (out × in, like torch Linear), [n] for vectors. */
  readonly shape: readonly number[];
  /** Storage type at the source: "F32" | "F16" | "BF16" | "Q2" | "Q3" | "Q4" | "Q8". */
  readonly dtype: string;
  /** Reads the values; each call reads again (callers cache what they need). */
  read(): Promise<Float32Array>;
  /** Reads rows [start, start + count) of a matrix (row-major f32), when the source can. */
  readRows?(start: number, count: number): Promise<Float32Array>;
  /** The same rows as raw source bytes, to be decoded elsewhere (checkpoint refs only). */
  readRawRows?(start: number, count: number): Promise<RawElements>;
}

/** A SwiGLU MLP: down(silu(gate · x) ⊙ (up · x)). gate/up are [I, H], down is [H, I]. */
export interface MlpIR {
  gate: TensorRef;
  up: TensorRef;
  down: TensorRef;
}

/** One routed expert, addressable by (layer, index). gate = w1, up = w3, down = w2 in Mixtral. */
export interface ExpertIR extends MlpIR {
  layer: number;
  index: number;
}

/** Self-attention weights. q: [nh·hd, H], k/v: [nkv·hd, H], o: [H, nh·hd]. */
export interface AttentionIR {
  q: TensorRef;
  k: TensorRef;
  v: TensorRef;
  o: TensorRef;
  qBias?: TensorRef;
  kBias?: TensorRef;
  vBias?: TensorRef;
  /** [hd] for per-head norms (Qwen3), [nh·hd] for full-width norms (OLMoE). */
  qNorm?: TensorRef;
  /** [hd] for per-head norms (Qwen3), [nkv·hd] for full-width norms (OLMoE). */
  kNorm?: TensorRef;
}

/** A sparse MoE feed-forward block. */
export interface MoeIR {
  kind: "moe";
  /** [E, H]: row s is expert s's router vector w_s. */
  router: TensorRef;
  experts: ExpertIR[];
  /** Always-on shared expert (Qwen2-MoE). */
  shared?: MlpIR;
  /** [1, H] sigmoid gate on the shared expert's output (Qwen2-MoE). */
  sharedGate?: TensorRef;
}

/** A dense feed-forward block (Qwen2-MoE `mlp_only_layers`). */
export interface DenseFfnIR {
  kind: "dense";
  mlp: MlpIR;
}

/** One decoder layer: x += attn(norm(x)); x += ffn(norm(x)). */
export interface LayerIR {
  index: number;
  inputNorm: TensorRef;
  attention: AttentionIR;
  postAttentionNorm: TensorRef;
  ffn: MoeIR | DenseFfnIR;
}

/** Tokenizer material carried through to the artifact. */
export interface TokenizerData {
  /** tokenizer.json bytes, or null for byte-level models (token = byte). */
  tokenizerJson: Uint8Array | null;
  /** tokenizer_config.json `chat_template`, if any. */
  chatTemplate: string | null;
}

/** A whole causal LM. */
export interface ModelIR {
  config: ModelConfig;
  /** [V, H] */
  embed: TensorRef;
  layers: LayerIR[];
  /** [H] */
  finalNorm: TensorRef;
  /** [V, H]; the same ref as `embed` when tied. */
  lmHead: TensorRef;
  tokenizer: TokenizerData;
  /** The directory or file it was read from. */
  source: string;
}

/** What a tensor is in the model; stored in the artifact for every tensor. */
export type TensorRole =
  | "embed"
  | "lm_head"
  | "final_norm"
  | "input_norm"
  | "post_attention_norm"
  | "attn_q"
  | "attn_k"
  | "attn_v"
  | "attn_o"
  | "attn_q_bias"
  | "attn_k_bias"
  | "attn_v_bias"
  | "attn_q_norm"
  | "attn_k_norm"
  | "router"
  | "expert_gate"
  | "expert_up"
  | "expert_down"
  | "shared_gate"
  | "shared_up"
  | "shared_down"
  | "shared_expert_gate"
  | "dense_gate"
  | "dense_up"
  | "dense_down";

/** A tensor with its place in the model. layer/expert are -1 where not applicable. */
export interface PlacedTensor {
  role: TensorRole;
  layer: number;
  expert: number;
  ref: TensorRef;
}

/**
 * Every tensor of the model once, in a fixed order (globals, then per layer: norms, attention,
 * router, experts in index order, shared/dense MLP). The single place that enumerates a model;
 * the artifact writer, the passes and `inspect` all walk this.
 */
export function* tensorsOf(ir: ModelIR): Generator<PlacedTensor> {
  const g = (role: TensorRole, ref: TensorRef): PlacedTensor => ({
    role,
    layer: -1,
    expert: -1,
    ref,
  });
  yield g("embed", ir.embed);
  if (!ir.config.tieWordEmbeddings) yield g("lm_head", ir.lmHead);
  yield g("final_norm", ir.finalNorm);
  for (const layer of ir.layers) {
    const l = (role: TensorRole, ref: TensorRef | undefined, expert = -1) =>
      ref ? [{ role, layer: layer.index, expert, ref }] : [];
    const a = layer.attention;
    yield* l("input_norm", layer.inputNorm);
    yield* l("post_attention_norm", layer.postAttentionNorm);
    yield* l("attn_q", a.q);
    yield* l("attn_k", a.k);
    yield* l("attn_v", a.v);
    yield* l("attn_o", a.o);
    yield* l("attn_q_bias", a.qBias);
    yield* l("attn_k_bias", a.kBias);
    yield* l("attn_v_bias", a.vBias);
    yield* l("attn_q_norm", a.qNorm);
    yield* l("attn_k_norm", a.kNorm);
    const f = layer.ffn;
    if (f.kind === "moe") {
      yield* l("router", f.router);
      for (const e of f.experts) {
        yield* l("expert_gate", e.gate, e.index);
        yield* l("expert_up", e.up, e.index);
        yield* l("expert_down", e.down, e.index);
      }
      if (f.shared) {
        yield* l("shared_gate", f.shared.gate);
        yield* l("shared_up", f.shared.up);
        yield* l("shared_down", f.shared.down);
      }
      yield* l("shared_expert_gate", f.sharedGate);
    } else {
      yield* l("dense_gate", f.mlp.gate);
      yield* l("dense_up", f.mlp.up);
      yield* l("dense_down", f.mlp.down);
    }
  }
}

/** True for the roles of routed-expert matrices (the ones the allocator assigns bits to). */
export function isExpertRole(role: TensorRole): boolean {
  return role === "expert_gate" || role === "expert_up" || role === "expert_down";
}
