/**
 * Stage 3 of `compileModel` (the `budget` allocator only): what each expert costs at each
 * candidate width. Every expert is quantized at every width and the damage measured
 * (compiler/expert_error.ts): on its calibration inputs ("output"), additionally scaled per MoE
 * layer by that layer's measured loss sensitivity on the calibration text ("layer", the default
 * with calibration, docs/STUDY.md), or, without calibration, as weight error ("weight").
 *
 * The output errors and layer sensitivities are measured by the streamed calibration pass
 * (compiler/calibration_stream.ts), in the calibration stage when it knows the budget will need
 * them, else here by one more streamed pass. They do not depend on the target, so they are
 * memoised on the calibration record: a study compiling many variants measures them once per
 * quantizer.
 *
 * @module
 */

import { UsageError } from "../../schemas/errors.ts";
import { calibrationBits, type CalibrationData } from "../calibration.ts";
import { calibrateStream, type StreamCosts, streamCostsKey } from "../calibration_stream.ts";
import { expertImportance, sampledExpertError } from "../data_free.ts";
import { layerDelta, layerScales, outputError } from "../expert_error.ts";
import { keyString } from "../../schemas/tensors.ts";
import {
  expertBytes,
  expertHessians,
  type ExpertWeights,
  quantizeExpert,
  readExpert,
} from "../expert_weights.ts";
import { prepareReference } from "../reference/mod.ts";
import type { ModelIR, MoeLayerIR } from "../ir.ts";
import { costRequest } from "./calibration_run.ts";
import type { CompilePlan } from "./plan.ts";
import type { CalibrationRunner } from "../calibration/jobs.ts";

/** The budget problem's per-expert tables, `[moeLayer][expert][width index]`. */
export interface BudgetCosts {
  /** Estimated loss increase of each expert at each width. */
  cost: number[][][];
  /** Stored bytes of each expert at each width. */
  bytes: number[][][];
  /** How the costs were measured (for the allocation summary). */
  notes: string[];
}

/**
 * The costs for `plan` (see the module doc), from the memo when already measured; a streamed
 * pass runs its jobs on `runner` (the compile's worker pool) when given.
 */
export async function budgetCosts(
  ir: ModelIR,
  layers: readonly MoeLayerIR[],
  plan: CompilePlan,
  calib: CalibrationData | null,
  runner?: CalibrationRunner,
): Promise<BudgetCosts> {
  const mode = plan.budgetCost ?? (calib ? "layer" : "weight");
  if (mode !== "weight" && !calib) {
    throw new UsageError(`budget cost "${mode}" needs calibration data`);
  }
  const variant = mode === "weight" ? `|${plan.dataFreeCost}` : "";
  const memoKey = `budget|${plan.quantizer}|${plan.groupSize}|${plan.widths}|${mode}${variant}`;
  const memo = calib?.memo.get(memoKey) as BudgetCosts | undefined;
  if (memo) return memo;

  const { widths, groupSize } = plan;
  const bytes = layers.map((l) =>
    l.experts.map((e) => {
      const shapes = e.matrices.map((x) => x.weight.shape);
      return widths.map((b) => expertBytes(shapes, b, groupSize));
    })
  );
  const notes: string[] = [];
  let cost: number[][][];
  if (mode === "weight") {
    cost = await dataFreeCosts(ir, layers, plan);
    notes.push(
      plan.dataFreeCost === "plain"
        ? "budget cost: weight error"
        : `budget cost: data-free, input-norm-scaled weight error` +
          (plan.dataFreeCost === "normed" ? "" : ` × ${plan.dataFreeCost} importance`),
    );
  } else {
    const measured = calib!.spans
      ? await exampleCosts(ir, layers, plan, calib!, mode === "layer")
      : await streamCosts(ir, plan, calib!, runner);
    cost = measured.output.map((row) => row.map((c) => [...c]));
    if (mode === "layer") {
      const deltas = measured.deltas!;
      const scale = layerScales(deltas, cost.map((row) => row.reduce((s, c) => s + c[0], 0)));
      cost.forEach((row, m) => row.forEach((c) => c.forEach((_, k) => c[k] *= scale[m])));
      notes.push(
        `budget cost: output error × measured layer sensitivity; Δ bits/token with a layer's ` +
          `experts at ${widths[0]} bits (${measured.sensitivityTokens} tokens): ` +
          deltas.map((d) => d.toFixed(4)).join(", "),
      );
      if (!calib!.spans) {
        notes.push(
          `streamed pass: ${(measured.costMs / 1000).toFixed(1)} s quantizing experts and ` +
            `measuring output errors (summed over threads), ` +
            `${(measured.headMs / 1000).toFixed(1)} s scoring the streams`,
        );
      }
    } else {
      notes.push("budget cost: output error");
    }
  }
  const costs = { cost, bytes, notes };
  calib?.memo.set(memoKey, costs);
  return costs;
}

