/**
 * What every allocator returns (order-based ones in `order_allocators.ts`, the knapsack in
 * `budget_allocator.ts`), the allocator names, and the summary helpers that fill it.
 *
 * @module
 */

import type { ExpertWidth } from "../../schemas/packing.ts";

/**
 * bits[moeLayer][expert] (see scores.ts: one row per MoE layer): an affine code width, or
 * MXFP4_WIDTH (4.25) for MXFP4.
 */
export type BitsTable = ExpertWidth[][];

/** The allocators moeq offers. */
export type AllocatorName =
  | "paper"
  | "reverse-paper"
  | "uniform"
  | "random"
  | "frequency"
  | "budget";

/** All allocator names. */
export const ALLOCATOR_NAMES: readonly AllocatorName[] = [
  "paper",
  "reverse-paper",
  "uniform",
  "random",
  "frequency",
  "budget",
];

/** What an allocation achieved and why. */
export interface AllocationSummary {
  method: AllocatorName;
  /** Requested average expert bit width (null for a pure byte budget). */
  targetAverage: number | null;
  /** Achieved average expert bit width, weighted by parameter count. */
  achievedAverage: number;
  /** True when the achieved average equals the target (within 1e-9). */
  exact: boolean;
  /** The widths in use, ascending. */
  levels: ExpertWidth[];
  /** Number of experts per width over the whole model, keyed by width. */
  counts: Record<string, number>;
  /** Human-readable reasons (κ, per-layer band sizes, fallbacks, solver...). */
  notes: string[];
  /** Budget allocator: "dp" (exact optimum) or "greedy" (with `lowerBound`). */
  solver?: "dp" | "greedy";
  /** Budget allocator: Σ cost of the chosen widths. */
  totalCost?: number;
  /** Budget allocator: a lower bound on the optimal Σ cost (LP relaxation). */
  lowerBound?: number;
  /** Budget allocator: Σ bytes of the chosen widths, when bytes were given. */
  totalBytes?: number;
}

/** An allocation: bits, per-layer ranks (0 = most sensitive) and the summary. */
export interface Allocation {
  bits: BitsTable;
  rank: number[][];
  summary: AllocationSummary;
}

/** Plain bits-per-parameter average of a table (`params[l][e]` weights; default equal sizes). */
export function averageBits(bits: BitsTable, params?: readonly (readonly number[])[]): number {
  let num = 0, den = 0;
  bits.forEach((row, l) =>
    row.forEach((b, e) => {
      const p = params ? params[l][e] : 1;
      num += b * p;
      den += p;
    })
  );
  return den > 0 ? num / den : 0;
}

/** Count of experts per width, keyed by width. */
export function countBits(bits: BitsTable): Record<string, number> {
  const counts: Record<string, number> = {};
  for (const row of bits) for (const b of row) counts[b] = (counts[b] ?? 0) + 1;
  return counts;
}

/** Builds the summary fields every allocator shares. */
export function summarize(
  method: AllocatorName,
  bits: BitsTable,
  targetAverage: number | null,
  notes: string[],
  params?: readonly (readonly number[])[],
): AllocationSummary {
  const achievedAverage = averageBits(bits, params);
  const counts = countBits(bits);
  return {
    method,
    targetAverage,
    achievedAverage,
    exact: targetAverage !== null && Math.abs(achievedAverage - targetAverage) < 1e-9,
    levels: Object.keys(counts).map(Number).sort((a, b) => a - b) as ExpertWidth[],
    counts,
    notes,
  };
}
