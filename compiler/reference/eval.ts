/**
 * Held-out evaluation: cross-entropy in bits per predicted token over non-overlapping windows,
 * the protocol of `shared/tools/tiny_moe.py bpb` (for byte-level models, bits per byte).
 *
 * With context C, windows start every C tokens (s = 0, C, 2C, …). Window s feeds tokens
 * s..s+C−1 and scores the predictions of tokens s+1..s+C; the last window is shorter, and a window
 * with nothing to predict is skipped. The result is the total cross-entropy in bits divided by the
 * number of predicted tokens.
 *
 * @module
 */

import { UsageError } from "../../schemas/errors.ts";
import type { ReferenceModel } from "./model.ts";
import { forward } from "./session.ts";

/** One evaluation window: feeds ids[start .. start+length), scores ids[start+1 .. start+length]. */
export interface EvalWindow {
  /** Position of the window's first input token. */
  start: number;
  /** Number of input tokens, which is also the number of predictions scored. */
  length: number;
}

/** The window plan for a text of `n` tokens with context `context` (see the module doc). */
export function windows(n: number, context: number): EvalWindow[] {
  if (!Number.isInteger(context) || context < 1) {
    throw new UsageError(`context must be a positive integer, got ${context}`);
  }
  const plan: EvalWindow[] = [];
  for (let start = 0; start < n - 1; start += context) {
    plan.push({ start, length: Math.min(context, n - 1 - start) });
  }
  return plan;
}

/**
 * Cross-entropy of `target` under the softmax of one logits row, in bits:
 * (logΣexp(logits) − logits[target]) / ln 2, computed in float64 with the max subtracted.
 */
export function crossEntropyBits(logits: ArrayLike<number>, target: number): number {
  let max = -Infinity;
  for (let i = 0; i < logits.length; i++) if (logits[i] > max) max = logits[i];
  let sum = 0;
  for (let i = 0; i < logits.length; i++) sum += Math.exp(logits[i] - max);
  return (max + Math.log(sum) - logits[target]) / Math.LN2;
}

/** Options of {@link evaluateReference}. */
export interface EvaluateOptions {
  /** Window length C (for shakespeare-moe: 128, its training length). */
  context: number;
  /** Called after each window with (windows done, windows in all). */
  onProgress?: (done: number, total: number) => void;
}

/** What {@link evaluateReference} measured. */
export interface EvalResult {
  /** Mean cross-entropy in bits per predicted token (bits per byte for byte-level models). */
  bitsPerToken: number;
  /** Number of predicted (scored) tokens. */
  tokens: number;
  /** Total negative log-likelihood of the scored tokens, in nats. */
  nll: number;
}

/** Logits of every position of a window: a forward pass of any implementation. */
export type WindowLogits = (
  ids: number[],
) => ArrayLike<number>[] | Promise<ArrayLike<number>[]>;

/**
 * Scores `ids` over the windows of {@link windows} with any forward pass (the float64 reference,
 * the WebGPU engine...). Throws {@link UsageError} when nothing can be scored (fewer than two
 * tokens).
 */
export async function evaluateWindows(
  logitsOf: WindowLogits,
  ids: readonly number[],
  options: EvaluateOptions,
): Promise<EvalResult> {
  const plan = windows(ids.length, options.context);
  if (plan.length === 0) {
    throw new UsageError(`evaluation needs at least 2 tokens, got ${ids.length}`);
  }
  let bits = 0;
  let tokens = 0;
  for (let w = 0; w < plan.length; w++) {
    const { start, length } = plan[w];
    const logits = await logitsOf(ids.slice(start, start + length));
    for (let t = 0; t < length; t++) bits += crossEntropyBits(logits[t], ids[start + t + 1]);
    tokens += length;
    options.onProgress?.(w + 1, plan.length);
  }
  return { bitsPerToken: bits / tokens, tokens, nll: bits * Math.LN2 };
}

/** {@link evaluateWindows} with the float64 reference forward pass. */
export function evaluateReference(
  model: ReferenceModel,
  ids: readonly number[],
  options: EvaluateOptions,
): Promise<EvalResult> {
  return evaluateWindows(
    async (w) => {
      await Promise.resolve(); // let progress output and timers run between windows
      return forward(model, w);
    },
    ids,
    options,
  );
}
