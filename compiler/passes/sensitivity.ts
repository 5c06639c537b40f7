/**
 * Expert-sensitivity passes: pure functions from weights (or routing counts) to per-expert
 * scores. All arithmetic is float64.
 *
 * - {@link routerNorm}: Λ_s = ‖w_s(final)‖₂ − ‖w_s(init)‖₂ per router row (arXiv 2604.06515);
 *   without an init checkpoint, ‖w_s(final)‖₂ and `usedInit: false`.
 * - {@link maxVariance}: max over the rows (neurons) of an expert's FIRST matrix [I, H] (the
 *   input side: gate for SwiGLU/GeGLU, up for two-matrix ReLU experts; `mlpMatrices` order) of the
 *   variance of that row over the input dimension.
 * - {@link routingFrequency}: share of the routing assignments each expert received.
 * - {@link weightStats}: range and kurtosis of an expert's weights (MoQE-style extra columns).
 *
 * Tables are `[moeLayer][expert]` (see `scores.ts`).
 *
 * @module
 */

import { InputError } from "../../schemas/errors.ts";
import type { ScoreTable } from "./scores.ts";

/** Result of {@link routerNorm}. */
export interface RouterNormResult {
  /** Λ[layer][expert]; smallest = most sensitive. */
  scores: ScoreTable;
  /** False when no init routers were given and the scores are the plain final norms. */
  usedInit: boolean;
}

/** Euclidean norm of row `r` of a row-major matrix with `cols` columns, in float64. */
function rowNorm(m: Float32Array, r: number, cols: number): number {
  let s = 0;
  for (let c = r * cols; c < (r + 1) * cols; c++) s += m[c] * m[c];
  return Math.sqrt(s);
}

function checkFinite(a: Float32Array, what: string): void {
  for (let i = 0; i < a.length; i++) {
    if (!Number.isFinite(a[i])) throw new InputError(`${what}: non-finite value at index ${i}`);
  }
}

/**
 * Router-norm change per expert. `finalRouters[m]` is MoE layer m's router [E, H] row-major;
 * `initRouters`, when given, must have the same shapes.
 */
export function routerNorm(
  finalRouters: readonly Float32Array[],
  hiddenSize: number,
  initRouters?: readonly Float32Array[],
): RouterNormResult {
  if (!Number.isInteger(hiddenSize) || hiddenSize <= 0) {
    throw new InputError(`router: hidden size ${hiddenSize} is not a positive integer`);
  }
  if (initRouters && initRouters.length !== finalRouters.length) {
    throw new InputError(
      `init router: ${initRouters.length} MoE layers, final checkpoint has ${finalRouters.length}`,
    );
  }
  const scores = finalRouters.map((fin, l) => {
    const init = initRouters?.[l] ?? null;
    if (fin.length % hiddenSize !== 0) {
      throw new InputError(
        `router layer ${l}: ${fin.length} values is not a multiple of hidden size ${hiddenSize}`,
      );
    }
    checkFinite(fin, `router layer ${l}`);
    if (initRouters) {
      if (init === null || init.length !== fin.length) {
        throw new InputError(
          `init router layer ${l}: ${init?.length ?? 0} values, final has ${fin.length}`,
        );
      }
      checkFinite(init, `init router layer ${l}`);
    }
    const experts = fin.length / hiddenSize;
    return Array.from({ length: experts }, (_, s) => {
      const f = rowNorm(fin, s, hiddenSize);
      return init ? f - rowNorm(init, s, hiddenSize) : f;
    });
  });
  return { scores, usedInit: initRouters !== undefined };
}

/**
 * MaxVar of one expert: max over the `rows` neurons of its first matrix w1 [rows, cols] of the
 * population variance (divide by `cols`) of that row's weights. Two-pass, float64.
 */
export function maxVariance(w1: Float32Array, rows: number, cols: number, name = "w1"): number {
  if (!Number.isInteger(rows) || !Number.isInteger(cols) || rows <= 0 || cols <= 0) {
    throw new InputError(`${name}: bad shape [${rows}, ${cols}]`);
  }
  if (w1.length !== rows * cols) {
    throw new InputError(
      `${name}: ${w1.length} values, shape [${rows}, ${cols}] needs ${rows * cols}`,
    );
  }
  let best = 0;
  for (let r = 0; r < rows; r++) {
    const base = r * cols;
    let mean = 0;
    for (let c = 0; c < cols; c++) mean += w1[base + c];
    mean /= cols;
    let v = 0;
    for (let c = 0; c < cols; c++) {
      const d = w1[base + c] - mean;
      v += d * d;
    }
    v /= cols;
    if (!Number.isFinite(v)) throw new InputError(`${name}: non-finite value in row ${r}`);
    if (v > best) best = v;
  }
  return best;
}

/**
 * Routing frequency: `counts[m][e]` (how many token→expert assignments went to expert e of MoE
 * layer m in a calibration forward; with top-k each token counts k times) normalised per layer so
 * each non-empty row sums to 1. Counts must be finite and non-negative; a MoE layer with no
 * assignments at all is an error (the calibration run is broken).
 */
export function routingFrequency(counts: readonly (readonly number[])[]): ScoreTable {
  return counts.map((row, l) => {
    let total = 0;
    for (let e = 0; e < row.length; e++) {
      const c = row[e];
      if (typeof c !== "number" || !Number.isFinite(c) || c < 0) {
        throw new InputError(`routing counts[${l}][${e}]: ${c} is not a finite count >= 0`);
      }
      total += c;
    }
    if (row.length > 0 && total === 0) {
      throw new InputError(`routing counts[${l}]: no tokens were routed in this layer`);
    }
    return row.map((c) => c / total);
  });
}

/** Distribution statistics of an expert's weights. */
export interface WeightStats {
  min: number;
  max: number;
  /** max − min. */
  range: number;
  mean: number;
  /** Population standard deviation. */
  std: number;
  /** Pearson kurtosis m4 / m2² (3 for a Gaussian; heavy tails > 3); 0 for constant weights. */
  kurtosis: number;
  /** Number of values. */
  count: number;
}

/** Statistics over all values of the given arrays taken together (e.g. all of an expert's matrices). */
export function weightStats(...arrays: Float32Array[]): WeightStats {
  let n = 0, sum = 0, min = Infinity, max = -Infinity;
  for (const a of arrays) {
    for (let i = 0; i < a.length; i++) {
      const x = a[i];
      if (!Number.isFinite(x)) throw new InputError(`weights: non-finite value at index ${i}`);
      sum += x;
      if (x < min) min = x;
      if (x > max) max = x;
    }
    n += a.length;
  }
  if (n === 0) throw new InputError("weights: no values");
  const mean = sum / n;
  let m2 = 0, m4 = 0;
  for (const a of arrays) {
    for (let i = 0; i < a.length; i++) {
      const d2 = (a[i] - mean) * (a[i] - mean);
      m2 += d2;
      m4 += d2 * d2;
    }
  }
  m2 /= n;
  m4 /= n;
  return {
    min,
    max,
    range: max - min,
    mean,
    std: Math.sqrt(m2),
    kurtosis: m2 > 0 ? m4 / (m2 * m2) : 0,
    count: n,
  };
}
