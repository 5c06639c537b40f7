/**
 * PhiMoE's sparsemixer router at inference, in float64, as transformers computes it (top-2):
 *
 *   round 1: e₁ = argmax s; m = s[e₁]; expert e is masked when (m − s[e]) / max(|s[e]|, m) > 2·jitter;
 *            w₁ = softmax over the unmasked scores, at e₁
 *   round 2: s' = s with e₁ set to −∞; e₂ = argmax s'; m' = s'[e₂]; the same mask with m' (the
 *            factor still reads the unmasked |s[e]|); w₂ = softmax over the unmasked s', at e₂
 *
 * A 0/0 ratio (s[e] = 0 = m) is NaN in torch and masks nothing; so here.
 *
 * @module
 */

import type { Routing } from "./router.ts";

/** One sparsemixer round: the argmax of `masked`, and its weight in the jitter-masked softmax. */
function round(scores: Float64Array, masked: Float64Array, jitter: number): [number, number] {
  let best = 0;
  for (let e = 1; e < masked.length; e++) if (masked[e] > masked[best]) best = e;
  const m = masked[best];
  const keep = (e: number) => !((m - scores[e]) / Math.max(Math.abs(scores[e]), m) > 2 * jitter);
  let sum = 0;
  for (let e = 0; e < masked.length; e++) {
    if (keep(e) && masked[e] !== -Infinity) sum += Math.exp(masked[e] - m);
  }
  return [best, 1 / sum];
}

/** Routes one token from its router logits to two experts with the sparsemixer weights. */
export function sparsemixer(logits: Float64Array, jitter: number): Routing {
  const [first, w1] = round(logits, logits, jitter);
  const masked = Float64Array.from(logits);
  masked[first] = -Infinity;
  const [second, w2] = round(logits, masked, jitter);
  return { experts: [first, second], weights: [w1, w2] };
}
