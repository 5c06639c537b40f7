/**
 * The compiler pipeline: checkpoint IR → sensitivity passes → bit allocation → quantize → artifact,
 * as named stages (compiler/stages/), each taking and returning typed records:
 *
 * 1. **Scores** (weight-only): Λ, the router-norm change, and MaxVar of each expert's first
 *    matrix ({@link weightScores}).
 * 2. **Calibration** (when needed): routing counts and a sample of each expert's inputs, the
 *    hidden states streamed through the model one layer at a time; with `budget`, the experts'
 *    output errors and the layer sensitivities in the same pass ({@link runCalibration}).
 * 3. **Costs** (`budget` only): each expert's cost at every candidate width, from that pass or,
 *    without calibration, from its weights alone ({@link budgetCosts}).
 * 4. **Allocation**: bits per expert from the chosen allocator ({@link allocateExperts}).
 * 5. **Emit**: tensor by tensor, quantized per the plan, streamed into the artifact with the
 *    expert report ({@link emitCompiled}).
 *
 * Every table is indexed by MoE layer, the position in `moeLayers(ir)` (encoder first), then
 * expert; the report names experts by (stack, layer, expert).
 *
 * @module
 */

import type { ExpertReport } from "../schemas/artifact.ts";
import { type ModelIR, moeLayers } from "./ir.ts";
import { inlineRunner } from "./parallel/block.ts";
import { QuantizePool } from "./parallel/pool.ts";
import { type AllocationSummary, routingFrequency } from "./passes/mod.ts";
import {
  allocateExperts,
  budgetCosts,
  type CompileOptions,
  emitCompiled,
  resolvePlan,
  runCalibration,
  weightScores,
} from "./stages/mod.ts";

export type { BudgetCost, CompileOptions, DenseStorage, ExpertStorage } from "./stages/plan.ts";

/** Wall-clock milliseconds per stage. */
export interface CompileTimings {
  /** Scores + allocation (the passes proper). */
  passes: number;
  calibration: number;
  /** Budget costs: quantizing every expert at every candidate width. */
  costs: number;
  emit: number;
  total: number;
}

/** What {@link compileModel} produced. */
export interface CompileResult {
  path: string;
  bytes: number;
  allocation: AllocationSummary | null;
  experts: ExpertReport[];
  timings: CompileTimings;
  /**
   * The process's peak resident memory (Linux VmHWM, bytes) when the allocation was done, before
   * the emit: what scores, calibration and costs needed; null where /proc is not readable.
   */
  allocationPeakBytes: number | null;
}

/** Peak resident set of this process (VmHWM) in bytes; null where /proc is not readable. */
export function peakResidentBytes(): number | null {
  try {
    const s = Deno.readTextFileSync("/proc/self/status");
    const kb = Number(/^VmHWM:\s+(\d+) kB/m.exec(s)?.[1] ?? NaN);
    return Number.isFinite(kb) ? kb * 1024 : null;
  } catch {
    return null;
  }
}

/**
 * Compiles `ir` into an artifact at `dest`. Streams tensor by tensor; calibration holds one
 * layer's weights (one expert's in a MoE block) and the calibration tokens' states at a time.
 */
export async function compileModel(
  ir: ModelIR,
  dest: string,
  opts: CompileOptions,
): Promise<CompileResult> {
  const t0 = performance.now();
  const timings: CompileTimings = { passes: 0, calibration: 0, costs: 0, emit: 0, total: 0 };
  const timed = async <T>(stage: keyof CompileTimings, run: () => T | Promise<T>): Promise<T> => {
    const t = performance.now();
    try {
      return await run();
    } finally {
      timings[stage] += performance.now() - t;
    }
  };
  const plan = resolvePlan(ir, opts);
  const layers = moeLayers(ir);
  // The pool serves the MaxVar reads, the calibration's jobs and the emit; closed at the end.
  const pool = opts.workers ? new QuantizePool(opts.workers) : undefined;
  try {
    const scores = await timed("passes", () =>
      weightScores(layers, ir.spec.hiddenSize, {
        init: plan.init,
        maxVarFirst: plan.maxVarFirst,
        runner: pool ?? inlineRunner,
        onProgress: plan.onProgress,
      }));
    const calib = await timed("calibration", () => runCalibration(ir, plan, pool));
    const frequency = calib ? routingFrequency(calib.counts) : undefined;
    const costs = plan.quantizedExperts && plan.allocator === "budget"
      ? await timed("costs", () => budgetCosts(ir, layers, plan, calib, pool))
      : null;
    const allocation = await timed(
      "passes",
      () => allocateExperts(layers, plan, scores, frequency, costs),
    );
    const allocationPeakBytes = peakResidentBytes();
    const { written, experts } = await timed(
      "emit",
      () => emitCompiled(ir, dest, { layers, plan, allocation, scores, frequency, calib, pool }),
    );
    timings.total = performance.now() - t0;
    return {
      path: written.path,
      bytes: written.bytes,
      allocation: allocation?.summary ?? null,
      experts,
      timings,
      allocationPeakBytes,
    };
  } finally {
    pool?.close();
  }
}
