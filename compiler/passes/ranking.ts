/**
 * Per-layer expert orderings: a permutation of expert indices, MOST sensitive first (the first
 * experts of the order receive the highest bit width). Every order is deterministic; ties are
 * broken by the lower expert index.
 *
 * @module
 */

import { UsageError } from "../../schemas/errors.ts";
import { randomInt } from "../../schemas/prng.ts";

/** Expert indices sorted by ascending value, ties by index. */
export function ascendingOrder(values: readonly number[]): number[] {
  return values.map((_, i) => i).sort((a, b) => values[a] - values[b] || a - b);
}

/** Expert indices sorted by descending value, ties by index. */
export function descendingOrder(values: readonly number[]): number[] {
  return values.map((_, i) => i).sort((a, b) => values[b] - values[a] || a - b);
}

/** Default ζ of the MaxVar reorder. */
export const DEFAULT_ZETA = 3;

/**
 * The paper's order (arXiv 2604.06515) for one layer.
 *
 * 1. Sort experts by ascending Λ (router-norm change), ties by expert index.
 * 2. ζ-reorder, a single deterministic pass: for i = 1 … E−1, take the expert x currently at
 *    position i and find the HIGHEST position j < i whose holder y satisfies
 *    MaxVar(x) > ζ · MaxVar(y) (strict). If there is one, x is removed from position i and
 *    inserted at j; the holders of j … i−1 each move down one place. Each expert is examined
 *    exactly once, in its Λ order (positions > i are untouched until they are examined), and
 *    positions above i are never revisited, so the result does not depend on anything but Λ,
 *    MaxVar and ζ. ζ = Infinity disables the reorder (pure Λ order).
 */
export function paperOrder(
  lambda: readonly number[],
  maxVar: readonly number[],
  zeta: number = DEFAULT_ZETA,
): number[] {
  if (lambda.length !== maxVar.length) {
    throw new UsageError(`paper order: ${lambda.length} Λ scores but ${maxVar.length} MaxVar`);
  }
  if (!(zeta >= 0)) {
    throw new UsageError(`paper order: zeta ${zeta} is not a number >= 0`);
  }
  const order = ascendingOrder(lambda);
  for (let i = 1; i < order.length; i++) {
    const x = order[i];
    let j = 0;
    while (j < i && !(maxVar[x] > zeta * maxVar[order[j]])) j++;
    if (j < i) {
      order.splice(i, 1);
      order.splice(j, 0, x);
    }
  }
  return order;
}

/** Most frequently routed first (descending frequency), ties by index. */
export function frequencyOrder(freq: readonly number[]): number[] {
  return descendingOrder(freq);
}

/** A uniformly random permutation of 0 … n−1 (Fisher–Yates driven by `rng`). */
export function randomOrder(n: number, rng: () => number): number[] {
  const order = Array.from({ length: n }, (_, i) => i);
  for (let i = n - 1; i > 0; i--) {
    const j = randomInt(rng, i + 1);
    [order[i], order[j]] = [order[j], order[i]];
  }
  return order;
}

/** rank[expert] = position of the expert in `order` (0 = most sensitive). */
export function ranksOf(order: readonly number[]): number[] {
  const rank = new Array<number>(order.length);
  order.forEach((e, pos) => rank[e] = pos);
  return rank;
}
