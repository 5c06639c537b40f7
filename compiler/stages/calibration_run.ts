/**
 * Stage 2 of `compileModel`: calibration, when something needs it (the frequency allocator,
 * GPTQ, or the budget allocator's output-error costs when calibration ids are given). The text's
 * hidden states stream through the model one layer at a time (compiler/calibration_stream.ts),
 * recording routing counts and a bounded sample of each expert's inputs; when the `budget`
 * allocator will need output-error costs, they (and the layer sensitivities) are measured in the
 * same pass. An encoder–decoder model runs its teacher-forced examples through the whole-model
 * reference instead (compiler/calibration.ts). Calibration passed in by the caller (a study
 * compiling many variants) is used as it is.
 *
 * @module
 */

import { UsageError } from "../../schemas/errors.ts";
import { calibrateSpans, type CalibrationData } from "../calibration.ts";
import { calibrateStream, type StreamCostRequest } from "../calibration_stream.ts";
import { prepareReference } from "../reference/mod.ts";
import type { ModelIR } from "../ir.ts";
import type { CompilePlan } from "./plan.ts";
import type { CalibrationRunner } from "../calibration/jobs.ts";

/** The budget costs' request for the streamed pass, or undefined when they need no data. */
export function costRequest(plan: CompilePlan, calibrated: boolean): StreamCostRequest | undefined {
  if (!plan.quantizedExperts || plan.allocator !== "budget") return undefined;
  const mode = plan.budgetCost ?? (calibrated ? "layer" : "weight");
  if (mode === "weight") return undefined;
  return {
    widths: plan.widths,
    groupSize: plan.groupSize,
    quantizer: plan.quantizer,
    sensitivity: mode === "layer",
  };
}

/**
 * The calibration data of this compile, or null when nothing needs it; the streamed pass's jobs
 * run on `runner` (the compile's worker pool) when given.
 */
export async function runCalibration(
  ir: ModelIR,
  plan: CompilePlan,
  runner?: CalibrationRunner,
): Promise<CalibrationData | null> {
  if (plan.calibration) return plan.calibration;
  if (!plan.calibrationNeeded) return null;
  const onProgress = (done: number, total: number) => plan.onProgress("calibration", done, total);
  if (plan.calibrationSpans) {
    return await calibrateSpans(await prepareReference(ir), plan.calibrationSpans, { onProgress });
  }
  if (!plan.calibrationIds) {
    const who = plan.allocator === "frequency" ? "--allocator frequency" : "--quantizer gptq";
    throw new UsageError(`${who} needs --calibration`);
  }
  return await calibrateStream(ir, plan.calibrationIds, {
    context: plan.calibrationContext,
    costs: costRequest(plan, true),
    sensitivityTokens: plan.sensitivityTokens,
    // After this pass only GPTQ's Hessians (in the emit) read the samples.
    keepSamples: plan.quantizer === "gptq",
    onProgress,
    runner,
  });
}
