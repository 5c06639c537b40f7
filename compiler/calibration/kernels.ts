/**
 * Float32 kernels of the streamed calibration: an expert's MLP over a batch of rows, and a block
 * of the head's log-sum-exp, both on the SIMD product of simd.ts. The activations are the float64
 * reference's formulas (compiler/reference/mlp.ts), evaluated per value in float64 and stored as
 * float32.
 *
 * @module
 */

import type { ActivationSpec, MatrixName } from "../../schemas/model.ts";
import { mlpMatrices } from "../../schemas/model.ts";
import { notImplemented } from "../reference/math.ts";
import { matmulF32 } from "./simd.ts";

export { matmulF32 } from "./simd.ts";

/** An MLP's float32 weights: [I, H] input-side matrices, [H, I] output matrix, optional biases. */
export interface MlpF32 {
  activation: ActivationSpec;
  hidden: number;
  inter: number;
  matrices: Partial<Record<MatrixName, Float32Array>>;
  biases: Partial<Record<MatrixName, Float32Array>>;
}

/** y [n, cols] += bias per row (nothing without a bias). */
export function addBias(y: Float32Array, bias: Float32Array | undefined, n: number): void {
  if (!bias) return;
  const cols = bias.length;
  for (let t = 0; t < n; t++) {
    for (let c = 0; c < cols; c++) y[t * cols + c] += bias[c];
  }
}

/** Matrix `name` of `w`, which must be there. */
function matrix(w: MlpF32, name: MatrixName): Float32Array {
  const m = w.matrices[name];
  if (!m) throw notImplemented(`an expert without its ${name} matrix`);
  return m;
}

/**
 * The activation (reference formulas) applied to the input-side products, in place: `up` for
 * relu, else `gate` (which it returns) from `gate` and `up`.
 */
export function activateInPlace(
  act: ActivationSpec,
  up: Float32Array,
  gate: Float32Array | null,
): Float32Array {
  if (act.kind === "relu") {
    for (let i = 0; i < up.length; i++) up[i] = Math.max(0, up[i]);
    return up;
  }
  if (act.kind !== "swiglu" && act.kind !== "swiglu_clamped") {
    throw notImplemented(`activation "${act.kind}"`);
  }
  if (!gate) throw notImplemented("an expert without its gate matrix");
  if (act.kind === "swiglu_clamped") {
    const { limit, alpha } = act;
    for (let i = 0; i < gate.length; i++) {
      const g = Math.min(gate[i], limit);
      const u = Math.min(limit, Math.max(-limit, up[i]));
      gate[i] = (u + 1) * g / (1 + Math.exp(-alpha * g));
    }
  } else {
    for (let i = 0; i < gate.length; i++) {
      const g = gate[i];
      gate[i] = (g / (1 + Math.exp(-g))) * up[i];
    }
  }
  return gate;
}

/**
 * The activation's output a [n, I] for inputs x [n, H]: the input-side matrices' products, then
 * the activation (reference formulas). {@link mlpF32} multiplies it by the output matrix.
 */
export function activationF32(w: MlpF32, x: Float32Array, n: number): Float32Array {
  const { hidden: H, inter: I, activation: act } = w;
  const up = new Float32Array(n * I);
  matmulF32(up, x, matrix(w, "up"), n, I, H);
  addBias(up, w.biases.up, n);
  if (act.kind === "relu") return activateInPlace(act, up, null);
  if (act.kind !== "swiglu" && act.kind !== "swiglu_clamped") {
    throw notImplemented(`activation "${act.kind}"`);
  }
  const gate = new Float32Array(n * I);
  matmulF32(gate, x, matrix(w, "gate"), n, I, H);
  addBias(gate, w.biases.gate, n);
  return activateInPlace(act, up, gate);
}

/** The MLP over n rows: x [n, H] → y [n, H], float32 (see the module doc). */
export function mlpF32(w: MlpF32, x: Float32Array, n: number): Float32Array {
  const names = mlpMatrices(w.activation);
  const out = names[names.length - 1];
  const a = activationF32(w, x, n);
  const y = new Float32Array(n * w.hidden);
  matmulF32(y, a, matrix(w, out), n, w.hidden, w.inter);
  addBias(y, w.biases[out], n);
  return y;
}

/** One vocabulary block's share of the head's log-sum-exp, per scored row. */
export interface HeadBlock {
  /** Largest logit of each row in the block. */
  max: Float64Array;
  /** Σ exp(logit − max) over the block. */
  sum: Float64Array;
  /** The target's logit where the target is in the block, else NaN. */
  target: Float64Array;
}

/**
 * Logits of rows x [k, H] against head rows [a, a + n) (`rows` [n, H], `bias` its slice or
 * null), reduced to {@link HeadBlock}: `targets[i]` is row i's target token id.
 */
export function headBlockF32(
  x: Float32Array,
  k: number,
  rows: Float32Array,
  n: number,
  a: number,
  bias: Float32Array | null,
  targets: Int32Array,
): HeadBlock {
  const H = rows.length / n;
  const logits = new Float32Array(k * n);
  matmulF32(logits, x, rows, k, n, H);
  return reduceHeadLogits(logits, n, k, n, a, bias, targets);
}

/**
 * {@link headBlockF32}'s reduction of the logits of its k rows, row i at logits[i · stride, +n)
 * (the bias is added in place).
 */
export function reduceHeadLogits(
  logits: Float32Array,
  stride: number,
  k: number,
  n: number,
  a: number,
  bias: Float32Array | null,
  targets: Int32Array,
): HeadBlock {
  const max = new Float64Array(k);
  const sum = new Float64Array(k);
  const target = new Float64Array(k).fill(NaN);
  for (let i = 0; i < k; i++) {
    const row = logits.subarray(i * stride, i * stride + n);
    if (bias) { for (let j = 0; j < n; j++) row[j] += bias[j]; }
    let m = -Infinity;
    for (let j = 0; j < n; j++) if (row[j] > m) m = row[j];
    let s = 0;
    for (let j = 0; j < n; j++) s += Math.exp(row[j] - m);
    max[i] = m;
    sum[i] = s;
    const tg = targets[i] - a;
    if (tg >= 0 && tg < n) target[i] = row[tg];
  }
  return { max, sum, target };
}
