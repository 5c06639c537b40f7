/**
 * The float64 forward pass, written to match Hugging Face transformers, with a KV cache:
 *
 *   x = embed[id] · embedScale
 *   for each layer, for each block:  x += residualScale · block(norm(x))
 *   logits = lmHead(finalNorm(x) · headScale) (+ bias)
 *
 * Each block is the variant its description names (attention.ts, moe.ts). An encoder–decoder
 * model first runs `encode(encoderIds)` (encoder.ts), which also projects the encoder output to
 * each cross-attention block's keys and values once (cross_attention.ts); the decoder tokens then
 * go through `feed`/`step` as for a decoder-only model. Everything is
 * float64; transformers keeps float32 islands even in a float64 model (RMSNorm, RoPE, attention
 * softmax, routers), so this matches its float64 logits with those islands lifted
 * (`hf_logits_f64strict`) to ~1e-12, and its plain float64 logits to ~1e-6.
 *
 * @module
 */

import { UsageError } from "../../schemas/errors.ts";
import { attentionBlock, type KvCache } from "./attention.ts";
import { crossAttentionBlock, crossKv } from "./cross_attention.ts";
import { checkIds, encode } from "./encoder.ts";
import { addBias, matmul } from "./math.ts";
import { mlaBlock, mlaCacheWidth } from "./mla.ts";
import type { ReferenceModel } from "./model.ts";
import { denseBlock, moeBlock, type MoeObserver } from "./moe.ts";
import { normRows } from "./norms.ts";

/** Options of {@link forward} and {@link ReferenceSession}. */
export interface ForwardOptions {
  /** Calibration hook, called per MoE block and token (see {@link MoeObserver}). */
  observer?: MoeObserver;
}

/**
 * An incremental decoder with a KV cache: `feed(ids)` runs a chunk of tokens (a prompt) and
 * `step(id)` one token, each returning logits for the new positions. Positions continue across
 * calls; `reset()` empties the cache.
 */
export class ReferenceSession {
  /** The model this session runs. */
  readonly model: ReferenceModel;
  #observer?: MoeObserver;
  #cache: KvCache[] = [];
  #capacity = 0;
  #position = 0;
  /** Per cross-attention block, the encoder output's keys and values (after `encode`). */
  #cross: KvCache[] | null = null;
  #encoderLength = 0;

  /** Creates an empty session over `model`. */
  constructor(model: ReferenceModel, options: ForwardOptions = {}) {
    this.model = model;
    this.#observer = options.observer;
  }

  /** Number of tokens in the cache (the position the next token gets). */
  get position(): number {
    return this.#position;
  }

  /** Empties the KV cache; the next token is at position 0 again. */
  reset(): void {
    this.#position = 0;
  }

