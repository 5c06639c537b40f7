/**
 * An expert quantized at a width and decoded again, as `quantizeExpert` (expert_weights.ts)
 * returns it, without packing the codes and unpacking them: the quantizer's unpacked codes,
 * scales and zeros are decoded with the runtime's formula ŵ = f32(f32(q − zero) · scale), which
 * is what `dequantize` computes from the packed tensor. RTN (the common case) is fused further:
 * each group's min-max parameters, then each value's code decoded at once through a table of the
 * group's 2^b levels, with no codes array. Bit for bit the same values as `quantizeExpert`, in a
 * fraction of the time (the pack and the per-value code lookups were most of it). MXFP4 goes
 * through `quantizeExpert` itself.
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
import { quantizeUnpacked, type QuantMethod } from "../quantize/mod.ts";
import { checkFinite, inverseScale, minMaxParams, type UnpackedQuant } from "../quantize/common.ts";
import type { QuantBits, ScaleType } from "../../schemas/packing.ts";
import { kernelF32, kernelF64, paramsAt, rtnDecodedSimd } from "./simd.ts";

/** 1.5 · 2^52: (v + it) − it is v rounded to an integer, ties to even, for |v| < 2^51. */
const ROUND_MAGIC = 6755399441055744;

/**
 * Asymmetric min-max RTN (compiler/quantize/rtn.ts `rtnAsymmetric`) of w [rows, cols], decoded:
 * the same codes (Math.round of w / scale + zero, clamped) through the same decode formula. When
 * groups tile the rows in multiples of 4 values, on the SIMD kernels (simd.ts `rtnDecodedSimd`,
 * float64 lanes for the codes as here); else in this loop. Writes into `into` (default: a new
 * array) and returns it.
 */
export function rtnDecoded(
  w: Float32Array,
  rows: number,
  cols: number,
  bits: QuantBits,
  groupSize: number,
  scaleType: ScaleType = "f16",
  name = "matrix",
  into: Float32Array = new Float32Array(rows * cols),
): Float32Array {
  const qmax = (1 << bits) - 1;
  const params = new Float64Array(2);
  if (groupSize % 4 === 0 && cols % groupSize === 0 && rows * cols > 0) {
    return rtnDecodedSimd(w, groupSize, qmax, (lo, hi, out) => {
      if (!Number.isFinite(lo) || !Number.isFinite(hi)) checkFinite(w, cols, name);
      minMaxParams(lo, hi, qmax, scaleType, params, name);
      out[0] = inverseScale(params[0]);
      out[1] = params[1];
      out[2] = params[0];
    }, into);
  }
  const gpr = groupsPerRow(cols, groupSize);
  const out = into;
  const table = new Float64Array(qmax + 1);
  for (let r = 0; r < rows; r++) {
    for (let g = 0; g < gpr; g++) {
      const start = r * cols + g * groupSize;
      const end = r * cols + Math.min((g + 1) * groupSize, cols);
      let lo = Infinity;
      let hi = -Infinity;
      let probe = 0; // x − x: 0 for finite x, NaN otherwise
      for (let i = start; i < end; i++) {
        const x = w[i];
        probe += x - x;
        if (x < lo) lo = x;
        if (x > hi) hi = x;
      }
      if (probe !== 0) checkFinite(w, cols, name);
      minMaxParams(lo, hi, qmax, scaleType, params, name);
      const scale = params[0];
      const zero = params[1];
      for (let q = 0; q <= qmax; q++) table[q] = Math.fround(Math.fround(q - zero) * scale);
      const inv = inverseScale(scale);
      for (let i = start; i < end; i++) {
        const v = w[i] * inv + zero;
        let t = (v + ROUND_MAGIC) - ROUND_MAGIC;
        if (v - t === 0.5) t += 1;
        out[i] = table[t < 0 ? 0 : t > qmax ? qmax : t];
      }
    }
  }
  return out;
}

