/**
 * What a model's KV cache costs per token, as the WebGPU engine stores it (f32): GQA blocks keep
 * per-KV-head keys and values (2 · nkv · hd values); MLA blocks keep only the normalised latent
 * and the shared RoPE key (kvLoraRank + qkRopeHeadDim values), where full per-head K/V would be
 * nh · (nope + rope + v) values.
 *
 * @module
 */

import type { ModelSpec } from "./model.ts";

/** Bytes of one cached value (the engine's caches are f32). */
export const KV_VALUE_BYTES = 4;

/** KV-cache bytes per token over every self-attention block of the decoder. */
export interface KvCacheCost {
  /** What the engine caches. */
  bytesPerToken: number;
  /** What per-head keys and values would cost (equal to bytesPerToken without MLA). */
  fullKvBytesPerToken: number;
  /** Self-attention blocks that use the latent (MLA) cache. */
  latentBlocks: number;
}

/** The KV-cache cost per token of `spec`'s decoder. */
export function kvCacheCost(spec: ModelSpec): KvCacheCost {
  let cached = 0, full = 0, latentBlocks = 0;
  for (const layer of spec.decoder.layers) {
    for (const b of layer.blocks) {
      if (b.kind !== "attention") continue;
      const a = b.attention;
      if (a.kind === "mla") {
        latentBlocks++;
        cached += a.kvLoraRank + a.qkRopeHeadDim;
        full += a.numHeads * (a.qkNopeHeadDim + a.qkRopeHeadDim + a.vHeadDim);
      } else {
        cached += 2 * a.numKvHeads * a.headDim;
        full += 2 * a.numKvHeads * a.headDim;
      }
    }
  }
  return {
    bytesPerToken: cached * KV_VALUE_BYTES,
    fullKvBytesPerToken: full * KV_VALUE_BYTES,
    latentBlocks,
  };
}

/** One line for reports: the cache per token, and for MLA what full K/V would cost. */
export function describeKvCache(spec: ModelSpec): string {
  const c = kvCacheCost(spec);
  const head = `kv cache: ${c.bytesPerToken} bytes/token (f32)`;
  if (c.latentBlocks === 0) return head;
  const ratio = (c.fullKvBytesPerToken / c.bytesPerToken).toFixed(1);
  return `${head}, latent (MLA) in ${c.latentBlocks} block${c.latentBlocks === 1 ? "" : "s"}; ` +
    `full per-head K/V would be ${c.fullKvBytesPerToken} bytes/token (${ratio}×)`;
}