  /**
   * Runs the encoder over `ids` and keeps, per cross-attention block, its keys and values; the
   * decoder cache is emptied (the next decoder token is at position 0). Returns the encoder
   * output [ids.length, H].
   */
  encode(ids: readonly number[]): Float64Array {
    const enc = encode(this.model, ids, this.#observer);
    const m = ids.length;
    const cross: KvCache[] = [];
    for (const layer of this.model.layers) {
      for (const b of layer.blocks) {
        if (b.kind === "cross_attention") {
          cross[b.attention.cacheSlot] = crossKv(b.attention, enc, m);
        }
      }
    }
    this.#cross = cross;
    this.#encoderLength = m;
    this.reset();
    return enc;
  }

  /** Runs one token; returns its next-token logits [vocabSize]. */
  step(id: number): Float64Array {
    return this.feed([id])[0];
  }

  /**
   * Runs `ids` at positions position..position+ids.length−1 (causal attention over everything
   * cached) and returns one logits row [vocabSize] per token.
   */
  feed(ids: readonly number[]): Float64Array[] {
    const model = this.model;
    const { hiddenSize: H, vocabSize: V, embedScale, head } = model.spec;
    checkIds(ids, V);
    const n = ids.length;
    if (n === 0) return [];
    this.#reserve(this.#position + n);

    const x = new Float64Array(n * H);
    for (let t = 0; t < n; t++) x.set(model.embed.subarray(ids[t] * H, (ids[t] + 1) * H), t * H);
    if (embedScale !== 1) { for (let i = 0; i < x.length; i++) x[i] *= embedScale; }

    const h = new Float64Array(n * H);
    for (const layer of model.layers) {
      for (const block of layer.blocks) {
        normRows(h, x, n, block.norm);
        const out = new Float64Array(n * H);
        if (block.kind === "attention") {
          const a = block.attention;
          const cache = this.#cache[a.cacheSlot];
          if ("kvB" in a) mlaBlock(out, h, n, a, cache.keys, this.#position);
          else attentionBlock(out, h, n, a, cache, this.#position);
        } else if (block.kind === "cross_attention") {
          if (!this.#cross) throw new UsageError("an encoder–decoder model needs encode() first");
          const a = block.attention;
          crossAttentionBlock(out, h, n, a, this.#cross[a.cacheSlot], this.#encoderLength);
        } else if (block.ffn.kind === "moe") {
          moeBlock(out, h, n, block.ffn, this.#position, this.#observer);
        } else {
          denseBlock(out, h, n, block.ffn);
        }
        const r = layer.residualScale;
        for (let i = 0; i < x.length; i++) x[i] += r * out[i];
      }
    }

    normRows(x, x, n, model.finalNorm);
    if (head.scale !== 1) { for (let i = 0; i < x.length; i++) x[i] *= head.scale; }
    const logits = new Float64Array(n * V);
    matmul(logits, x, model.lmHead, n, V, H);
    if (model.lmHeadBias) addBias(logits, model.lmHeadBias, n);
    this.#position += n;
    return Array.from({ length: n }, (_, t) => logits.subarray(t * V, (t + 1) * V));
  }

  /** Grows every attention block's KV cache to hold at least `positions` tokens (doubling). */
  #reserve(positions: number): void {
    if (positions <= this.#capacity) return;
    const capacity = Math.max(positions, 2 * this.#capacity, 64);
    const widths: number[] = [];
    const latent: boolean[] = [];
    for (const layer of this.model.layers) {
      for (const b of layer.blocks) {
        if (b.kind !== "attention") continue;
        const a = b.attention;
        // MLA caches its latent and RoPE key in `keys` (values stay empty).
        latent[a.cacheSlot] = "kvB" in a;
        widths[a.cacheSlot] = "kvB" in a
          ? mlaCacheWidth(a.spec)
          : a.spec.numKvHeads * a.spec.headDim;
      }
    }
    this.#cache = widths.map((kvDim, slot) => {
      const keys = new Float64Array(capacity * kvDim);
      const values = new Float64Array(latent[slot] ? 0 : capacity * kvDim);
      const old = this.#cache[slot];
      if (old) {
        keys.set(old.keys.subarray(0, this.#position * kvDim));
        values.set(old.values.subarray(0, this.#position * kvDim));
      }
      return { keys, values };
    });
    this.#capacity = capacity;
  }
}

/**
 * The full causal forward pass over `ids` (positions 0..n−1): one logits row [vocabSize] per
 * position. Equivalent to a fresh {@link ReferenceSession}'s `feed(ids)`.
 */
export function forward(
  model: ReferenceModel,
  ids: readonly number[],
  options: ForwardOptions = {},
): Float64Array[] {
  return new ReferenceSession(model, options).feed(ids);
}

/**
 * The full forward pass of an encoder–decoder model: the encoder over `encoderIds`, then the
 * decoder over `decoderIds` (positions 0..n−1, all routed together): one logits row per decoder
 * position.
 */
export function forwardSeq2Seq(
  model: ReferenceModel,
  encoderIds: readonly number[],
  decoderIds: readonly number[],
  options: ForwardOptions = {},
): Float64Array[] {
  const session = new ReferenceSession(model, options);
  session.encode(encoderIds);
  return session.feed(decoderIds);
}
