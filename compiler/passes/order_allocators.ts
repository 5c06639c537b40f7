/**
 * Order-based bit allocators: each returns `bits[moeLayer][expert]` (bits ∈ {2, 3, 4, 8}) for a
 * target average expert bit width, the rank of every expert within its layer, and a summary
 * saying what was achieved and why.
 *
 * Order-based allocators (`paper`, `reverse-paper`, `random`, `frequency`) share one scheme: each
 * layer's experts are ordered most-sensitive first, and the order is cut into bands, highest bit
 * width first, whose sizes depend only on the number of experts, the target and the levels
 * ({@link bandCounts}). Every order-based allocator therefore gives every layer exactly the same
 * number of experts per width, so comparisons between them are at equal bits.
 *
 * Levels. Two levels (b_lo < b_hi): κ = (avg − b_lo)/(b_hi − b_lo) and the top round(κ·E) experts
 * of a layer get b_hi. By default b_lo is the largest width ≤ avg and b_hi the next width (so
 * floor(avg) and floor(avg)+1 for avg < 4; 4 and 8 for 4 < avg < 8, the widths in between do not
 * exist). Three levels (b_lo < b_mid < b_hi): fractions f_hi + f_mid + f_lo = 1 with
 * f_hi·b_hi + f_mid·b_mid + f_lo·b_lo = avg, where f_mid = min(midFraction, (avg − b_lo)/(b_mid −
 * b_lo), (b_hi − avg)/(b_hi − b_mid)) (default midFraction 1/3; the caps keep f_hi, f_lo ≥ 0) and
 * f_hi follows from the average. The top band gets b_hi, the next b_mid, the rest b_lo.
 *
 * Rounding. Band boundaries are round(E · cumulative fraction). The default is round-half-to-even
 * (what Python's `round(κE)` does, and the paper's code is Python; unbiased over many E and κ);
 * `rounding: "half-up"` gives JavaScript's Math.round. Values within 1e-9 of .5 count as ties so
 * floating-point noise in κ does not decide. When κ·E is not an integer no rounding hits the
 * target exactly: the summary reports the achieved average.
 *
 * The cross-layer `budget` allocator, which meets the average exactly, is in `budget_allocator.ts`;
 * `allocate.ts` runs any allocator by name.
 *
 * @module
 */

import { UsageError } from "../../schemas/errors.ts";
import {
  EXPERT_WIDTHS,
  type ExpertWidth,
  isExpertWidth,
  MXFP4_WIDTH,
  QUANT_BITS,
} from "../../schemas/packing.ts";
import {
  type Allocation,
  type AllocatorName,
  type BitsTable,
  summarize,
} from "./allocation_result.ts";
import { mulberry32 } from "../../schemas/prng.ts";
import { DEFAULT_ZETA, frequencyOrder, paperOrder, randomOrder, ranksOf } from "./ranking.ts";
import { checkScoreTable, type ScoreTable, tableShape } from "./scores.ts";

/** How order-based allocators turn a target into per-layer band sizes. */
export interface LevelOptions {
  /** Two or three widths (ascending or not); default: the two widths around the target. */
  levels?: readonly number[];
  /** Three-level scheme: wished fraction of experts at the middle width (default 1/3). */
  midFraction?: number;
  /** Tie rule for round(E · fraction) (default "half-even"). */
  rounding?: "half-even" | "half-up";
}

/** Rounds to the nearest integer; `x` within 1e-9 of a .5 tie uses the given rule. */
export function roundTies(x: number, rule: "half-even" | "half-up" = "half-even"): number {
  const f = Math.floor(x);
  if (Math.abs(x - f - 0.5) < 1e-9) return rule === "half-up" || f % 2 !== 0 ? f + 1 : f;
  return Math.round(x);
}

function checkTarget(target: number): void {
  const lo = QUANT_BITS[0], hi = QUANT_BITS[QUANT_BITS.length - 1];
  if (typeof target !== "number" || !(target >= lo && target <= hi)) {
    throw new UsageError(`target average bits ${target} is outside [${lo}, ${hi}]`);
  }
}

