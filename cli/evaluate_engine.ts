/**
 * Held-out evaluation over any Engine (WebGPU or the CPU reference), with the windows of
 * compiler/reference/eval.ts: shared by `eval`, `study` and the benchmarks.
 *
 * @module
 */

import type { Engine } from "../runtime/api.ts";
import { evaluateWindows } from "../compiler/reference/mod.ts";

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
  const r = await evaluateWindows((w) => engine.logits(w), ids, { context, onProgress });
  return { bitsPerToken: r.bitsPerToken, perplexity: 2 ** r.bitsPerToken, tokens: r.tokens };
}
