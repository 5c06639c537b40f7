/**
 * T5 relative position bias for the WebGPU engine. The bias of a (query, key) pair depends only
 * on their distance, so each stack's table — one learned scalar per (bucket, head) — is expanded
 * once at load into a per-head row over every distance the engine can meet, and the attention
 * kernels (kernels/seq2seq_attention.ts) read it by distance: no bucket arithmetic on the GPU and
 * one table per stack, shared by its layers.
 *
 * Buckets follow transformers' `_relative_position_bucket` (the float64 reference's
 * compiler/reference/relative_bias.ts): bidirectional (encoder) stacks give half the buckets to
 * keys after the query; causal (decoder) stacks count only the distance back; distances below
 * half a direction's buckets get their own bucket, larger ones logarithmic bins capped at the
 * last bucket. The logarithm is taken in float64 (the strict oracle's choice).
 *
 * Layouts: bidirectional `[numHeads, 2·span − 1]`, column (key − query) + span − 1;
 * causal `[numHeads, span]`, column query − key (keys after the query are masked anyway).
 *
 * @module
 */

/** Geometry of a stack's relative bias (schemas/model.ts RelativeBiasSpec). */
export interface RelativeBiasShape {
  buckets: number;
  maxDistance: number;
  bidirectional: boolean;
}

/** The bucket of `relative` = key position − query position. */
export function relativeBucket(relative: number, shape: RelativeBiasShape): number {
  let bucket = 0;
  let n = shape.buckets;
  let d: number;
  if (shape.bidirectional) {
    n = Math.floor(n / 2);
    if (relative > 0) bucket += n;
    d = Math.abs(relative);
  } else {
    d = Math.max(-relative, 0);
  }
  const exact = Math.floor(n / 2);
  if (d < exact) return bucket + d;
  const log = Math.log(d / exact) / Math.log(shape.maxDistance / exact);
  return bucket + Math.min(exact + Math.trunc(log * (n - exact)), n - 1);
}

/** Columns per head of the expanded table for `span` positions. */
export function relativeBiasWidth(shape: RelativeBiasShape, span: number): number {
  return shape.bidirectional ? 2 * span - 1 : span;
}

/**
 * Expands `table` [buckets, numHeads] (the owner layer's weights) into the per-distance layout
 * of the module docs for sequences of up to `span` positions.
 */
export function relativeBiasTable(
  table: Float32Array,
  shape: RelativeBiasShape,
  numHeads: number,
  span: number,
): Float32Array {
  if (table.length !== shape.buckets * numHeads) {
    throw new RangeError(
      `relative bias table has ${table.length} values, expected ${shape.buckets}·${numHeads}`,
    );
  }
  const width = relativeBiasWidth(shape, span);
  const out = new Float32Array(numHeads * width);
  for (let c = 0; c < width; c++) {
    const relative = shape.bidirectional ? c - (span - 1) : -c;
    const b = relativeBucket(relative, shape);
    for (let h = 0; h < numHeads; h++) out[h * width + c] = table[b * numHeads + h];
  }
  return out;
}
