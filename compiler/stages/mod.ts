/**
 * The stages of `compileModel` (compiler/compile.ts), in order, each a function from typed
 * records to a typed record:
 *
 * 0. plan.ts: options → {@link CompilePlan}
 * 1. weight_scores.ts: Λ and MaxVar → {@link WeightScores}
 * 2. calibration_run.ts: routing counts and expert inputs → `CalibrationData` (when needed)
 * 3. budget_costs.ts: every expert at every width → {@link BudgetCosts} (`budget` only)
 * 4. expert_allocation.ts: bits per expert → `Allocation` (null for float experts)
 * 5. artifact_emit.ts: the artifact and its expert report → {@link EmitResult}
 *
 * @module
 */

export * from "./plan.ts";
export * from "./weight_scores.ts";
export * from "./calibration_run.ts";
export * from "./budget_costs.ts";
export * from "./expert_allocation.ts";
export * from "./artifact_emit.ts";
