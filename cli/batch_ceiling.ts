/**
 * The structural ceiling of batched decode for an artifact: the aggregate ÷ single-stream
 * throughput ratio S streams could reach if every weight's per-use cost were fully shared by the
 * tokens that use it in a step (each matrix read once per step, however many tokens it serves).
 *
 * A step of one token reads the dense matrices (attention, router, shared experts, the head;
 * not the embedding, which is a row gather, unless tied to the head) and k experts per MoE
 * layer. A step of S tokens reads the dense matrices once and, with uniform routing, the
 * expected number of distinct experts among S independent top-k choices: E·(1 − (1 − k/E)^S).
 * ceiling = S · bytes(1) / bytes(S). Cost measured in packed weight bytes (what bounds decode on
 * a GPU); on a CPU adapter the per-token activation loads are not shared, so the ceiling is an
 * upper bound there too.
 *
 * @module
 */

import type { ModelSpec } from "../schemas/model.ts";
import type { TensorRecord } from "../schemas/header.ts";
import { weightDeviceBytes } from "../runtime/engine/context.ts";

/** Expected distinct experts among S tokens each choosing k of E uniformly. */
export function expectedDistinctExperts(E: number, k: number, S: number): number {
  return E * (1 - Math.pow(1 - k / E, S));
}

/** Bytes a decode step reads and the ceiling ratio for S streams. */
export interface BatchCeiling {
  streams: number;
  /** Dense matrix bytes read once per step. */
  denseBytes: number;
  /** Expert bytes one token reads (k experts per MoE layer, mean expert size). */
  expertBytesOne: number;
  /** Expected expert bytes a step of S tokens reads. */
  expertBytesS: number;
  /** Expected distinct experts per MoE layer at S (mean over layers). */
  distinctExperts: number;
  /** S · bytes(1) / bytes(S). */
  ceiling: number;
}

/** The ceiling of S-stream decode for a model's tensors (see the module docs). */
export function batchCeiling(
  spec: ModelSpec,
  tensors: readonly TensorRecord[],
  S: number,
): BatchCeiling {
  const bytes = (t: TensorRecord) => weightDeviceBytes([t]);
  const tied = spec.head.tied;
  let dense = 0;
  // Per (stack/layer): total expert bytes.
  const experts = new Map<string, number>();
  for (const t of tensors) {
    if (t.shape.length !== 2) continue;
    if (t.expert >= 0) {
      const key = `${t.stack}/${t.layer}`;
      experts.set(key, (experts.get(key) ?? 0) + bytes(t));
    } else if (t.role !== "embed" || tied) {
      dense += bytes(t);
    }
  }
  let one = 0, many = 0, distinct = 0, layers = 0;
  spec.decoder.layers.forEach((layer, l) => {
    for (const b of layer.blocks) {
      if (b.kind !== "ffn" || b.ffn.kind !== "moe") continue;
      const { numExperts: E, topK: k } = b.ffn;
      const perExpert = (experts.get(`decoder/${l}`) ?? 0) / E;
      const d = expectedDistinctExperts(E, k, S);
      one += k * perExpert;
      many += d * perExpert;
      distinct += d;
      layers++;
    }
  });
  return {
    streams: S,
    denseBytes: dense,
    expertBytesOne: one,
    expertBytesS: many,
    distinctExperts: layers ? distinct / layers : 0,
    ceiling: (S * (dense + one)) / (dense + many),
  };
}
