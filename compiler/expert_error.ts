/**
 * Measured quantization damage of one routed expert, the quantity the `budget` allocator trades
 * against bits.
 *
 * With calibration samples (inputs routed to the expert and their mixing weights w_t), the cost
 * is the expert's contribution to the residual-stream error over the calibration text:
 *
 *   cost = (seen / n) · Σ_t w_t² · ‖E_q(x_t) − E(x_t)‖²
 *
 * where E(x) is the expert's MLP (any activation: the reference's `mlp`) and E_q the same with the
 * dequantized matrices; it grows with how often the expert is routed (seen), how much weight the
 * router gives it, and how badly quantization distorts what it actually computes on real inputs.
 * Without calibration, the data-free proxy is the squared Frobenius error of its matrices.
 *
 * Layers are MoE layers: `moeLayer` is the index in `moeLayers(ir)` and in `ReferenceModel.moe`.
 *
 * @module
 */

import type { ReferenceModel, Span } from "./reference/mod.ts";
import { UsageError } from "../schemas/errors.ts";
import { calibrationBits, type ExpertSample } from "./calibration.ts";
import { squaredError } from "./quantize/mod.ts";
import {
  expertOutputs,
  type ExpertWeights,
  matrixNames,
  matrixOf,
  swapExpert,
} from "./expert_weights.ts";

/** Σ over the expert's matrices of ‖W − Ŵ‖²_F: the data-free cost. */
export function weightError(w: ExpertWeights, q: ExpertWeights): number {
  let err = 0;
  for (const name of matrixNames(w)) err += squaredError(matrixOf(w, name), matrixOf(q, name)).err;
  return err;
}

/** Output damage of a quantized expert on its calibration sample (see the module doc). */
export function outputError(
  w: ExpertWeights,
  q: ExpertWeights,
  sample: ExpertSample,
  reference?: Float64Array,
): { cost: number; relError: number } {
  const n = sample.n;
  if (n === 0) return { cost: 0, relError: 0 };
  const H = w.hidden;
  const y = reference ?? expertOutputs(w, sample.inputs, n);
  const yq = expertOutputs(q, sample.inputs, n);
  let cost = 0;
  let err = 0;
  let ref = 0;
  for (let t = 0; t < n; t++) {
    let e = 0;
    let r = 0;
    for (let i = t * H; i < (t + 1) * H; i++) {
      const d = yq[i] - y[i];
      e += d * d;
      r += y[i] * y[i];
    }
    const wt = sample.weights[t];
    cost += wt * wt * e;
    err += e;
    ref += r;
  }
  return { cost: (cost * sample.seen) / n, relError: ref > 0 ? Math.sqrt(err / ref) : 0 };
}

/** Ranks (0-based, ties get their average rank). */
function ranks(v: readonly number[]): number[] {
  const idx = v.map((_, i) => i).sort((a, b) => v[a] - v[b]);
  const r = new Array<number>(v.length);
  for (let i = 0; i < idx.length;) {
    let j = i;
    while (j + 1 < idx.length && v[idx[j + 1]] === v[idx[i]]) j++;
    for (let k = i; k <= j; k++) r[idx[k]] = (i + j) / 2;
    i = j + 1;
  }
  return r;
}

/** Spearman rank correlation (Pearson on average ranks); NaN when either side is constant. */
export function spearman(a: readonly number[], b: readonly number[]): number {
  if (a.length !== b.length) throw new UsageError(`spearman: ${a.length} vs ${b.length} values`);
  const ra = ranks(a), rb = ranks(b);
  const n = a.length;
  const ma = ra.reduce((s, x) => s + x, 0) / n, mb = rb.reduce((s, x) => s + x, 0) / n;
  let sab = 0, saa = 0, sbb = 0;
  for (let i = 0; i < n; i++) {
    sab += (ra[i] - ma) * (rb[i] - mb);
    saa += (ra[i] - ma) ** 2;
    sbb += (rb[i] - mb) ** 2;
  }
  return saa > 0 && sbb > 0 ? sab / Math.sqrt(saa * sbb) : NaN;
}

/**
 * Measured loss sensitivity of one MoE layer (its index in `model.moe`): all its experts are
 * replaced by `quantized[e]`
 * (e.g. their lowest-width versions), the float64 reference is evaluated on `ids` (on `spans`,
 * teacher-forced, for an encoder–decoder model), and the result is the increase in bits/token
 * over `base` (the float model's bits/token there).
 */
export async function layerDelta(
  model: ReferenceModel,
  ids: readonly number[],
  context: number,
  moeLayer: number,
  quantized: readonly ExpertWeights[],
  base: number,
  spans: readonly Span[] | null = null,
): Promise<number> {
  const restores = quantized.map((q, e) => swapExpert(model, moeLayer, e, q));
  try {
    return (await calibrationBits(model, { ids, context, spans })) - base;
  } finally {
    restores.forEach((r) => r());
  }
}

/**
 * Per-layer factors that turn output-error proxies into bits/token: scale_l = Δ_l / Σ_e proxy_le,
 * where Δ_l is {@link layerDelta} at the lowest width and the sum runs over the same experts at
 * the same width. A MoE layer whose Δ is not positive (noise on a short text) gets 0.1 × the
 * smallest positive scale of the others, so its experts still rank among themselves; a layer
 * whose proxies sum to 0 (nothing measurable) gets 0.
 */
export function layerScales(delta: readonly number[], proxySum: readonly number[]): number[] {
  const raw = delta.map((d, l) => (proxySum[l] > 0 && d > 0 ? d / proxySum[l] : NaN));
  const positive = raw.filter((x) => x > 0);
  const floor = positive.length ? Math.min(...positive) * 0.1 : 1;
  return raw.map((x, l) => (proxySum[l] > 0 ? (x > 0 ? x : floor) : 0));
}