/**
 * Per group g, the `rtn` kernel's parameters prm[3g..3g+2] = [1/scale, zero, scale] from the
 * group's [min, max] mm[2g..2g+1] (simd.ts `minmaxAt`), as {@link rtnDecoded} computes them, and
 * the float32 kernel's (simd.ts `rtnFastAt`) prm32[4g..4g+3] = [1/scale, zero, scale, limit]. A
 * non-finite min or max is `checkFinite`'s error on `values()` ([·, cols], read only then).
 *
 * The limit: every |v − v₆₄| between the float32 v = f32(f32(w · f32(1/scale)) + zero) and the
 * float64 one is ≤ 2⁻²⁴ · (3.01 · |w| / scale + |zero|) (three roundings of relative 2⁻²⁴, and
 * 2⁻⁵³ ones for v₆₄), with |w| ≤ max(|min|, |max|) in the group; twice that bound is E, and a
 * value whose v lies within 0.5 − E of its nearest integer t rounds to t in float64 as well
 * (round half up included: v₆₄ is then strictly within 0.5 of t). limit = 0.5 − E, rounded down.
 */
export function rtnGroupParams(
  mm: Float32Array,
  prm: Float64Array,
  prm32: Float32Array | null,
  groups: number,
  bits: QuantBits,
  scaleType: ScaleType,
  values: () => Float32Array,
  cols: number,
  name: string,
): void {
  const qmax = (1 << bits) - 1;
  const params = new Float64Array(2);
  for (let g = 0; g < groups; g++) {
    const lo = mm[2 * g], hi = mm[2 * g + 1];
    if (!Number.isFinite(lo) || !Number.isFinite(hi)) checkFinite(values(), cols, name);
    minMaxParams(lo, hi, qmax, scaleType, params, name);
    const [scale, zero] = params;
    const inv = inverseScale(scale);
    prm[3 * g] = inv;
    prm[3 * g + 1] = zero;
    prm[3 * g + 2] = scale;
    if (!prm32) continue;
    const e = 2 * 2 ** -24 * (3.01 * Math.max(Math.abs(lo), Math.abs(hi)) * inv + Math.abs(zero));
    prm32[4 * g] = inv;
    prm32[4 * g + 1] = zero;
    prm32[4 * g + 2] = scale;
    prm32[4 * g + 3] = 0.5 - e - 2 ** -24; // rounds to at most 0.5 − e
  }
}

/**
 * {@link rtnGroupParams} (f16 scales, with `prm32`) on regions of the kernel memory (byte
 * addresses; `flags` room for one i32 per group): the `params` kernel (simd.ts) computes the
 * common groups with the same float operations, and the groups it leaves (degenerate ranges,
 * f16 overflow, non-finite values) are done here one by one, errors included. The same values.
 */
export function rtnParamsAt(
  mm: number,
  prm: number,
  prm32: number,
  flags: number,
  groups: number,
  bits: QuantBits,
  values: () => Float32Array,
  cols: number,
  name: string,
): void {
  if (paramsAt(mm, prm, prm32, flags, groups, (1 << bits) - 1) === 0) return;
  const flagged = new Int32Array(kernelF32(flags, groups).buffer, flags, groups);
  for (let g = 0; g < groups; g++) {
    if (flagged[g] === 0) continue;
    rtnGroupParams(
      kernelF32(mm + 8 * g, 2),
      kernelF64(prm + 24 * g, 3),
      kernelF32(prm32 + 16 * g, 4),
      1,
      bits,
      "f16",
      values,
      cols,
      name,
    );
  }
}

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

/**
 * `quantizeExpert(w, bits, groupSize, method, hessians)`, the same values (see the module doc).
 * With `into`, RTN writes each matrix into the array it returns for the matrix's name and size (a
 * caller's reused buffer) instead of a new one.
 */
export function fakeQuantizeExpert(
  w: ExpertWeights,
  bits: ExpertWidth,
  groupSize: number,
  method: QuantMethod,
  hessians?: ExpertHessians,
  into?: (name: string, values: number) => Float32Array,
): ExpertWeights {
  if (bits === MXFP4_WIDTH) return quantizeExpert(w, bits, groupSize, method, hessians);
  const out = outputMatrix(w.activation);
  const q: ExpertWeights = { ...w, matrices: {} };
  for (const name of matrixNames(w)) {
    const [rows, cols] = matrixShape(name, w.inter, w.hidden);
    if (method === "rtn") {
      const buffer = into?.(name, rows * cols);
      const m = matrixOf(w, name);
      q.matrices[name] = rtnDecoded(m, rows, cols, bits, groupSize, "f16", name, buffer);
      continue;
    }
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
