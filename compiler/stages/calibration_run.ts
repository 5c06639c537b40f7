/**
 * Stage 2 of `compileModel`: calibration, when something needs it (the frequency allocator,
 * GPTQ, or the budget allocator's output-error costs when calibration ids are given). The float64
 * reference runs the text and records routing counts and a bounded sample of each expert's inputs
 * (compiler/calibration.ts); an encoder–decoder model runs its examples teacher-forced instead.
 * Calibration passed in by the caller (a study compiling many
 * variants) is used as it is.
 *
 * @module
 */

import { UsageError } from "../../schemas/errors.ts";
import { calibrate, calibrateSpans, type CalibrationData } from "../calibration.ts";
import type { ModelIR } from "../ir.ts";
import { prepareReference } from "../reference/mod.ts";
import type { CompilePlan } from "./plan.ts";

/** The calibration data of this compile, or null when nothing needs it. */
export async function runCalibration(
  ir: ModelIR,
  plan: CompilePlan,
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
  const ref = await prepareReference(ir);
  return await calibrate(ref, plan.calibrationIds, {
    context: plan.calibrationContext,
    onProgress,
  });
}
