/**
 * The engine's GPU state besides the weights: the activation buffers one forward pass of up to
 * `chunk` tokens writes and reads (each named for what it holds, sized for the widest block of
 * the model), the token buffer, the KV caches of the attention blocks and the RoPE tables.
 *
 * @module
 */

import type { AttentionSpec, GqaAttentionSpec, ModelSpec } from "../../schemas/model.ts";
import { ropeTable } from "../kernels/attention.ts";
import { ropeFrequencies } from "../../schemas/rope_frequencies.ts";
import { storageBuffer } from "../kernels/kernel.ts";
import { createMlaActivations, type MlaActivations } from "./mla.ts";

/** The per-forward activation buffers (f32 unless noted), [tokens, width] row-major. */
export interface Activations {
  /**
   * u32 token ids of the whole sequence (prompt, then generated), position p at p − base: the
   * embedding reads it, the GPU sampler appends to it. maxContext + 1 entries per slot, slot s
   * from s·(maxContext + 1) (kernels/slots.ts).
   */
  tokens: GPUBuffer;
  /** u32 (slot, position) pairs of a batched decode step's tokens [chunk, 2] (kernels/slots.ts). */
  rows: GPUBuffer;
  /** The residual stream [T, H]. */
  hidden: GPUBuffer;
  /** A block's input after its norm [T, H]. */
  normed: GPUBuffer;
  /** Queries [T, nh·hd] (rotated in place), keys and values [T, nkv·hd] (split projections). */
  q: GPUBuffer;
  k: GPUBuffer;
  v: GPUBuffer;
  /** The stacked projection's rows [q | k | v] [T, (nh + 2·nkv)·hd]. */
  qkv: GPUBuffer;
  /** Attention output, heads side by side [T, nh·hd]. */
  attention: GPUBuffer;
  /** Router logits [T, E]. */
  routerLogits: GPUBuffer;
  /** u32 chosen experts [T, K] and their weights [T, K]. */
  expertIds: GPUBuffer;
  expertWeights: GPUBuffer;
  /** u32 per-expert (token, slot) lists of the tiled style: counts [E], then lists [E, chunk]. */
  routes: GPUBuffer;
  /** MLP gate projections, then the SwiGLU output [rows, I] (rows: T, or T·K for experts). */
  mlpGate: GPUBuffer;
  /** MLP up projections [rows, I]. */
  mlpUp: GPUBuffer;
  /** Routed experts' outputs, one row per (token, slot) [T·K, H]. */
  expertOut: GPUBuffer;
  /** The shared expert's output [T, H] and its gate logit [T]. */
  sharedOut: GPUBuffer;
  sharedGate: GPUBuffer;
  /** Logits [T, V] (row 0 only for last-position logits). */
  logits: GPUBuffer;
  /** The MLA blocks' buffers (mla.ts), when the model has any. */
  mla: MlaActivations | null;
}

/** The widest buffer each activation needs, over every block of the model. */
export interface ActivationWidths {
  q: number;
  kv: number;
  experts: number;
  topK: number;
  /** Widest MLP intermediate: K·I of routed experts, or a dense/shared I. */
  mlp: number;
}

/** Widths over the decoder's blocks (decoder-only models; see support.ts). */
export function activationWidths(spec: ModelSpec): ActivationWidths {
  const w: ActivationWidths = { q: 0, kv: 0, experts: 0, topK: 1, mlp: 0 };
  for (const layer of spec.decoder.layers) {
    for (const block of layer.blocks) {
      if (block.kind === "attention") {
        const a = block.attention;
        if (a.kind !== "gqa") continue;
        w.q = Math.max(w.q, a.numHeads * a.headDim);
        w.kv = Math.max(w.kv, a.numKvHeads * a.headDim);
      } else if (block.kind === "ffn") {
        const f = block.ffn;
        if (f.kind === "dense") {
          w.mlp = Math.max(w.mlp, f.mlp.intermediate);
          continue;
        }
        w.experts = Math.max(w.experts, f.numExperts);
        w.topK = Math.max(w.topK, f.topK);
        w.mlp = Math.max(w.mlp, f.topK * f.expert.intermediate, f.shared?.mlp.intermediate ?? 0);
      }
    }
  }
  return w;
}

/**
 * Allocates the activations for batches of up to `chunk` tokens and `maxContext` positions, the
 * token buffer for `slots` sequences.
 */
