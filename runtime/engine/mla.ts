/**
 * Multi-head latent attention in the engine: its weights (kv_b in its storage format, read by
 * the two absorption kernels through the shared random-access decode), its activation
 * buffers, its latent KV cache ([maxContext, kvLoraRank + qkRopeHeadDim] per block and slot)
 * and the block function (kernels in ../kernels/mla.ts). Multi-slot engines give every slot its
 * own region of cache rows, found as the GQA caches' are (the plan's slot layout,
 * kernels/slots.ts).
 *
 * @module
 */

import type { MlaAttentionSpec, ModelSpec, NormSpec } from "../../schemas/model.ts";
import type { TensorKey } from "../../schemas/tensors.ts";
import { storageBuffer } from "../kernels/kernel.ts";
import {
  mlaAbsorbOSource,
  mlaAbsorbQSource,
  mlaAttentionSource,
  type MlaKey,
  mlaStoreSource,
} from "../kernels/mla.ts";
import { weightBuffers, type WeightSet } from "../kernels/weights.ts";
import type { KvCache } from "./activations.ts";
import type { PlanBuilder } from "./plan.ts";

/** An MLA block's weights. */
export interface MlaWeights {
  kind: "mla";
  norm: NormSpec;
  normWeight: GPUBuffer;
  /** LayerNorm's bias, when the block norm has one. */
  normBias?: GPUBuffer;
  spec: MlaAttentionSpec;
  /** Direct queries, or the q LoRA (q_a, its norm, q_b). */
  q?: WeightSet;
  qA?: WeightSet;
  qANorm?: GPUBuffer;
  qB?: WeightSet;
  kvA: WeightSet;
  kvANorm: GPUBuffer;
  /** [nh·(nope + v), R]. */
  kvB: WeightSet;
  o: WeightSet;
}

/** What loading an MLA block needs of the engine's weight loader. */
export interface MlaLoader {
  matrix(key: TensorKey, shape: number[]): Promise<WeightSet>;
  vector(key: TensorKey, shape: number[]): Promise<GPUBuffer>;
}

/** Uploads the weights of the MLA block of decoder layer `layer`. */
export async function loadMla(
  loader: MlaLoader,
  layer: number,
  norm: NormSpec,
  a: MlaAttentionSpec,
  hidden: number,
): Promise<MlaWeights> {
  const key = (role: string): TensorKey => ({ stack: "decoder", layer, expert: -1, role });
  const qk = a.qkNopeHeadDim + a.qkRopeHeadDim, R = a.kvLoraRank;
  const qRank = a.qLoraRank;
  return {
    kind: "mla",
    norm,
    normWeight: await loader.vector(key("attn_norm"), [hidden]),
    normBias: norm.bias ? await loader.vector(key("attn_norm_bias"), [hidden]) : undefined,
    spec: a,
    q: qRank === null ? await loader.matrix(key("attn_q"), [a.numHeads * qk, hidden]) : undefined,
    qA: qRank === null ? undefined : await loader.matrix(key("attn_q_a"), [qRank, hidden]),
    qANorm: qRank === null ? undefined : await loader.vector(key("attn_q_a_norm"), [qRank]),
    qB: qRank === null ? undefined : await loader.matrix(key("attn_q_b"), [a.numHeads * qk, qRank]),
    kvA: await loader.matrix(key("attn_kv_a"), [R + a.qkRopeHeadDim, hidden]),
    kvANorm: await loader.vector(key("attn_kv_a_norm"), [R]),
    kvB: await loader.matrix(key("attn_kv_b"), [
      a.numHeads * (a.qkNopeHeadDim + a.vHeadDim),
      R,
    ]),
    o: await loader.matrix(key("attn_o"), [hidden, a.numHeads * a.vHeadDim]),
  };
}

/** The MLA blocks' activation buffers, sized for the widest MLA block. */
export interface MlaActivations {
  /** q LoRA latent [T, qLoraRank]. */
  qa: GPUBuffer;
  /** Queries [T, nh·(nope + rope)], RoPE parts rotated in place. */
  q: GPUBuffer;
  /** kv_a output [T, R + rope]. */
  kva: GPUBuffer;
  /** Absorbed queries and latent outputs [T, nh·R]. */
  qLat: GPUBuffer;
  oLat: GPUBuffer;
  /** Heads' values side by side [T, nh·v]. */
  out: GPUBuffer;
}

/** The MLA blocks of a model's decoder. */
function mlaSpecs(spec: ModelSpec): MlaAttentionSpec[] {
  return spec.decoder.layers.flatMap((l) =>
    l.blocks.flatMap((b) =>
      b.kind === "attention" && b.attention.kind === "mla" ? [b.attention] : []
    )
  );
}

