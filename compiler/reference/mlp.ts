/**
 * MLPs in float64 — routed experts, shared experts and dense feed-forward blocks alike: a list of
 * named matrices ([I, H] in, [H, I] out, torch Linear layout) with optional biases and an
 * activation. Implemented: SwiGLU, down(silu(gate·x + bg) ⊙ (up·x + bu)) + bd; gpt-oss's clamped
 * SwiGLU, g = min(gate, limit), u = clamp(up, ±limit), down((u + 1) · g · σ(alpha·g)); and ReLU
 * (Switch, T5), down(relu(up·x + bu)) + bd. The other described activations are not implemented
 * here yet.
 *
 * @module
 */

import {
  type ActivationSpec,
  type MatrixName,
  mlpMatrices,
  type MlpSpec,
} from "../../schemas/model.ts";
import { addBias, matmul, notImplemented, sigmoid, silu } from "./math.ts";
import type { LayerWeights } from "./weights.ts";

/** An MLP in float64. Callers may build their own (a dequantized expert, say). */
export interface ReferenceMlp {
  activation: ActivationSpec;
  /** Width of the hidden layer. */
  inter: number;
  /** The activation's matrices (schemas/model.ts mlpMatrices), row-major. */
  matrices: Partial<Record<MatrixName, Float64Array>>;
  /** Their biases, when the MLP has biases. */
  biases: Partial<Record<MatrixName, Float64Array>>;
}

/** Throws UnsupportedError for an activation the reference does not implement. */
export function checkActivation(activation: ActivationSpec): void {
  const implemented = ["swiglu", "swiglu_clamped", "relu"];
  if (!implemented.includes(activation.kind)) {
    throw notImplemented(`activation "${activation.kind}"`);
  }
}

/** Reads an MLP whose roles are `<owner>_<matrix>` (and `_bias`), of routed expert `expert`. */
export async function readMlp(
  spec: MlpSpec,
  owner: "expert" | "shared" | "dense",
  weights: LayerWeights,
  expert = -1,
): Promise<ReferenceMlp> {
  checkActivation(spec.activation);
  const m: ReferenceMlp = {
    activation: spec.activation,
    inter: spec.intermediate,
    matrices: {},
    biases: {},
  };
  for (const name of mlpMatrices(spec.activation)) {
    m.matrices[name] = await weights.read(`${owner}_${name}`, expert);
    if (spec.bias) m.biases[name] = await weights.read(`${owner}_${name}_bias`, expert);
  }
  return m;
}

/** The matrix `name` of `m`; a plain Error when a caller-built MLP lacks it. */
function matrix(m: ReferenceMlp, name: MatrixName): Float64Array {
  const w = m.matrices[name];
  if (!w) throw new Error(`MLP has no ${name} matrix`);
  return w;
}

/** y = x·Wᵀ (+ b) for n rows through the named matrix. */
function linear(
  y: Float64Array,
  x: Float64Array,
  m: ReferenceMlp,
  name: MatrixName,
  n: number,
  rows: number,
  cols: number,
): void {
  matmul(y, x, matrix(m, name), n, rows, cols);
  const b = m.biases[name];
  if (b) addBias(y, b, n);
}

/** The MLP over n rows: `x` [n, H] → `out` [n, H]. */
export function mlp(
  out: Float64Array,
  x: Float64Array,
  n: number,
  m: ReferenceMlp,
  H: number,
): void {
  checkActivation(m.activation);
  const I = m.inter;
  if (m.activation.kind === "relu") {
    const hidden = new Float64Array(n * I);
    linear(hidden, x, m, "up", n, I, H);
    for (let i = 0; i < n * I; i++) hidden[i] = Math.max(0, hidden[i]);
    linear(out, hidden, m, "down", n, H, I);
    return;
  }
  const gate = new Float64Array(n * I);
  const up = new Float64Array(n * I);
  linear(gate, x, m, "gate", n, I, H);
  linear(up, x, m, "up", n, I, H);
  const a = m.activation;
  if (a.kind === "swiglu_clamped") {
    for (let i = 0; i < n * I; i++) {
      const g = Math.min(gate[i], a.limit);
      const u = Math.min(a.limit, Math.max(-a.limit, up[i]));
      gate[i] = (u + 1) * g * sigmoid(a.alpha * g);
    }
  } else {
    for (let i = 0; i < n * I; i++) gate[i] = silu(gate[i]) * up[i];
  }
  linear(out, gate, m, "down", n, H, I);
}
