/**
 * An expert quantized at a width and decoded again, as `quantizeExpert` (expert_weights.ts)
 * returns it, without packing the codes and unpacking them: the quantizer's unpacked codes,
 * scales and zeros are decoded with the runtime's formula ŵ = f32(f32(q − zero) · scale), which
 * is what `dequantize` computes from the packed tensor. Bit for bit the same values, in a third
 * of the time (the pack and the per-value code lookups were most of it). MXFP4 goes through
 * `quantizeExpert` itself.
 *
 * @module
 */

import { type ExpertWidth, groupsPerRow, MXFP4_WIDTH } from "../../schemas/packing.ts";
import { matrixShape } from "../../schemas/tensors.ts";
import {
  type ExpertHessians,
  type ExpertWeights,
  matrixNames,
  matrixOf,
  outputMatrix,
  quantizeExpert,
} from "../expert_weights.ts";
import { type QuantMethod, quantizeUnpacked } from "../quantize/mod.ts";
import type { UnpackedQuant } from "../quantize/common.ts";

/** The decoded values of an unpacked quantization, [rows, cols]. */
export function decodeUnpacked(u: UnpackedQuant): Float32Array {
  const { rows, cols, groupSize, codes, scales, zeros } = u;
  const gpr = groupsPerRow(cols, groupSize);
  const out = new Float32Array(rows * cols);
  const table = new Float64Array(256);
  for (let r = 0; r < rows; r++) {
    for (let g = 0; g < gpr; g++) {
      const scale = scales[r * gpr + g];
      const zero = zeros[r * gpr + g];
      const levels = 1 << u.bits;
      for (let q = 0; q < levels; q++) table[q] = Math.fround(Math.fround(q - zero) * scale);
      const end = r * cols + Math.min((g + 1) * groupSize, cols);
      for (let i = r * cols + g * groupSize; i < end; i++) out[i] = table[codes[i]];
    }
  }
  return out;
}

/** `quantizeExpert(w, bits, groupSize, method, hessians)`, the same values (see the module doc). */
export function fakeQuantizeExpert(
  w: ExpertWeights,
  bits: ExpertWidth,
  groupSize: number,
  method: QuantMethod,
  hessians?: ExpertHessians,
): ExpertWeights {
  if (bits === MXFP4_WIDTH) return quantizeExpert(w, bits, groupSize, method, hessians);
  const out = outputMatrix(w.activation);
  const q: ExpertWeights = { ...w, matrices: {} };
  for (const name of matrixNames(w)) {
    const [rows, cols] = matrixShape(name, w.inter, w.hidden);
    const hessian = name === out ? hessians?.output : hessians?.input;
    const u = quantizeUnpacked(matrixOf(w, name), rows, cols, {
      bits,
      groupSize,
      method,
      hessian,
    });
    q.matrices[name] = decodeUnpacked(u);
  }
  return q;
}