/** MLA activation buffers for `chunk` tokens, or null when the model has no MLA block. */
export function createMlaActivations(
  device: GPUDevice,
  spec: ModelSpec,
  chunk: number,
): MlaActivations | null {
  const all = mlaSpecs(spec);
  if (all.length === 0) return null;
  const widest = (f: (a: MlaAttentionSpec) => number) => Math.max(1, ...all.map(f));
  const buf = (floats: number, label: string) => storageBuffer(device, chunk * floats * 4, label);
  return {
    qa: buf(widest((a) => a.qLoraRank ?? 1), "mla.qa"),
    q: buf(widest((a) => a.numHeads * (a.qkNopeHeadDim + a.qkRopeHeadDim)), "mla.q"),
    kva: buf(widest((a) => a.kvLoraRank + a.qkRopeHeadDim), "mla.kva"),
    qLat: buf(widest((a) => a.numHeads * a.kvLoraRank), "mla.qLat"),
    oLat: buf(widest((a) => a.numHeads * a.kvLoraRank), "mla.oLat"),
    out: buf(widest((a) => a.numHeads * a.vHeadDim), "mla.out"),
  };
}

/** Values cached per position by an MLA block: the latent and the RoPE key. */
export function mlaCacheWidth(a: MlaAttentionSpec): number {
  return a.kvLoraRank + a.qkRopeHeadDim;
}

/**
 * The latent cache of an MLA block in `keys` ([slots · maxContext, R + rope] f32: `slots` regions
 * of `maxContext` rows); `values` is unused.
 */
export function createMlaCache(
  device: GPUDevice,
  a: MlaAttentionSpec,
  maxContext: number,
  label: string,
  slots = 1,
): KvCache {
  const bytes = slots * maxContext * mlaCacheWidth(a) * 4;
  return {
    keys: storageBuffer(device, bytes, `${label}.latent`),
    values: storageBuffer(device, 4, `${label}.unused`),
  };
}

/**
 * MLA: norm → queries (direct or q LoRA) and kv_a → latent store (norm, RoPE, cache; q RoPE) →
 * q absorption → attention over the latent cache → output absorption → o projection added to
 * the residual.
 */
export function mlaBlock(
  plan: PlanBuilder,
  w: MlaWeights,
  residualScale: number,
  cache: KvCache,
  rope: GPUBuffer,
): void {
  const acts = plan.acts, m = acts.mla!;
  const a = w.spec;
  // Multi-slot engines: each token's slot and position (Step uniform or rows; kernels/slots.ts).
  const slots = plan.ctx.slots;
  const key: MlaKey = {
    numHeads: a.numHeads,
    kvLoraRank: a.kvLoraRank,
    qkNopeHeadDim: a.qkNopeHeadDim,
    qkRopeHeadDim: a.qkRopeHeadDim,
    vHeadDim: a.vHeadDim,
  };
  const eps = a.latentNorm.eps;
  plan.preNorm(w.norm, w.normWeight, w.normBias);
  if (w.q) plan.matmul(w.q, acts.normed, m.q);
  else {
    plan.matmul(w.qA!, acts.normed, m.qa);
    plan.rmsNorm(m.qa, w.qANorm!, null, a.qLoraRank!, 1, eps);
    plan.matmul(w.qB!, m.qa, m.q);
  }
  plan.matmul(w.kvA, acts.normed, m.kva);
  plan.dispatch(
    mlaStoreSource({ ...key, eps, pairing: a.position.pairing, slots }),
    { kva: m.kva, latentNorm: w.kvANorm, rope, q: m.q, cache: cache.keys },
    (T) => [T, 1, 1],
  );
  const kvB = weightBuffers(w.kvB);
  plan.elementwise(
    mlaAbsorbQSource(key, w.kvB.format),
    { q: m.q, ...kvB, qLat: m.qLat },
    a.numHeads * a.kvLoraRank,
  );
  plan.dispatch(
    mlaAttentionSource({ ...key, scale: a.scale, slots }),
    { qLat: m.qLat, q: m.q, cache: cache.keys, oLat: m.oLat },
    (T) => [a.numHeads, T, 1],
  );
  plan.elementwise(
    mlaAbsorbOSource(key, w.kvB.format),
    { oLat: m.oLat, ...kvB, out: m.out },
    a.numHeads * a.vHeadDim,
  );
  plan.matmul(w.o, m.out, acts.hidden, { accumulate: true, scale: residualScale });
}
