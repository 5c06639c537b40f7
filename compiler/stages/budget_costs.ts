/**
 * Stage 3 of `compileModel` (the `budget` allocator only): what each expert costs at each
 * candidate width. Every expert is quantized at every width and the damage measured
 * (compiler/expert_error.ts): on its calibration inputs ("output"), additionally scaled per MoE
 * layer by that layer's measured loss sensitivity on the calibration text ("layer", the default
 * with calibration, docs/STUDY.md), or, without calibration, as weight error ("weight").
 *
 * The costs do not depend on the target, so they are memoised on the calibration record: a study
 * compiling many variants measures them once per quantizer.
 *
 * @module
 */

import { UsageError } from "../../schemas/errors.ts";
import { calibrationBits, type CalibrationData } from "../calibration.ts";
import { layerDelta, layerScales, outputError, weightError } from "../expert_error.ts";
import {
  expertBytes,
  expertHessians,
  type ExpertWeights,
  quantizeExpert,
  readExpert,
} from "../expert_weights.ts";
import type { ModelIR, MoeLayerIR } from "../ir.ts";
import { prepareReference } from "../reference/mod.ts";
import type { CompilePlan } from "./plan.ts";

/** The budget problem's per-expert tables, `[moeLayer][expert][width index]`. */
export interface BudgetCosts {
  /** Estimated loss increase of each expert at each width. */
  cost: number[][][];
  /** Stored bytes of each expert at each width. */
  bytes: number[][][];
  /** How the costs were measured (for the allocation summary). */
  notes: string[];
}

/** The costs for `plan` (see the module doc), from the memo when already measured. */
export async function budgetCosts(
  ir: ModelIR,
  layers: readonly MoeLayerIR[],
  plan: CompilePlan,
  calib: CalibrationData | null,
): Promise<BudgetCosts> {
  const mode = plan.budgetCost ?? (calib ? "layer" : "weight");
  if (mode !== "weight" && !calib) {
    throw new UsageError(`budget cost "${mode}" needs calibration data`);
  }
  const memoKey = `budget|${plan.quantizer}|${plan.groupSize}|${plan.widths}|${mode}`;
  const memo = calib?.memo.get(memoKey) as BudgetCosts | undefined;
  if (memo) return memo;

  const { widths, groupSize, quantizer } = plan;
  // "layer": each layer's output-error proxies are scaled to measured bits/token (layerScales),
  // one layer at a time so only that layer's quantized experts are held.
  const ref = mode === "layer" ? await prepareReference(ir) : null;
  const base = ref ? await calibrationBits(ref, calib!) : 0;
  const cost = layers.map((l) => l.experts.map(() => [] as number[]));
  const bytes = layers.map((l) => l.experts.map(() => [] as number[]));
  const deltas: number[] = [];
  const total = layers.reduce((s, l) => s + l.experts.length, 0);
  let done = 0;
  for (const [m, layer] of layers.entries()) {
    const lowest: ExpertWeights[] = [];
    for (const expert of layer.experts) {
      const e = expert.index;
      const w = await readExpert(expert);
      const sample = calib?.samples[m][e];
      const hessians = quantizer === "gptq" && sample ? expertHessians(w, sample) : undefined;
      const shapes = expert.matrices.map((x) => x.weight.shape);
      for (const b of widths) {
        const q = quantizeExpert(w, b, groupSize, quantizer, hessians);
        if (ref && b === widths[0]) lowest[e] = q;
        cost[m][e].push(mode === "weight" ? weightError(w, q) : outputError(w, q, sample!).cost);
        bytes[m][e].push(expertBytes(shapes, b, groupSize));
      }
      plan.onProgress("costs", ++done, total);
    }
    if (ref) {
      deltas[m] = await layerDelta(
        ref,
        calib!.ids,
        calib!.context,
        m,
        lowest,
        base,
        calib!.spans,
      );
    }
  }

  const notes: string[] = [];
  if (ref) {
    const scale = layerScales(
      deltas,
      cost.map((row) => row.reduce((s, c) => s + (c[0] ?? 0), 0)),
    );
    cost.forEach((row, m) => row.forEach((c) => c.forEach((_, k) => c[k] *= scale[m])));
    notes.push(
      `budget cost: output error × measured layer sensitivity; Δ bits/token with a layer's ` +
        `experts at ${widths[0]} bits: ${deltas.map((d) => d.toFixed(4)).join(", ")}`,
    );
  } else {
    notes.push(`budget cost: ${mode === "output" ? "output error" : "weight error"}`);
  }
  const costs = { cost, bytes, notes };
  calib?.memo.set(memoKey, costs);
  return costs;
}
