/**
 * Cross-attention in float64 (encoder–decoder models): the decoder's queries attend, without a
 * mask or positions, to keys and values projected once per request from the encoder output:
 *
 *   k = k_proj enc, v = v_proj enc        (once, {@link crossKv})
 *   out = o_proj(softmax(scale · q kᵀ) v), q = q_proj h   (per decoder token)
 *
 * The weights are an ordinary GQA block's (roles `cross_*`, read by attention.ts readAttention).
 *
 * @module
 */

import { type KvCache, type ReferenceAttention } from "./attention.ts";
import { attention } from "./attention.ts";
import { addBias, matmul } from "./math.ts";

/** The keys and values of the encoder output `enc` [m, H] for one cross-attention block. */
export function crossKv(a: ReferenceAttention, enc: Float64Array, m: number): KvCache {
  const kvDim = a.spec.numKvHeads * a.spec.headDim;
  const H = enc.length / m;
  const keys = new Float64Array(m * kvDim);
  const values = new Float64Array(m * kvDim);
  matmul(keys, enc, a.k, m, kvDim, H);
  matmul(values, enc, a.v, m, kvDim, H);
  if (a.kBias) addBias(keys, a.kBias, m);
  if (a.vBias) addBias(values, a.vBias, m);
  return { keys, values };
}

/** The cross-attention block over n decoder tokens h [n, H] → out [n, H], `kv` of m positions. */
export function crossAttentionBlock(
  out: Float64Array,
  h: Float64Array,
  n: number,
  a: ReferenceAttention,
  kv: KvCache,
  m: number,
): void {
  const { numHeads: nh, numKvHeads: nkv, headDim: hd, scale } = a.spec;
  const H = h.length / n;
  const qDim = nh * hd;
  const q = new Float64Array(n * qDim);
  matmul(q, h, a.q, n, qDim, H);
  if (a.qBias) addBias(q, a.qBias, n);
  const att = new Float64Array(n * qDim);
  const scores = new Float64Array(m);
  for (let t = 0; t < n; t++) {
    const qt = q.subarray(t * qDim, (t + 1) * qDim);
    attention(
      att.subarray(t * qDim, (t + 1) * qDim),
      qt,
      kv.keys,
      kv.values,
      m,
      nh,
      nkv,
      hd,
      scale,
      scores,
    );
  }
  matmul(out, att, a.o, n, H, qDim);
}
