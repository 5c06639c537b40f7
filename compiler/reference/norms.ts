/**
 * Normalisations in float64: RMSNorm (also the T5 norm). LayerNorm is a described variant the
 * reference does not implement yet.
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

/** Throws UnsupportedError for a norm the reference does not implement. */
export function checkNorm(spec: NormSpec): void {
  if (spec.kind !== "rms") throw notImplemented(`norm kind "${spec.kind}"`);
  if (spec.bias) throw notImplemented("a norm with a bias");
}

/** Reads the norm with `role` of a layer. */
export async function readNorm(
  spec: NormSpec,
  weights: LayerWeights,
  role: string,
): Promise<ReferenceNorm> {
  checkNorm(spec);
  return { spec, weight: await weights.read(role) };
}

/** out[t] = norm(x[t]) for n rows of the norm's width. */
export function normRows(out: Float64Array, x: Float64Array, n: number, norm: ReferenceNorm): void {
  const w = norm.weight.length;
  for (let t = 0; t < n; t++) {
    rmsNorm(
      out.subarray(t * w, (t + 1) * w),
      x.subarray(t * w, (t + 1) * w),
      norm.weight,
      norm.spec.eps,
    );
  }
}
