/**
 * Held-out evaluation over any Engine (WebGPU or the CPU reference), with the windows of
 * compiler/reference/eval.ts: shared by `eval`, `study` and the benchmarks.
 *
 * @module
 */

import type { Engine } from "../runtime/api.ts";
import { crossEntropyBits, windows } from "../compiler/reference/mod.ts";
import { UsageError } from "../runtime/errors.ts";

/** What {@link evaluateEngine} measured. */
export interface EngineEval {
  /** Mean cross-entropy, bits per predicted token (per byte for byte-level models). */
  bitsPerToken: number;
  perplexity: number;
  /** Predicted tokens. */
  tokens: number;
}

/** Scores `ids` in windows of `context` tokens (see compiler/reference/eval.ts). */
export async function evaluateEngine(
  engine: Engine,
  ids: readonly number[],
  context: number,
  onProgress?: (done: number, total: number) => void,
): Promise<EngineEval> {
  const plan = windows(ids.length, context);
  if (plan.length === 0) {
    throw new UsageError(`evaluation needs at least 2 tokens, got ${ids.length}`);
  }
  let bits = 0;
  let tokens = 0;
  for (let w = 0; w < plan.length; w++) {
    const { start, length } = plan[w];
    const rows = await engine.logits(ids.slice(start, start + length));
    for (let t = 0; t < length; t++) bits += crossEntropyBits(rows[t], ids[start + t + 1]);
    tokens += length;
    onProgress?.(w + 1, plan.length);
  }
  const bitsPerToken = bits / tokens;
  return { bitsPerToken, perplexity: 2 ** bitsPerToken, tokens };
}
