/**
 * One routed expert's weights in memory, for the stages that quantize experts outside the emit
 * (the `budget` costs, GPTQ Hessians, the study's probe): read from the IR or the float64
 * reference, quantized at a width, and swapped into the reference.
 *
 * An expert is a list of named matrices fixed by its activation (`mlpMatrices`: the input-side
 * matrices, then the output matrix last), so nothing here names gate, up or down: a two-matrix
 * ReLU expert and a three-matrix SwiGLU one go through the same code. Input-side matrices are
 * [I, H] and read the routed hidden state x; the output matrix is [H, I] and reads the
 * activation's output a.
 *
 * @module
 */

import type { ActivationSpec, MatrixName } from "../schemas/model.ts";
import { mlpMatrices } from "../schemas/model.ts";
import { matrixShape } from "../schemas/tensors.ts";
import { UsageError } from "../schemas/errors.ts";
import {
  dequantize,
  type ExpertWidth,
  MXFP4_GROUP,
  MXFP4_WIDTH,
  packedByteSizes,
  type QuantLayout,
} from "../schemas/packing.ts";
import { quantizeMxfp4 } from "./quantize/mxfp4.ts";
import type { ExpertIR } from "./ir.ts";
import { HessianAccumulator, quantizeMatrix, type QuantMethod } from "./quantize/mod.ts";
import { mlp, type ReferenceMlp, type ReferenceModel } from "./reference/mod.ts";
import type { ExpertSample } from "./calibration.ts";

/** An expert's matrices (f32, row-major) by name, with their biases when the MLP has them. */
export interface ExpertWeights {
  activation: ActivationSpec;
  /** Model width H. */
  hidden: number;
  /** Expert width I. */
  inter: number;
  matrices: Partial<Record<MatrixName, Float32Array>>;
  biases: Partial<Record<MatrixName, Float32Array>>;
}

/** GPTQ Hessians of an expert: of its input-side matrices ([H, H]) and output matrix ([I, I]). */
export interface ExpertHessians {
  input: Float64Array;
  output: Float64Array;
}

/** The expert's matrix names in activation order; the last is the output matrix. */
export function matrixNames(w: { activation: ActivationSpec }): readonly MatrixName[] {
  return mlpMatrices(w.activation);
}

/** The output matrix's name (the one that reads the activation's output). */
export function outputMatrix(activation: ActivationSpec): MatrixName {
  const names = mlpMatrices(activation);
  return names[names.length - 1];
}

/** Matrix `name` of `w`, which must be there. */
export function matrixOf(w: ExpertWeights, name: MatrixName): Float32Array {
  const m = w.matrices[name];
  if (!m) throw new UsageError(`expert has no ${name} matrix (activation ${w.activation.kind})`);
  return m;
}

/** Reads an expert of the IR: [I, H] is the shape of its first matrix. */
export async function readExpert(e: ExpertIR): Promise<ExpertWeights> {
  const [inter, hidden] = e.matrices[0].weight.shape;
  const w: ExpertWeights = { activation: e.activation, hidden, inter, matrices: {}, biases: {} };
  for (const m of e.matrices) {
    w.matrices[m.name] = await m.weight.read();
    if (m.bias) w.biases[m.name] = await m.bias.read();
  }
  return w;
}

/** Stored bytes of an expert whose matrices have `shapes`, quantized at `bits` (or MXFP4). */
export function expertBytes(
  shapes: readonly (readonly number[])[],
  bits: ExpertWidth,
  groupSize: number,
): number {
  let total = 0;
  for (const [rows, cols] of shapes) {
    const layout: QuantLayout = bits === MXFP4_WIDTH
      ? { rows, cols, bits: 4, groupSize: MXFP4_GROUP, scaleType: "e8m0" }
      : { rows, cols, bits, groupSize, scaleType: "f16" };
    total += packedByteSizes(layout).total;
  }
  return total;
}

/**
 * The expert with every matrix quantized at `bits` and dequantized again (biases unchanged).
 * GPTQ needs `hessians`. MXFP4 ({@link MXFP4_WIDTH}) ignores group size and method; requantizing
 * a released MXFP4 expert's decoded values gives them back exactly (zero error).
 */
export function quantizeExpert(
  w: ExpertWeights,
  bits: ExpertWidth,
  groupSize: number,
  method: QuantMethod,
  hessians?: ExpertHessians,
): ExpertWeights {
  const out = outputMatrix(w.activation);
  const q: ExpertWeights = { ...w, matrices: {} };
  for (const name of matrixNames(w)) {
    const [rows, cols] = matrixShape(name, w.inter, w.hidden);
    if (bits === MXFP4_WIDTH) {
      q.matrices[name] = dequantize(quantizeMxfp4(matrixOf(w, name), rows, cols, name));
      continue;
    }
    const hessian = name === out ? hessians?.output : hessians?.input;
    const t = quantizeMatrix(matrixOf(w, name), rows, cols, { bits, groupSize, method, hessian });
    q.matrices[name] = dequantize(t);
  }
  return q;
}