/** The data-free costs of every expert at every width (compiler/data_free.ts). */
async function dataFreeCosts(
  ir: ModelIR,
  layers: readonly MoeLayerIR[],
  plan: CompilePlan,
): Promise<number[][][]> {
  const { widths, groupSize, quantizer, dataFreeCost: kind } = plan;
  const refs = new Map(ir.tensors.map((t) => [keyString(t), t.ref]));
  const cost = layers.map((l) => l.experts.map(() => [] as number[]));
  const total = layers.reduce((s, l) => s + l.experts.length, 0);
  let done = 0;
  for (const [m, layer] of layers.entries()) {
    const normRef = refs.get(
      keyString({ stack: layer.stack, layer: layer.layer, expert: -1, role: "ffn_norm" }),
    );
    const g = kind !== "plain" && normRef ? await normRef.read() : null;
    const importance = kind === "router" || kind === "routing"
      ? expertImportance(kind, layer.spec, await layer.router.read(), g, plan.seed)
      : null;
    for (const expert of layer.experts) {
      const err = await sampledExpertError(
        expert,
        widths,
        groupSize,
        quantizer,
        kind === "plain" ? null : g,
      );
      cost[m][expert.index] = err.map((x) => x * (importance?.[expert.index] ?? 1));
      plan.onProgress("costs", ++done, total);
    }
  }
  return cost;
}

/** The streamed pass's costs for `plan`: from the calibration record, or measured now. */
async function streamCosts(
  ir: ModelIR,
  plan: CompilePlan,
  calib: CalibrationData,
  runner?: CalibrationRunner,
): Promise<StreamCosts> {
  const req = costRequest(plan, true)!;
  const key = streamCostsKey(req);
  let found = calib.memo.get(key) as StreamCosts | undefined;
  if (!found) {
    const pass = await calibrateStream(ir, calib.ids, {
      context: calib.context,
      costs: req,
      samples: calib.samples,
      sensitivityTokens: plan.sensitivityTokens,
      onProgress: (done, total) => plan.onProgress("costs", done, total),
      runner,
    });
    found = pass.memo.get(key) as StreamCosts;
    calib.memo.set(key, found);
  }
  return found;
}

/**
 * Output-error costs (and, for "layer", each layer's measured sensitivity) of an encoder–decoder
 * model's teacher-forced examples: the whole-model reference, one layer's experts swapped at a
 * time (the streamed pass covers decoder-only text).
 */
async function exampleCosts(
  ir: ModelIR,
  layers: readonly MoeLayerIR[],
  plan: CompilePlan,
  calib: CalibrationData,
  sensitivity: boolean,
): Promise<StreamCosts> {
  const { widths, groupSize, quantizer } = plan;
  const ref = sensitivity ? await prepareReference(ir) : null;
  const base = ref ? await calibrationBits(ref, calib) : 0;
  const output = layers.map((l) => l.experts.map(() => [] as number[]));
  const deltas: number[] = [];
  const total = layers.reduce((s, l) => s + l.experts.length, 0);
  let done = 0;
  for (const [m, layer] of layers.entries()) {
    const lowest: ExpertWeights[] = [];
    for (const expert of layer.experts) {
      const e = expert.index;
      const w = await readExpert(expert);
      const sample = calib.samples[m][e];
      const hessians = quantizer === "gptq" && sample ? expertHessians(w, sample) : undefined;
      for (const b of widths) {
        const q = quantizeExpert(w, b, groupSize, quantizer, hessians);
        if (ref && b === widths[0]) lowest[e] = q;
        output[m][e].push(outputError(w, q, sample).cost);
      }
      plan.onProgress("costs", ++done, total);
    }
    if (ref) {
      deltas[m] = await layerDelta(ref, calib.ids, calib.context, m, lowest, base, calib.spans);
    }
  }
  const sensitivityTokens = calib.spans!.reduce((n, s) => n + s.labels.length, 0);
  return { output, deltas: ref ? deltas : null, sensitivityTokens, costMs: 0, headMs: 0 };
}
