/**
 * Generation rates as a caller measures them from outside `generate`.
 *
 * An engine may hand ids over in batches: the first `b` ids then arrive together. moeq's engines
 * hand the first id alone (b = 1): the WebGPU engine reads it back on its own right after the
 * prefill has sampled it, then reads the others in batches of `readbackEvery` (never per token);
 * the CPU reference yields ids one by one. With the request made at t_req, the first id received
 * at t_first and the last (n-th) at t_last:
 *
 * - **TTFT** (time to first token) = t_first − t_req: what a user waits before text appears
 *   (prefill + one readback on the WebGPU engine).
 * - **decode rate** = (n − b) / (t_last − t_first): the ids that arrived after the first batch
 *   over the time they took (their decode steps and readbacks). Counting n − 1 ids over that
 *   time when the first batch holds b > 1 ids would overstate it by (n − 1) / (n − b). Undefined
 *   when every id came in the first batch (n ≤ b, e.g. a stop id early on).
 * - **end-to-end rate** = n / (t_last − t_req): everything included.
 *
 * @module
 */

/** Timestamps (ms, one clock) and counts of one generation. */
export interface GenerationTiming {
  /** When `generate` was called. */
  requestMs: number;
  /** When the first id was received. */
  firstMs: number;
  /** When the last id was received. */
  lastMs: number;
  /** Ids received (n ≥ 1). */
  tokens: number;
  /** Ids that arrived with the first one (the first readback batch, b ≥ 1). */
  firstBatch: number;
}

/** Rates of one generation; see the module docs for the definitions. */
export interface GenerationRates {
  ttftMs: number;
  totalMs: number;
  /** Ids after the first batch per second; null when there were none. */
  decodeTokensPerS: number | null;
  /** Milliseconds per id after the first batch; null when there were none. */
  decodeMsPerToken: number | null;
  /** All ids over the whole request time. */
  endToEndTokensPerS: number;
}

/** The rates of one generation. */
export function generationRates(t: GenerationTiming): GenerationRates {
  if (!(t.tokens >= 1) || !(t.firstBatch >= 1)) {
    throw new RangeError("generationRates: tokens and firstBatch must be at least 1");
  }
  const ttftMs = t.firstMs - t.requestMs;
  const totalMs = t.lastMs - t.requestMs;
  const after = t.tokens - Math.min(t.firstBatch, t.tokens);
  const span = t.lastMs - t.firstMs;
  const measured = after > 0 && span > 0;
  return {
    ttftMs,
    totalMs,
    decodeTokensPerS: measured ? after / (span / 1000) : null,
    decodeMsPerToken: measured ? span / after : null,
    endToEndTokensPerS: totalMs > 0 ? t.tokens / (totalMs / 1000) : 0,
  };
}

/** A recorder for {@link GenerationTiming}: call `received()` as each id arrives. */
export class GenerationClock {
  readonly requestMs: number;
  #first = 0;
  #last = 0;
  #tokens = 0;

  constructor(now = performance.now()) {
    this.requestMs = now;
  }

  /** Records one id's arrival (call it before handling the id). */
  received(now = performance.now()): void {
    if (this.#tokens === 0) this.#first = now;
    this.#last = now;
    this.#tokens++;
  }

  /** Ids received so far. */
  get tokens(): number {
    return this.#tokens;
  }

  /**
   * The rates, given the size of the batch the first id came in (1 for moeq's engines, which
   * hand the first id alone); null when no id arrived.
   */
  rates(firstBatch = 1): GenerationRates | null {
    if (this.#tokens === 0) return null;
    return generationRates({
      requestMs: this.requestMs,
      firstMs: this.#first,
      lastMs: this.#last,
      tokens: this.#tokens,
      firstBatch,
    });
  }
}
