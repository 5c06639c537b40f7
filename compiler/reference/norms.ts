/**
 * Normalisations in float64: RMSNorm (also the T5 norm) and LayerNorm (with or without a bias;
 * biased variance, eps under the root, as torch.nn.LayerNorm).
 *
 * @module
 */

import type { NormSpec } from "../../schemas/model.ts";
import { notImplemented } from "./math.ts";
import type { LayerWeights } from "./weights.ts";

/** A norm with its weight (and bias, for LayerNorm). */
export interface ReferenceNorm {
  spec: NormSpec;
  weight: Float64Array;
  /** LayerNorm's bias, when it has one. */
  bias: Float64Array | null;
}

/** out = x · w / √(mean(x²) + eps), over one vector (out may alias x). */
export function rmsNorm(
  out: Float64Array,
  x: Float64Array,
  w: Float64Array,
  eps: number,
): void {
  const n = x.length;
  let ss = 0;
  for (let i = 0; i < n; i++) ss += x[i] * x[i];
  const inv = 1 / Math.sqrt(ss / n + eps);
  for (let i = 0; i < n; i++) out[i] = x[i] * inv * w[i];
}

/** out = (x − mean(x)) · w / √(var(x) + eps) (+ b), over one vector (out may alias x). */
export function layerNorm(
  out: Float64Array,
  x: Float64Array,
  w: Float64Array,
  b: Float64Array | null,
  eps: number,
): void {
  const n = x.length;
  let mean = 0;
  for (let i = 0; i < n; i++) mean += x[i];
  mean /= n;
  let ss = 0;
  for (let i = 0; i < n; i++) ss += (x[i] - mean) * (x[i] - mean);
  const inv = 1 / Math.sqrt(ss / n + eps);
  for (let i = 0; i < n; i++) out[i] = (x[i] - mean) * inv * w[i] + (b ? b[i] : 0);
}

/** Throws UnsupportedError for a norm the reference does not implement. */
export function checkNorm(spec: NormSpec): void {
  if (spec.kind === "rms" && spec.bias) throw notImplemented("an RMSNorm with a bias");
}

/** Reads the norm with `role` of a layer. */
export async function readNorm(
  spec: NormSpec,
  weights: LayerWeights,
  role: string,
): Promise<ReferenceNorm> {
  checkNorm(spec);
  const weight = await weights.read(role);
  return { spec, weight, bias: spec.bias ? await weights.read(`${role}_bias`) : null };
}

/** out[t] = norm(x[t]) for n rows of the norm's width. */
export function normRows(out: Float64Array, x: Float64Array, n: number, norm: ReferenceNorm): void {
  const w = norm.weight.length;
  for (let t = 0; t < n; t++) {
    const o = out.subarray(t * w, (t + 1) * w);
    const xt = x.subarray(t * w, (t + 1) * w);
    if (norm.spec.kind === "layer") layerNorm(o, xt, norm.weight, norm.bias, norm.spec.eps);
    else rmsNorm(o, xt, norm.weight, norm.spec.eps);
  }
}
