/**
 * Stage 4 of `compileModel`: the bit width of every routed expert, `[moeLayer][expert]`, from the
 * chosen allocator (compiler/passes/) and the records of the stages before it.
 *
 * @module
 */

import type { MoeLayerIR } from "../ir.ts";
import { allocate, type Allocation, type ScoreTable } from "../passes/mod.ts";
import type { BudgetCosts } from "./budget_costs.ts";
import type { CompilePlan } from "./plan.ts";
import type { WeightScores } from "./weight_scores.ts";

/** The allocation, or null when the experts are stored as floats. */
export function allocateExperts(
  layers: readonly MoeLayerIR[],
  plan: CompilePlan,
  scores: WeightScores,
  frequency: ScoreTable | undefined,
  costs: BudgetCosts | null,
): Allocation | null {
  const storage = plan.expertStorage;
  if (storage.kind !== "bits") return null;
  const byteBudget = plan.allocator === "budget" && plan.maxBytes !== undefined;
  const allocation = allocate(plan.allocator, {
    targetAverage: byteBudget ? undefined : storage.average,
    expertsPerLayer: layers.map((l) => l.experts.length),
    lambda: scores.lambda,
    usedInit: scores.usedInit,
    maxVar: scores.maxVar,
    frequency,
    zeta: plan.zeta,
    seed: plan.seed,
    levels: plan.levels,
    budget: costs
      ? { widths: plan.widths, cost: costs.cost, bytes: costs.bytes, maxBytes: plan.maxBytes }
      : undefined,
  });
  allocation.summary.notes.push(...(costs?.notes ?? []));
  return allocation;
}
