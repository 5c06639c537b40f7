/**
 * Streaming weight statistics: the range and kurtosis of `weightStats` (compiler/passes) over
 * several arrays, accumulated one array at a time so no array has to be kept. Moments are summed
 * about a shift taken from the first array's leading values (close to the mean for weight
 * matrices), which keeps the one-pass central moments accurate; they match the two-pass
 * `weightStats` to ~1e-12 relative.
 *
 * @module
 */

import { InputError } from "../../schemas/errors.ts";
import type { WeightStats } from "../passes/sensitivity.ts";

/** Range, mean, std and kurtosis of all values added so far (the fields of `weightStats`). */
export type StreamStats = WeightStats;

/** Power sums of one array about a shift: what {@link MomentAccumulator} adds per array. */
export interface MomentSums {
  n: number;
  s1: number;
  s2: number;
  s3: number;
  s4: number;
  min: number;
  max: number;
}

/** The shift {@link MomentAccumulator} uses: the mean of the first ≤ 4096 values it sees. */
export function momentShift(a: Float32Array): number {
  const m = Math.min(a.length, 4096);
  let s = 0;
  for (let i = 0; i < m; i++) s += a[i];
  return m ? s / m : 0;
}

/**
 * Σ(x − shift)^k for k = 1..4, min and max of `a`, each power sum started from 0 (the terms
 * {@link MomentAccumulator.add} sums); a non-finite value is an InputError naming `name`.
 */
export function momentSums(a: Float32Array, shift: number, name = "weights"): MomentSums {
  const k = shift;
  let s1 = 0, s2 = 0, s3 = 0, s4 = 0;
  let lo = Infinity, hi = -Infinity;
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
  return { n: a.length, s1, s2, s3, s4, min: lo, max: hi };
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
    if (Number.isNaN(this.#shift)) this.#shift = momentShift(a);
    this.addSums(momentSums(a, this.#shift, name));
  }

  /** The shift (NaN until the first array or {@link setShift}). */
  get shift(): number {
    return this.#shift;
  }

  /** Sets the shift before anything is added (e.g. from `momentShift` of the first values). */
  setShift(shift: number): void {
    if (!Number.isNaN(this.#shift)) throw new Error("internal: moment shift set twice");
    this.#shift = shift;
  }

  /** Values added so far. */
  get count(): number {
    return this.#n;
  }

  /**
   * Adds sums computed elsewhere (a worker) with {@link momentSums} about this accumulator's
   * shift. Adding an array's blocks in order equals `add` of each block.
   */
  addSums(p: MomentSums): void {
    this.#s1 += p.s1;
    this.#s2 += p.s2;
    this.#s3 += p.s3;
    this.#s4 += p.s4;
    if (p.min < this.#min) this.#min = p.min;
    if (p.max > this.#max) this.#max = p.max;
    this.#n += p.n;
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