/** The default levels around a target: the largest width ≤ target and the next one (if any). */
export function defaultLevels(target: number): ExpertWidth[] {
  checkTarget(target);
  if (target === MXFP4_WIDTH) return [MXFP4_WIDTH]; // every expert MXFP4
  let i = 0;
  while (i + 1 < QUANT_BITS.length && QUANT_BITS[i + 1] <= target) i++;
  return i + 1 < QUANT_BITS.length ? [QUANT_BITS[i], QUANT_BITS[i + 1]] : [QUANT_BITS[i]];
}

/** Validated levels, ascending, distinct, containing the target within their span. */
export function resolveLevels(target: number, levels?: readonly number[]): ExpertWidth[] {
  checkTarget(target);
  if (!levels) return defaultLevels(target);
  const out = [...levels].sort((a, b) => a - b);
  if (out.length < 1 || out.length > 3) {
    throw new UsageError(`levels: ${out.length} widths given, expected 1 to 3`);
  }
  for (let i = 0; i < out.length; i++) {
    if (!isExpertWidth(out[i])) {
      throw new UsageError(`levels: ${out[i]} is not one of ${EXPERT_WIDTHS}`);
    }
    if (i > 0 && out[i] === out[i - 1]) throw new UsageError(`levels: ${out[i]} given twice`);
  }
  if (target < out[0] || target > out[out.length - 1]) {
    throw new UsageError(`target average bits ${target} is outside levels [${out}]`);
  }
  return out as ExpertWidth[];
}

/**
 * Fractions of experts per level (same order as the ascending `levels`) that meet `target`
 * exactly in expectation; see the module doc for the three-level rule.
 */
export function levelFractions(
  target: number,
  levels: readonly ExpertWidth[],
  midFraction = 1 / 3,
): number[] {
  if (levels.length === 1) return [1];
  if (levels.length === 2) {
    const kappa = (target - levels[0]) / (levels[1] - levels[0]);
    return [1 - kappa, kappa];
  }
  if (!(midFraction >= 0 && midFraction <= 1)) {
    throw new UsageError(`midFraction ${midFraction} is outside [0, 1]`);
  }
  const [lo, mid, hi] = levels;
  const fMid = Math.min(midFraction, (target - lo) / (mid - lo), (hi - target) / (hi - mid));
  const fHi = (target - fMid * mid - (1 - fMid) * lo) / (hi - lo);
  return [Math.max(0, 1 - fHi - fMid), fMid, fHi];
}

/**
 * Band sizes for one layer of `numExperts` experts: counts per level, HIGHEST width first
 * (the order in which the ranking is consumed). Boundaries are round(E · cumulative fraction).
 */
export function bandCounts(
  numExperts: number,
  target: number,
  options: LevelOptions = {},
): { levels: ExpertWidth[]; counts: number[] } {
  const asc = resolveLevels(target, options.levels);
  const fractions = levelFractions(target, asc, options.midFraction).reverse();
  const levels = [...asc].reverse();
  const counts: number[] = [];
  let cum = 0, placed = 0;
  for (let i = 0; i < levels.length; i++) {
    cum += fractions[i];
    const boundary = i === levels.length - 1
      ? numExperts
      : Math.min(numExperts, roundTies(numExperts * cum, options.rounding));
    counts.push(Math.max(0, boundary - placed));
    placed = Math.max(placed, boundary);
  }
  return { levels, counts };
}

/**
 * Order-based allocation: `orders[l]` lists layer l's experts most sensitive first; each layer is
 * cut into bands by {@link bandCounts}.
 */
export function allocateByOrder(
  method: AllocatorName,
  orders: readonly (readonly number[])[],
  target: number,
  options: LevelOptions = {},
  extraNotes: string[] = [],
): Allocation {
  const notes = [...extraNotes];
  const bandNotes = new Map<number, string>();
  const bits: BitsTable = orders.map((order) => {
    const { levels, counts } = bandCounts(order.length, target, options);
    if (order.length > 0 && !bandNotes.has(order.length)) {
      const ideal = levelFractions(target, [...levels].reverse(), options.midFraction)
        .reverse().map((f) => +(f * order.length).toFixed(4));
      bandNotes.set(
        order.length,
        `E=${order.length}: ideal experts per width [${levels}] = [${ideal}], assigned [${counts}]`,
      );
    }
    const row = new Array<ExpertWidth>(order.length);
    let pos = 0;
    levels.forEach((b, i) => {
      for (let k = 0; k < counts[i]; k++) row[order[pos++]] = b;
    });
    return row;
  });
  notes.push(...bandNotes.values());
  const summary = summarize(method, bits, target, notes);
  if (!summary.exact) {
    notes.push(
      `per-layer rounding gives ${
        summary.achievedAverage.toFixed(4)
      } bits, not the target ${target}`,
    );
  }
  return { bits, rank: orders.map((o) => ranksOf(o)), summary };
}

