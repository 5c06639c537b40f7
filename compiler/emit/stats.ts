/**
 * Streaming weight statistics: the range and kurtosis of `weightStats` (compiler/passes) over
 * several arrays, accumulated one array at a time so no array has to be kept. Moments are summed
 * about a shift taken from the first array's leading values (close to the mean for weight
 * matrices), which keeps the one-pass central moments accurate; they match the two-pass
 * `weightStats` to ~1e-12 relative.
 *
 * @module
 */

import { InputError } from "../../runtime/errors.ts";

/** Range, mean, std and kurtosis of all values added so far. */
export interface StreamStats {
  min: number;
  max: number;
  range: number;
  mean: number;
  std: number;
  kurtosis: number;
  count: number;
}

/** Accumulates moments of the values of several arrays without keeping them. */
export class MomentAccumulator {
  #n = 0;
  #shift = NaN;
  #s1 = 0;
  #s2 = 0;
  #s3 = 0;
  #s4 = 0;
  #min = Infinity;
  #max = -Infinity;

  /** Adds every value of `a`; a non-finite value is an InputError naming `name`. */
  add(a: Float32Array, name = "weights"): void {
    if (Number.isNaN(this.#shift)) {
      const m = Math.min(a.length, 4096);
      let s = 0;
      for (let i = 0; i < m; i++) s += a[i];
      this.#shift = m ? s / m : 0;
    }
    const k = this.#shift;
    let s1 = 0, s2 = 0, s3 = 0, s4 = 0;
    let lo = this.#min, hi = this.#max;
    for (let i = 0; i < a.length; i++) {
      const x = a[i];
      if (x < lo) lo = x;
      if (x > hi) hi = x;
      const y = x - k;
      const y2 = y * y;
      s1 += y;
      s2 += y2;
      s3 += y2 * y;
      s4 += y2 * y2;
    }
    if (!Number.isFinite(s4) || !Number.isFinite(s1)) {
      const i = a.findIndex((x) => !Number.isFinite(x));
      throw new InputError(`${name}: non-finite value at index ${i}`);
    }
    this.#s1 += s1;
    this.#s2 += s2;
    this.#s3 += s3;
    this.#s4 += s4;
    this.#min = lo;
    this.#max = hi;
    this.#n += a.length;
  }

  /** The statistics so far; InputError when nothing was added. */
  finish(): StreamStats {
    const n = this.#n;
    if (n === 0) throw new InputError("weights: no values");
    const mu = this.#s1 / n;
    const e2 = this.#s2 / n, e3 = this.#s3 / n, e4 = this.#s4 / n;
    const m2 = Math.max(0, e2 - mu * mu);
    const m4 = Math.max(0, e4 - 4 * mu * e3 + 6 * mu * mu * e2 - 3 * mu ** 4);
    return {
      min: this.#min,
      max: this.#max,
      range: this.#max - this.#min,
      mean: this.#shift + mu,
      std: Math.sqrt(m2),
      kurtosis: m2 > 0 ? m4 / (m2 * m2) : 0,
      count: n,
    };
  }
}
