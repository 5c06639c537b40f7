/**
 * A small deterministic PRNG for reproducible random allocations (mulberry32: a 32-bit state
 * advanced by a Weyl increment, then mixed by two xorshift-multiply rounds).
 *
 * @module
 */

/** Returns a generator of floats in [0, 1); the same seed always gives the same sequence. */
export function mulberry32(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let z = state;
    z = Math.imul(z ^ (z >>> 15), z | 1);
    z ^= z + Math.imul(z ^ (z >>> 7), z | 61);
    return ((z ^ (z >>> 14)) >>> 0) / 4294967296;
  };
}

/** A uniform integer in [0, n) from a generator. */
export function randomInt(rng: () => number, n: number): number {
  return Math.floor(rng() * n);
}
