/**
 * Measured quantization damage of one routed expert, the quantity the `budget` allocator trades
 * against bits.
 *
 * With calibration samples (inputs routed to the expert and their mixing weights w_t), the cost
 * is the expert's contribution to the residual-stream error over the calibration text:
 *
 *   cost = (seen / n) · Σ_t w_t² · ‖E_q(x_t) − E(x_t)‖²
 *
 * where E(x) = down · (silu(gate · x) ⊙ (up · x)) and E_q uses the dequantized matrices; it grows
 * with how often the expert is routed (seen), how much weight the router gives it, and how badly
 * quantization distorts what it actually computes on real inputs. Without calibration, the
 * data-free proxy is the squared Frobenius error of the three matrices.
 *
 * @module
 */

import { squaredError } from "./quantize/mod.ts";
import { evaluateReference, matmul, type ReferenceModel, silu } from "./reference/mod.ts";
import { UsageError } from "../schemas/errors.ts";
import type { ExpertSample } from "./calibration.ts";

/** An expert's three matrices as f32: gate/up [I, H], down [H, I]. */
export interface ExpertWeights {
  gate: Float32Array;
  up: Float32Array;
  down: Float32Array;
  hidden: number;
  inter: number;
}

export { squaredError };

/** ‖W − Ŵ‖_F / ‖W‖_F over an expert's three matrices together. */
export function weightRelError(w: ExpertWeights, q: ExpertWeights): number {
  let err = 0;
  let ref = 0;
  for (const k of ["gate", "up", "down"] as const) {
    const s = squaredError(w[k], q[k]);
    err += s.err;
    ref += s.ref;
  }
  return ref > 0 ? Math.sqrt(err / ref) : 0;
}

/** Expert outputs [n, H] for n inputs [n, H], in float64. */
export function expertOutputs(w: ExpertWeights, inputs: Float32Array, n: number): Float64Array {
  const { hidden: H, inter: I } = w;
  const x = Float64Array.from(inputs.subarray(0, n * H));
  const g = new Float64Array(n * I);
  const u = new Float64Array(n * I);
  matmul(g, x, Float64Array.from(w.gate), n, I, H);
  matmul(u, x, Float64Array.from(w.up), n, I, H);
  for (let i = 0; i < g.length; i++) g[i] = silu(g[i]) * u[i];
  const y = new Float64Array(n * H);
  matmul(y, g, Float64Array.from(w.down), n, H, I);
  return y;
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

/** Expert `e` of MoE layer `layer` of a reference model, as f32 {@link ExpertWeights}. */
export function referenceExpert(model: ReferenceModel, layer: number, e: number): ExpertWeights {
  const f = model.layers[layer]?.ffn;
  if (!f || f.kind !== "moe" || !f.experts[e]) {
    throw new UsageError(`reference model has no expert ${e} in layer ${layer}`);
  }
  const m = f.experts[e];
  return {
    gate: Float32Array.from(m.gate),
    up: Float32Array.from(m.up),
    down: Float32Array.from(m.down),
    hidden: model.config.hiddenSize,
    inter: m.inter,
  };
}

/**
 * Replaces one expert's weights in a reference model (e.g. by its dequantized version) and
 * returns the function that puts the original weights back.
 */
export function swapExpert(
  model: ReferenceModel,
  layer: number,
  e: number,
  w: ExpertWeights,
): () => void {
  const f = model.layers[layer]?.ffn;
  if (!f || f.kind !== "moe" || !f.experts[e]) {
    throw new UsageError(`reference model has no expert ${e} in layer ${layer}`);
  }
  const old = f.experts[e];
  if (old.gate.length !== w.gate.length || old.down.length !== w.down.length) {
    throw new UsageError(`swapExpert: layer ${layer} expert ${e} has another shape`);
  }
  f.experts[e] = {
    gate: Float64Array.from(w.gate),
    up: Float64Array.from(w.up),
    down: Float64Array.from(w.down),
    inter: old.inter,
  };
  return () => {
    f.experts[e] = old;
  };
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
 * Measured loss sensitivity of one MoE layer: all its experts are replaced by `quantized[e]`
 * (e.g. their lowest-width versions), the float64 reference is evaluated on `ids`, and the
 * result is the increase in bits/token over `base` (the float model's bits/token on `ids`).
 */
export async function layerDelta(
  model: ReferenceModel,
  ids: readonly number[],
  context: number,
  layer: number,
  quantized: readonly ExpertWeights[],
  base: number,
): Promise<number> {
  const restores = quantized.map((q, e) => swapExpert(model, layer, e, q));
  try {
    return (await evaluateReference(model, ids, { context })).bitsPerToken - base;
  } finally {
    restores.forEach((r) => r());
  }
}

/**
 * Per-layer factors that turn output-error proxies into bits/token: scale_l = Δ_l / Σ_e proxy_le,
 * where Δ_l is {@link layerDelta} at the lowest width and the sum runs over the same experts at
 * the same width. A MoE layer whose Δ is not positive (noise on a short text) gets 0.1 × the
 * smallest positive scale of the others, so its experts still rank among themselves; dense
 * layers (no experts, `proxySum` 0 and Δ 0) get 0.
 */
export function layerScales(delta: readonly number[], proxySum: readonly number[]): number[] {
  const raw = delta.map((d, l) => (proxySum[l] > 0 && d > 0 ? d / proxySum[l] : NaN));
  const positive = raw.filter((x) => x > 0);
  const floor = positive.length ? Math.min(...positive) * 0.1 : 1;
  return raw.map((x, l) => (proxySum[l] > 0 ? (x > 0 ? x : floor) : 0));
}