/** Inputs of the paper allocator. */
export interface PaperInputs {
  /** Λ[moeLayer][expert] from `routerNorm`. */
  lambda: ScoreTable;
  /** MaxVar[moeLayer][expert] from `maxVariance`. */
  maxVar: ScoreTable;
  /** Whether Λ used the init checkpoint (false: fallback to final norms, noted). */
  usedInit?: boolean;
  /** ζ of the MaxVar reorder (default 3). */
  zeta?: number;
}

function paperOrders(inputs: PaperInputs): { orders: number[][]; notes: string[] } {
  checkScoreTable(inputs.lambda, "lambda");
  checkScoreTable(inputs.maxVar, "maxVar", tableShape(inputs.lambda));
  const zeta = inputs.zeta ?? DEFAULT_ZETA;
  const orders = inputs.lambda.map((lam, l) => paperOrder(lam, inputs.maxVar[l], zeta));
  const notes = [`order: ascending router-norm change Λ, then ζ-reorder by MaxVar (ζ=${zeta})`];
  if (inputs.usedInit === false) {
    notes.push("no init checkpoint: Λ is the final router norm ‖w_s‖₂ (fallback)");
  }
  return { orders, notes };
}

/** The paper's allocator (arXiv 2604.06515): smallest Λ first, ζ-reorder, top bands high. */
export function allocatePaper(
  inputs: PaperInputs,
  target: number,
  options: LevelOptions = {},
): Allocation {
  const { orders, notes } = paperOrders(inputs);
  return allocateByOrder("paper", orders, target, options, notes);
}

/** The paper's order reversed (largest Λ first), same band sizes: a control for the study. */
export function allocateReversePaper(
  inputs: PaperInputs,
  target: number,
  options: LevelOptions = {},
): Allocation {
  const { orders, notes } = paperOrders(inputs);
  notes.push("reversed: the paper's least sensitive experts get the high bits");
  return allocateByOrder(
    "reverse-paper",
    orders.map((o) => [...o].reverse()),
    target,
    options,
    notes,
  );
}

/** Most frequently routed experts get the high bits (same band sizes as paper). */
export function allocateFrequency(
  frequency: ScoreTable,
  target: number,
  options: LevelOptions = {},
): Allocation {
  checkScoreTable(frequency, "frequency");
  return allocateByOrder("frequency", frequency.map(frequencyOrder), target, options, [
    "order: descending routing frequency",
  ]);
}

/**
 * Random order per layer from one mulberry32 stream seeded by `seed` (layers consumed in index
 * order), same band sizes as paper: reproducible per seed, equal bits to every other allocator.
 */
export function allocateRandom(
  expertsPerLayer: readonly number[],
  target: number,
  seed: number,
  options: LevelOptions = {},
): Allocation {
  if (!Number.isInteger(seed)) throw new UsageError(`random seed ${seed} is not an integer`);
  const rng = mulberry32(seed);
  const orders = expertsPerLayer.map((n) => randomOrder(n, rng));
  return allocateByOrder("random", orders, target, options, [`order: random, seed ${seed}`]);
}

/** Every expert at `bits`; the target must be one of the supported widths. */
export function allocateUniform(expertsPerLayer: readonly number[], bits: number): Allocation {
  if (!isExpertWidth(bits)) {
    throw new UsageError(`uniform allocation: ${bits} bits is not one of ${EXPERT_WIDTHS}`);
  }
  const table: BitsTable = expertsPerLayer.map((n) => new Array<ExpertWidth>(n).fill(bits));
  return {
    bits: table,
    rank: expertsPerLayer.map((n) => Array.from({ length: n }, (_, i) => i)),
    summary: summarize("uniform", table, bits, [`all experts at ${bits} bits`]),
  };
}