export function createActivations(
  device: GPUDevice,
  spec: ModelSpec,
  chunk: number,
  maxContext: number,
  slots = 1,
): Activations {
  const w = activationWidths(spec);
  const H = spec.hiddenSize;
  const f32 = (floats: number, label: string) => storageBuffer(device, floats * 4, label);
  const u32 = (count: number, label: string) => storageBuffer(device, count * 4, label);
  return {
    tokens: u32(slots * (maxContext + 1), "tokens"),
    rows: u32(2 * chunk, "rows"),
    hidden: f32(chunk * H, "hidden"),
    normed: f32(chunk * H, "normed"),
    q: f32(chunk * w.q, "q"),
    k: f32(chunk * w.kv, "k"),
    v: f32(chunk * w.kv, "v"),
    qkv: f32(chunk * (w.q + 2 * w.kv), "qkv"),
    attention: f32(chunk * w.q, "attention"),
    routerLogits: f32(chunk * w.experts, "routerLogits"),
    expertIds: u32(chunk * w.topK, "expertIds"),
    expertWeights: f32(chunk * w.topK, "expertWeights"),
    routes: u32(w.experts + w.experts * chunk, "routes"),
    mlpGate: f32(chunk * w.mlp, "mlpGate"),
    mlpUp: f32(chunk * w.mlp, "mlpUp"),
    expertOut: f32(chunk * w.topK * H, "expertOut"),
    sharedOut: f32(chunk * H, "sharedOut"),
    sharedGate: f32(chunk, "sharedGate"),
    logits: f32(chunk * spec.vocabSize, "logits"),
    mla: createMlaActivations(device, spec, chunk),
  };
}

/**
 * Bytes of the activation buffers {@link createActivations} allocates for batches of `chunk`
 * tokens, the token buffer excluded (it grows with the context: see context.ts). Counted by
 * running the allocation against a device that only adds up the sizes, so the figure cannot
 * drift from the allocation.
 */
export function activationBytes(spec: ModelSpec, chunk: number): number {
  let bytes = 0;
  const counter = {
    createBuffer(d: GPUBufferDescriptor) {
      bytes += d.size;
      return {} as GPUBuffer;
    },
  } as unknown as GPUDevice;
  createActivations(counter, spec, chunk, 0);
  return bytes - 16; // the one-entry token buffer (storageBuffer's 16-byte minimum)
}

/** An attention block's key and value caches, [slots · maxContext, nkv·hd] each. */
export interface KvCache {
  keys: GPUBuffer;
  values: GPUBuffer;
}

/** Allocates the KV cache of an attention block (`slots` regions of `maxContext` rows). */
export function createKvCache(
  device: GPUDevice,
  a: GqaAttentionSpec,
  maxContext: number,
  label: string,
  slots = 1,
): KvCache {
  const bytes = slots * kvRowBytes(a) * maxContext;
  return {
    keys: storageBuffer(device, bytes, `${label}.keys`),
    values: storageBuffer(device, bytes, `${label}.values`),
  };
}

/** Bytes of one KV-cache row (one position's keys and values are two such rows). */
export function kvRowBytes(a: GqaAttentionSpec): number {
  return a.numKvHeads * a.headDim * 4;
}

/** RoPE tables on the GPU, one per distinct (rotary dims, θ), shared by the blocks that use it. */
export class RopeTables {
  readonly #tables = new Map<string, GPUBuffer>();
  readonly #device: GPUDevice;
  readonly #positions: number;

  constructor(device: GPUDevice, positions: number) {
    this.#device = device;
    this.#positions = positions;
  }

  /** The table of an attention block (unscaled RoPE over its rotary dims; see support.ts). */
  for(a: AttentionSpec): GPUBuffer {
    if (a.position.kind !== "rope") throw new Error("attention without RoPE");
    const p = a.position;
    const key = `${p.rotaryDim}/${p.theta}${
      p.scaling.kind === "none" ? "" : JSON.stringify(p.scaling)
    }`;
    let table = this.#tables.get(key);
    if (!table) {
      const scaled = p.scaling.kind === "none" ? undefined : ropeFrequencies(p);
      const data = ropeTable(p.rotaryDim, p.theta, this.#positions, scaled);
      table = storageBuffer(this.#device, data.byteLength, `rope.${key}`, data);
      this.#tables.set(key, table);
    }
    return table;
  }
}
