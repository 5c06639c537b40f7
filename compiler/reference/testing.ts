/**
 * Helpers shared by the reference's oracle and session tests: the error against a flat logits
 * row set, argmax, and KV-cached greedy decoding.
 *
 * @module
 */

import assert from "node:assert/strict";
import type { ReferenceModel } from "./model.ts";
import { ReferenceSession } from "./session.ts";

/** Max |got − want| over rows laid out row-major in `want`. */
export function maxAbsError(rows: Float64Array[], want: number[]): number {
  const V = rows[0].length;
  assert.equal(rows.length * V, want.length, "logit count");
  let err = 0;
  rows.forEach((row, t) =>
    row.forEach((x, i) => (err = Math.max(err, Math.abs(x - want[t * V + i]))))
  );
  return err;
}

/** The index of the largest value (the first on ties). */
export function argmax(row: Float64Array): number {
  let best = 0;
  for (let i = 1; i < row.length; i++) if (row[i] > row[best]) best = i;
  return best;
}

/**
 * Greedy decoding with the KV cache: feed the prompt, then one step per generated token. Returns
 * the ids and the logits each was chosen from.
 */
export function greedy(
  model: ReferenceModel,
  prompt: number[],
  count: number,
): { ids: number[]; steps: Float64Array[] } {
  const session = new ReferenceSession(model);
  let logits = session.feed(prompt).at(-1)!;
  const ids: number[] = [];
  const steps: Float64Array[] = [];
  for (let i = 0; i < count; i++) {
    steps.push(logits);
    ids.push(argmax(logits));
    if (i < count - 1) logits = session.step(ids[i]);
  }
  return { ids, steps };
}
