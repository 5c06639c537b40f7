import assert from "node:assert/strict";
import { expectedDistinctExperts } from "./batch_ceiling.ts";

Deno.test("expectedDistinctExperts matches a Monte Carlo count of distinct top-k choices", () => {
  // Simulated: S tokens each pick k distinct experts of E uniformly.
  let seed = 12345;
  const rand = () => (seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648;
  for (const [E, k, S] of [[8, 2, 8], [32, 4, 8], [128, 8, 4]]) {
    const trials = 4000;
    let total = 0;
    for (let i = 0; i < trials; i++) {
      const seen = new Set<number>();
      for (let s = 0; s < S; s++) {
        const pool = Array.from({ length: E }, (_, e) => e);
        for (let j = 0; j < k; j++) {
          const at = j + Math.floor(rand() * (E - j));
          [pool[j], pool[at]] = [pool[at], pool[j]];
          seen.add(pool[j]);
        }
      }
      total += seen.size;
    }
    const want = expectedDistinctExperts(E, k, S);
    assert.ok(
      Math.abs(total / trials - want) < 0.02 * want,
      `${E}/${k}/${S}: ${total / trials} vs ${want}`,
    );
  }
  assert.equal(expectedDistinctExperts(8, 2, 1), 2);
});
