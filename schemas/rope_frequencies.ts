/**
 * RoPE inverse frequencies and the cos/sin multiplier of a RoPE description, as transformers
 * computes them (modeling_rope_utils), shared by the float64 reference and the WebGPU engine's
 * tables so the formula lives once:
 * - none: invFreq[i] = 1 / θ^(2i/d), multiplier 1;
 * - yarn: a ramp between interpolated (÷ factor) and original frequencies over the correction
 *   range [low, high] of dims for β_fast/β_slow rotations at the original context (rounded
 *   outwards when `truncate`), multiplier `attentionFactor`.
 * Other scalings are refused by their callers.
 *
 * @module
 */

import type { RopeSpec } from "./model.ts";

/** Frequencies [rotaryDim/2] and the multiplier of cos and sin. */
export interface RopeFrequencies {
  invFreq: Float64Array;
  /** cos and sin are multiplied by this (YaRN's attention factor; 1 otherwise). */
  mscale: number;
}

/** The dim at which a frequency turns `rotations` times over `positions` (YaRN). */
function correctionDim(rotations: number, dim: number, theta: number, positions: number): number {
  return (dim * Math.log(positions / (rotations * 2 * Math.PI))) / (2 * Math.log(theta));
}

/** RoPE frequencies of `rope` ("none" or "yarn" scaling); Error for another scaling. */
export function ropeFrequencies(rope: RopeSpec): RopeFrequencies {
  const d = rope.rotaryDim;
  const half = d / 2;
  const base = new Float64Array(half);
  for (let i = 0; i < half; i++) base[i] = 1 / Math.pow(rope.theta, (2 * i) / d);
  const s = rope.scaling;
  if (s.kind === "none") return { invFreq: base, mscale: 1 };
  if (s.kind !== "yarn") throw new Error(`RoPE scaling "${s.kind}" has no frequencies here`);
  let low = correctionDim(s.betaFast, d, rope.theta, s.originalMaxPositions);
  let high = correctionDim(s.betaSlow, d, rope.theta, s.originalMaxPositions);
  if (s.truncate) [low, high] = [Math.floor(low), Math.ceil(high)];
  low = Math.max(low, 0);
  high = Math.min(high, d - 1);
  if (low === high) high += 0.001;
  const invFreq = new Float64Array(half);
  for (let i = 0; i < half; i++) {
    const ramp = Math.min(1, Math.max(0, (i - low) / (high - low)));
    const extrapolation = 1 - ramp;
    invFreq[i] = (base[i] / s.factor) * (1 - extrapolation) + base[i] * extrapolation;
  }
  return { invFreq, mscale: s.attentionFactor };
}
