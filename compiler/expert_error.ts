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

import { matmul, silu } from "./reference/mod.ts";
import type { ExpertSample } from "./calibration.ts";

/** An expert's three matrices as f32: gate/up [I, H], down [H, I]. */
export interface ExpertWeights {
  gate: Float32Array;
  up: Float32Array;
  down: Float32Array;
  hidden: number;
  inter: number;
}

/** Squared Frobenius norm of a − b (and of a), in float64. */
export function squaredError(a: Float32Array, b: Float32Array): { err: number; ref: number } {
  let err = 0;
  let ref = 0;
  for (let i = 0; i < a.length; i++) {
    const d = a[i] - b[i];
    err += d * d;
    ref += a[i] * a[i];
  }
  return { err, ref };
}

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
