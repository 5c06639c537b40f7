/**
 * T5 relative position bias in float64: a learned scalar per (bucket, head) added to the attention
 * scores, the bucket a function of key position − query position (transformers'
 * `_relative_position_bucket`):
 *
 * - bidirectional (encoder): half the buckets for keys after the query, half for the rest;
 *   causal (decoder): only the distance back into the past counts (later keys get bucket 0).
 * - of a direction's b buckets, distances below b/2 get their own; larger ones share
 *   logarithmic bins, b/2 + ⌊ln(d / (b/2)) / ln(maxDistance / (b/2)) · (b − b/2)⌋, capped at
 *   b − 1.
 *
 * transformers computes the logarithm in float32; this is float64 (what `hf_logits_f64strict`
 * does). The two differ only where the float32 quotient rounds across an integer.
 *
 * @module
 */

import type { RelativeBiasSpec } from "../../schemas/model.ts";

/** A relative bias with its table [buckets, numHeads] (the owner layer's). */
export interface ReferenceRelativeBias {
  spec: RelativeBiasSpec;
  table: Float64Array;
}

/** The bucket of `relative` = key position − query position. */
export function relativeBucket(
  relative: number,
  bidirectional: boolean,
  buckets: number,
  maxDistance: number,
): number {
  let bucket = 0;
  let n = buckets;
  let d: number;
  if (bidirectional) {
    n = Math.floor(n / 2);
    if (relative > 0) bucket += n;
    d = Math.abs(relative);
  } else {
    d = -Math.min(relative, 0);
  }
  const maxExact = Math.floor(n / 2);
  if (d < maxExact) return bucket + d;
  const large = maxExact +
    Math.trunc(Math.log(d / maxExact) / Math.log(maxDistance / maxExact) * (n - maxExact));
  return bucket + Math.min(large, n - 1);
}

/**
 * The bias of query position `query` over keys 0..nKeys−1 for every head: `out` [nh, nKeys],
 * out[h·nKeys + j] = table[bucket(j − query), h].
 */
export function relativeBiasRow(
  out: Float64Array,
  rb: ReferenceRelativeBias,
  query: number,
  nKeys: number,
  nh: number,
): void {
  const { bidirectional, buckets, maxDistance } = rb.spec;
  for (let j = 0; j < nKeys; j++) {
    const b = relativeBucket(j - query, bidirectional, buckets, maxDistance);
    for (let h = 0; h < nh; h++) out[h * nKeys + j] = rb.table[b * nh + h];
  }
}
