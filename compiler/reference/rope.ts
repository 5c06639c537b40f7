/**
 * Rotary position embedding in float64: RoPE over the first `rotaryDim` dims of each head, pairs
 * split in halves (transformers' rotate_half) or interleaved (2i, 2i + 1: ERNIE, DeepSeek),
 * unscaled or YaRN-scaled (frequencies and the cos/sin multiplier from
 * schemas/rope_frequencies.ts). The other scaled variants are described but not implemented here
 * yet.
 *
 * @module
 */

import type { PositionSpec } from "../../schemas/model.ts";
import { ropeFrequencies } from "../../schemas/rope_frequencies.ts";
import { notImplemented } from "./math.ts";

/** A RoPE ready to apply: rotated dims per head and their inverse frequencies. */
export interface ReferenceRope {
  rotaryDim: number;
  /** [rotaryDim/2]: 1 / θ^(2i/rotaryDim), or its YaRN scaling. */
  invFreq: Float64Array;
  /** Multiplier of cos and sin (YaRN's attention factor; 1 otherwise). */
  mscale: number;
  /** Which dims pair up: (i, i + rotaryDim/2) or (2i, 2i + 1). */
  pairing: "half" | "interleaved";
}

/** RoPE inverse frequencies over `rotaryDim` dims: 1 / θ^(2i/rotaryDim), i < rotaryDim/2. */
export function ropeInvFreq(rotaryDim: number, theta: number): Float64Array {
  const inv = new Float64Array(rotaryDim / 2);
  for (let i = 0; i < rotaryDim / 2; i++) inv[i] = 1 / Math.pow(theta, (2 * i) / rotaryDim);
  return inv;
}

/** The RoPE of a position spec; UnsupportedError for what the reference does not implement. */
export function prepareRope(position: PositionSpec, headDim: number): ReferenceRope {
  if (position.kind !== "rope") throw notImplemented(`position kind "${position.kind}"`);
  if (position.scaling.kind !== "none" && position.scaling.kind !== "yarn") {
    throw notImplemented(`RoPE scaling "${position.scaling.kind}"`);
  }
  const d = position.rotaryDim;
  if (!(Number.isInteger(d) && d > 0 && d % 2 === 0 && d <= headDim)) {
    throw notImplemented(`RoPE over ${d} of ${headDim} dims`);
  }
  return { rotaryDim: d, ...ropeFrequencies(position), pairing: position.pairing };
}

/**
 * mscale · cos/sin of position · invFreq for n positions from `start`: [n, rotaryDim/2] each.
 */
export function ropeTables(invFreq: Float64Array, start: number, n: number, mscale = 1) {
  const half = invFreq.length;
  const cos = new Float64Array(n * half);
  const sin = new Float64Array(n * half);
  for (let t = 0; t < n; t++) {
    for (let i = 0; i < half; i++) {
      const angle = (start + t) * invFreq[i];
      cos[t * half + i] = Math.cos(angle) * mscale;
      sin[t * half + i] = Math.sin(angle) * mscale;
    }
  }
  return { cos, sin };
}

/**
 * RoPE in place on `nHeads` consecutive heads of size hd, rotating each head's first `rotaryDim`
 * dims: for i < rotaryDim/2 the pair (x_i, x_{i+rotaryDim/2}) ("half") or (x_{2i}, x_{2i+1})
 * ("interleaved") turns by position · invFreq[i], whose cos/sin are given; dims past rotaryDim
 * pass through.
 */
export function rope(
  vec: Float64Array,
  nHeads: number,
  hd: number,
  cos: Float64Array,
  sin: Float64Array,
  rotaryDim = hd,
  pairing: "half" | "interleaved" = "half",
): void {
  const half = rotaryDim / 2;
  for (let h = 0; h < nHeads; h++) {
    const o = h * hd;
    for (let i = 0; i < half; i++) {
      const [a, b] = pairing === "half" ? [o + i, o + half + i] : [o + 2 * i, o + 2 * i + 1];
      const x1 = vec[a];
      const x2 = vec[b];
      vec[a] = x1 * cos[i] - x2 * sin[i];
      vec[b] = x2 * cos[i] + x1 * sin[i];
    }
  }
}
