/**
 * The encoder pass of an encoder–decoder model in float64: embed the ids, run every encoder
 * layer's blocks over the whole sequence at once (bidirectional self-attention, feed-forward
 * blocks routing the sequence together), then the encoder's final norm. The decoder reads the
 * result through its cross-attention blocks (cross_attention.ts).
 *
 * @module
 */

import { UsageError } from "../../schemas/errors.ts";
import { attentionBlock } from "./attention.ts";
import type { ReferenceModel } from "./model.ts";
import { denseBlock, moeBlock, type MoeObserver } from "./moe.ts";
import { normRows } from "./norms.ts";

/** Checks that every id is a token id of a vocabulary of V. */
export function checkIds(ids: readonly number[], V: number, what = "ids"): void {
  for (let i = 0; i < ids.length; i++) {
    const id = ids[i];
    if (!Number.isInteger(id) || id < 0 || id >= V) {
      throw new UsageError(`${what}[${i}] = ${id} is not a token id in [0, ${V})`);
    }
  }
}

/** The encoder output [m, H] of `ids` (m = ids.length ≥ 1), after the encoder's final norm. */
export function encode(
  model: ReferenceModel,
  ids: readonly number[],
  observer?: MoeObserver,
): Float64Array {
  const encoder = model.encoder;
  if (!encoder) throw new UsageError("the model has no encoder");
  const { hiddenSize: H, vocabSize: V, embedScale } = model.spec;
  checkIds(ids, V, "encoder ids");
  const m = ids.length;
  if (m === 0) throw new UsageError("the encoder input is empty");
  const x = new Float64Array(m * H);
  for (let t = 0; t < m; t++) x.set(model.embed.subarray(ids[t] * H, (ids[t] + 1) * H), t * H);
  if (embedScale !== 1) { for (let i = 0; i < x.length; i++) x[i] *= embedScale; }

  const h = new Float64Array(m * H);
  for (const layer of encoder.layers) {
    for (const block of layer.blocks) {
      normRows(h, x, m, block.norm);
      const out = new Float64Array(m * H);
      if (block.kind === "attention") {
        const a = block.attention;
        if ("kvB" in a) throw new Error("MLA in an encoder passed prepareReference");
        const kvDim = a.spec.numKvHeads * a.spec.headDim;
        const scratch = { keys: new Float64Array(m * kvDim), values: new Float64Array(m * kvDim) };
        attentionBlock(out, h, m, a, scratch, 0);
      } else if (block.kind === "ffn") {
        if (block.ffn.kind === "moe") moeBlock(out, h, m, block.ffn, 0, observer);
        else denseBlock(out, h, m, block.ffn);
      } else {
        throw new Error("an encoder has no cross-attention");
      }
      const r = layer.residualScale;
      for (let i = 0; i < x.length; i++) x[i] += r * out[i];
    }
  }
  normRows(x, x, m, encoder.finalNorm);
  return x;
}
