import assert from "node:assert/strict";
import { UsageError } from "../../schemas/errors.ts";
import { mulberry32 } from "../../schemas/prng.ts";
import { ascendingOrder, descendingOrder, paperOrder, randomOrder, ranksOf } from "./ranking.ts";

Deno.test("orders break ties by expert index", () => {
  assert.deepEqual(ascendingOrder([2, 1, 1, 0]), [3, 1, 2, 0]);
  assert.deepEqual(descendingOrder([1, 2, 2, 0]), [1, 2, 0, 3]);
  assert.deepEqual(ranksOf([3, 1, 2, 0]), [3, 1, 2, 0]);
  assert.deepEqual(ranksOf([2, 0, 1]), [1, 2, 0]);
});

Deno.test("paperOrder: no move when MaxVar is flat or only equals ζ×", () => {
  const lambda = [0.4, 0.1, 0.3, 0.2];
  assert.deepEqual(paperOrder(lambda, [1, 1, 1, 1]), [1, 3, 2, 0]);
  // Expert 0 is last by Λ; 3 = 3 × 1 is not strictly greater: stays.
  assert.deepEqual(paperOrder(lambda, [3, 1, 1, 1]), [1, 3, 2, 0]);
});

Deno.test("paperOrder: ζ-reorder moves to the highest position it beats", () => {
  const lambda = [1, 2, 3, 4];
  // Expert 3 beats expert 0 (4 > 3·1): straight to the top.
  assert.deepEqual(paperOrder(lambda, [1, 1, 1, 4]), [3, 0, 1, 2]);
  // Expert 3 does not beat expert 0 (4 ≤ 30) but beats expert 1: second place.
  assert.deepEqual(paperOrder(lambda, [10, 1, 1, 4]), [0, 3, 1, 2]);
  // Chain: 1 beats 0 → [1,0,2,3]; then 2 (13) beats the new top 1 (13 > 12) → [2,1,0,3].
  assert.deepEqual(paperOrder(lambda, [1, 4, 13, 1]), [2, 1, 0, 3]);
  // Custom ζ = 2: expert 3 (2.5) beats 0 (1) → top.
  assert.deepEqual(paperOrder(lambda, [1, 1, 1, 2.5], 2), [3, 0, 1, 2]);
  assert.deepEqual(paperOrder(lambda, [1, 1, 1, 2.5]), [0, 1, 2, 3]);
  // ζ = 0 with positive MaxVar: every expert beats the top, so the Λ order is reversed.
  assert.deepEqual(paperOrder(lambda, [1, 2, 3, 4], 0), [3, 2, 1, 0]);
  // Ties in Λ by index before reordering.
  assert.deepEqual(paperOrder([2, 1, 1], [1, 1, 1]), [1, 2, 0]);
  assert.throws(() => paperOrder([1], [1, 2]), UsageError);
  assert.deepEqual(paperOrder(lambda, [1, 2, 3, 4], Infinity), [0, 1, 2, 3]);
  assert.throws(() => paperOrder([1], [1], -1), UsageError);
  assert.throws(() => paperOrder([1], [1], NaN), UsageError);
});

Deno.test("randomOrder: a reproducible permutation per seed, roughly uniform", () => {
  const a = randomOrder(10, mulberry32(7)), b = randomOrder(10, mulberry32(7));
  assert.deepEqual(a, b);
  assert.deepEqual([...a].sort((x, y) => x - y), [...Array(10).keys()]);
  const first = new Array(4).fill(0), trials = 4000, rng = mulberry32(8);
  for (let t = 0; t < trials; t++) first[randomOrder(4, rng)[0]]++;
  // Each expert first with probability 1/4: 1000 ± 100 (about 3.6 standard deviations).
  for (const f of first) assert.ok(Math.abs(f - trials / 4) < 100, `${first}`);
});
