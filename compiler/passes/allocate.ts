/**
 * Runs an allocator by name ({@link allocate}): the one entry point the compiler uses, which
 * checks that the inputs the chosen method needs were given. The allocators themselves are in
 * `order_allocators.ts` (paper, reverse-paper, frequency, random, uniform) and
 * `budget_allocator.ts` (budget); their shared result type is in `allocation_result.ts`.
 *
 * Tables are indexed by MoE layer (the position in `moeLayers(ir)`, encoder first), then expert.
 *
 * @module
 */

import { UsageError } from "../../schemas/errors.ts";
import type { Allocation, AllocatorName } from "./allocation_result.ts";
import { allocateBudget, type BudgetProblem } from "./budget_allocator.ts";
import {
  allocateFrequency,
  allocatePaper,
  allocateRandom,
  allocateReversePaper,
  allocateUniform,
  type LevelOptions,
  type PaperInputs,
} from "./order_allocators.ts";
import type { ScoreTable } from "./scores.ts";

/** Everything any allocator may need; {@link allocate} checks the ones its method uses. */
export interface AllocateInputs extends LevelOptions, Partial<PaperInputs> {
  /** Target average expert bit width (every method but a byte-budget `budget`). */
  targetAverage?: number;
  /** Experts per MoE layer; default: the shape of the first table given. */
  expertsPerLayer?: readonly number[];
  /** Routing frequency table (`frequency`). */
  frequency?: ScoreTable;
  /** Seed of `random` (default 0). */
  seed?: number;
  /** The knapsack problem, less its target (`budget`). */
  budget?: Omit<BudgetProblem, "targetAverage">;
}

/** Runs the named allocator; a missing input is a UsageError naming it. */
export function allocate(method: AllocatorName, inputs: AllocateInputs): Allocation {
  const need = <T>(v: T | undefined, what: string): T => {
    if (v === undefined) throw new UsageError(`allocator ${method} needs ${what}`);
    return v;
  };
  const shape = (): readonly number[] =>
    need(
      inputs.expertsPerLayer ??
        (inputs.lambda ?? inputs.frequency ?? inputs.maxVar)?.map((r) => r.length),
      "expertsPerLayer",
    );
  const paper = (): PaperInputs => ({
    lambda: need(inputs.lambda, "lambda (router-norm scores)"),
    maxVar: need(inputs.maxVar, "maxVar scores"),
    usedInit: inputs.usedInit,
    zeta: inputs.zeta,
  });
  switch (method) {
    case "paper":
      return allocatePaper(paper(), need(inputs.targetAverage, "a target average"), inputs);
    case "reverse-paper":
      return allocateReversePaper(paper(), need(inputs.targetAverage, "a target average"), inputs);
    case "frequency":
      return allocateFrequency(
        need(inputs.frequency, "routing frequencies"),
        need(inputs.targetAverage, "a target average"),
        inputs,
      );
    case "random":
      return allocateRandom(
        shape(),
        need(inputs.targetAverage, "a target average"),
        inputs.seed ?? 0,
        inputs,
      );
    case "uniform":
      return allocateUniform(shape(), need(inputs.targetAverage, "a target bit width"));
    case "budget":
      return allocateBudget({
        ...need(inputs.budget, "per-expert costs (budget problem)"),
        targetAverage: inputs.targetAverage,
      });
    default:
      throw new UsageError(`unknown allocator ${method}`);
  }
}
