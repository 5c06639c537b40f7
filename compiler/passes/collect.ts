/**
 * Runs the weight-based sensitivity passes over a whole model IR: router-norm change (with the
 * init checkpoint when given), MaxVar of each expert's gate_proj, and the range and kurtosis of
 * each expert's three matrices. Reads every router and expert tensor once; a compiler that
 * already streams the experts for quantization can call the per-expert functions in
 * `sensitivity.ts` itself instead.
 *
 * @module
 */

import { InputError } from "../../schemas/errors.ts";
import type { ModelIR } from "../ir_legacy.ts";
import type { ScoreTable } from "./scores.ts";
import { maxVariance, routerNorm, weightStats } from "./sensitivity.ts";

/** The weight-derived score tables of a model, [layer][expert] (dense layers: empty rows). */
export interface ExpertScoreTables {
  /** Router-norm change Λ (or the final norm when `usedInit` is false). */
  lambda: ScoreTable;
  /** True when Λ used the init checkpoint's routers. */
  usedInit: boolean;
  /** MaxVar of gate_proj (w1). */
  maxVar: ScoreTable;
  /** max − min over the expert's gate, up and down weights. */
  range: ScoreTable;
  /** Pearson kurtosis over the expert's gate, up and down weights. */
  kurtosis: ScoreTable;
}

/** Computes {@link ExpertScoreTables} for `ir`, using `init`'s routers for Λ when given. */
export async function expertScores(ir: ModelIR, init?: ModelIR): Promise<ExpertScoreTables> {
  if (init && init.layers.length !== ir.layers.length) {
    throw new InputError(
      `init checkpoint has ${init.layers.length} layers, model has ${ir.layers.length}`,
      init.source,
    );
  }
  const finals: (Float32Array | null)[] = [];
  const inits: (Float32Array | null)[] = [];
  const maxVar: ScoreTable = [], range: ScoreTable = [], kurtosis: ScoreTable = [];
  for (const layer of ir.layers) {
    const ffn = layer.ffn;
    const initFfn = init?.layers[layer.index].ffn;
    if (init && (initFfn?.kind === "moe") !== (ffn.kind === "moe")) {
      throw new InputError(
        `layer ${layer.index} is ${ffn.kind} in the model but not in the init checkpoint`,
        init.source,
      );
    }
    if (ffn.kind !== "moe") {
      finals.push(null);
      inits.push(null);
      maxVar.push([]), range.push([]), kurtosis.push([]);
      continue;
    }
    finals.push(await ffn.router.read());
    if (initFfn?.kind === "moe") inits.push(await initFfn.router.read());
    const mv: number[] = [], rg: number[] = [], ku: number[] = [];
    for (const e of ffn.experts) {
      const [gate, up, down] = await Promise.all([e.gate.read(), e.up.read(), e.down.read()]);
      const [rows, cols] = e.gate.shape;
      mv.push(maxVariance(gate, rows, cols, e.gate.name));
      const st = weightStats(gate, up, down);
      rg.push(st.range);
      ku.push(st.kurtosis);
    }
    maxVar.push(mv), range.push(rg), kurtosis.push(ku);
  }
  const { scores, usedInit } = routerNorm(finals, ir.config.hiddenSize, init ? inits : undefined);
  return { lambda: scores, usedInit, maxVar, range, kurtosis };
}