/** The expert as the float64 reference holds it. */
export function toReferenceMlp(w: ExpertWeights): ReferenceMlp {
  const m: ReferenceMlp = { activation: w.activation, inter: w.inter, matrices: {}, biases: {} };
  for (const name of matrixNames(w)) {
    m.matrices[name] = Float64Array.from(matrixOf(w, name));
    const b = w.biases[name];
    if (b) m.biases[name] = Float64Array.from(b);
  }
  return m;
}

/** Expert outputs y [n, H] for inputs x [n, H], in float64 (the reference's `mlp`). */
export function expertOutputs(w: ExpertWeights, inputs: Float32Array, n: number): Float64Array {
  const x = Float64Array.from(inputs.subarray(0, n * w.hidden));
  const y = new Float64Array(n * w.hidden);
  mlp(y, x, n, toReferenceMlp(w), w.hidden);
  return y;
}

/** Intermediate units per `mlp` call of {@link activationOutputs}. */
const ACTIVATION_BLOCK = 256;

/**
 * The activation's output a [n, I] for inputs x [n, H] (what the output matrix multiplies), by
 * the reference's own `mlp`, so every activation the reference knows works here with no second
 * implementation of it. Unit i of a depends only on row i of each input-side matrix, so `mlp`
 * runs on blocks of B ≤ H units: the input-side rows of the block, and as output matrix [H, B]
 * the first B rows of the identity with no bias, which returns the block's a values exactly (each
 * sum is one value plus zeros). Cost: 1.5× the two input matmuls.
 */
export function activationOutputs(w: ExpertWeights, x: Float64Array, n: number): Float64Array {
  const { hidden: H, inter: I } = w;
  const names = matrixNames(w);
  const out = outputMatrix(w.activation);
  const a = new Float64Array(n * I);
  const y = new Float64Array(n * H);
  const B = Math.min(H, I, ACTIVATION_BLOCK);
  const identityRows = (units: number) => {
    const m = new Float64Array(H * units);
    for (let r = 0; r < units; r++) m[r * units + r] = 1;
    return m;
  };
  const full = identityRows(B);
  for (let start = 0; start < I; start += B) {
    const units = Math.min(B, I - start);
    const select = units === B ? full : identityRows(units);
    const block: ReferenceMlp = {
      activation: w.activation,
      inter: units,
      matrices: { [out]: select },
      biases: {},
    };
    for (const name of names) {
      if (name === out) continue;
      block.matrices[name] = Float64Array.from(
        matrixOf(w, name).subarray(start * H, (start + units) * H),
      );
      const b = w.biases[name];
      if (b) block.biases[name] = Float64Array.from(b.subarray(start, start + units));
    }
    mlp(y, x, n, block, H);
    for (let t = 0; t < n; t++) {
      for (let r = 0; r < units; r++) a[t * I + start + r] = y[t * H + r];
    }
  }
  return a;
}

/**
 * GPTQ Hessians of an expert from its calibration sample: the input-side matrices see the routed
 * hidden states x, the output matrix sees the activation's outputs a.
 */
export function expertHessians(w: ExpertWeights, sample: ExpertSample): ExpertHessians {
  const { hidden: H, inter: I } = w;
  const hx = new HessianAccumulator(H);
  const ha = new HessianAccumulator(I);
  const x = Float64Array.from(sample.inputs.subarray(0, sample.n * H));
  const a = activationOutputs(w, x, sample.n);
  for (let t = 0; t < sample.n; t++) {
    hx.add(x.subarray(t * H, (t + 1) * H));
    ha.add(a.subarray(t * I, (t + 1) * I));
  }
  return { input: hx.finish(), output: ha.finish() };
}

/** Expert `e` of MoE layer `moeLayer` (its index in `model.moe`) of a reference model, as f32. */
export function referenceExpert(model: ReferenceModel, moeLayer: number, e: number): ExpertWeights {
  const m = model.moe[moeLayer]?.experts[e];
  if (!m) throw new UsageError(`reference model has no expert ${e} in MoE layer ${moeLayer}`);
  const w: ExpertWeights = {
    activation: m.activation,
    hidden: model.spec.hiddenSize,
    inter: m.inter,
    matrices: {},
    biases: {},
  };
  for (const name of matrixNames(m)) {
    const mat = m.matrices[name];
    if (!mat) throw new UsageError(`reference expert ${moeLayer}/${e} has no ${name} matrix`);
    w.matrices[name] = Float32Array.from(mat);
    const b = m.biases[name];
    if (b) w.biases[name] = Float32Array.from(b);
  }
  return w;
}

/**
 * Replaces one expert of a reference model (e.g. by its dequantized version) and returns the
 * function that puts the original back.
 */
export function swapExpert(
  model: ReferenceModel,
  moeLayer: number,
  e: number,
  w: ExpertWeights,
): () => void {
  const layer = model.moe[moeLayer];
  const old = layer?.experts[e];
  if (!old) throw new UsageError(`reference model has no expert ${e} in MoE layer ${moeLayer}`);
  const same = old.inter === w.inter && old.activation.kind === w.activation.kind &&
    matrixNames(old).every((n) => old.matrices[n]?.length === w.matrices[n]?.length);
  if (!same) {
    throw new UsageError(`swapExpert: MoE layer ${moeLayer} expert ${e} has another shape`);
  }
  layer.experts[e] = toReferenceMlp(w);
  return () => {
    layer.experts[e] = old;
  };
}
