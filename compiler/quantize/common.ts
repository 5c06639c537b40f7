/**
 * Pieces shared by every quantizer: argument checks, rounding to the scale storage type, the
 * asymmetric min-max grid, the code of one weight, the exact reconstruction the runtime computes,
 * and packing an unpacked result into a `QuantizedTensor`.
 *
 * Quantizers work on an {@link UnpackedQuant}: one byte per code plus the scales and zeros as the
 * f32 values they decode to (already rounded to the storage type). Packing is a separate,
 * lossless step, so `dequantize(pack(u))` equals `reconstruct(u)` bit for bit.
 *
 * @module
 */

import { InputError, LimitError, UsageError } from "../../schemas/errors.ts";
import { roundF16 } from "../../schemas/half.ts";
import {
  checkGroupSize,
  encodeParams,
  groupsPerRow,
  isQuantBits,
  packCodes,
  type QuantBits,
  type QuantizedTensor,
  type QuantLayout,
  type ScaleType,
  wordsPerRow,
} from "../../schemas/packing.ts";

/** Options shared by all quantizers. */
export interface QuantOptions {
  /** Code width. */
  bits: QuantBits;
  /** Columns per group: a multiple of 32, or `cols` (one group per row). */
  groupSize: number;
  /** Storage type of scales and zeros; default "f16". */
  scaleType?: ScaleType;
  /** Tensor name used in error messages. */
  name?: string;
}

/** A quantized matrix before packing: codes one per byte, params as their decoded f32 values. */
export interface UnpackedQuant extends QuantLayout {
  /** Row-major codes [rows, cols], each in [0, 2^bits). */
  codes: Uint8Array;
  /** [rows, groupsPerRow] scales, exactly representable in `scaleType`. */
  scales: Float32Array;
  /** [rows, groupsPerRow] zeros, exactly representable in `scaleType`. */
  zeros: Float32Array;
}

/**
 * Validates a weight matrix and options, returning the full layout (scaleType defaulted).
 * `finite` = false skips the finiteness check, for callers that make it themselves (with
 * {@link checkFinite}) while reading the values anyway.
 */
export function checkMatrix(
  w: Float32Array,
  rows: number,
  cols: number,
  opts: QuantOptions,
  finite = true,
): QuantLayout {
  const name = opts.name ?? "matrix";
  if (!Number.isInteger(rows) || !Number.isInteger(cols) || rows <= 0 || cols <= 0) {
    throw new UsageError(`${name}: shape [${rows}, ${cols}] is not a positive 2-D shape`);
  }
  if (w.length !== rows * cols) {
    throw new UsageError(`${name}: ${w.length} values do not match shape [${rows}, ${cols}]`);
  }
  if (!isQuantBits(opts.bits)) {
    throw new UsageError(`${name}: unsupported bit width ${opts.bits} (expected 2, 3, 4 or 8)`);
  }
  try {
    checkGroupSize(cols, opts.groupSize);
  } catch (e) {
    throw new UsageError(`${name}: ${(e as Error).message}`);
  }
  const scaleType = opts.scaleType ?? "f16";
  if (scaleType !== "f16" && scaleType !== "f32") {
    throw new UsageError(`${name}: unknown scale type ${scaleType}`);
  }
  if (finite) {
    // One fast pass (x − x is 0 for finite x, NaN otherwise), the slow one only to name the value.
    let probe = 0;
    for (let i = 0; i < w.length; i++) probe += w[i] - w[i];
    if (probe !== 0) checkFinite(w, cols, name);
  }
  return { rows, cols, bits: opts.bits, groupSize: opts.groupSize, scaleType };
}

/** Throws an InputError naming the first non-finite weight of `w` ([·, cols]), if any. */
export function checkFinite(w: Float32Array, cols: number, name = "matrix"): void {
  for (let i = 0; i < w.length; i++) {
    if (!Number.isFinite(w[i])) {
      const r = Math.floor(i / cols);
      throw new InputError(`${name}: non-finite weight ${w[i]} at [${r}, ${i - r * cols}]`);
    }
  }
}

/** Rounds a value to the nearest value of the storage type (f16 ties-to-even, or f32). */
export function roundToStorage(x: number, type: ScaleType): number {
  return type === "f16" ? roundF16(x) : Math.fround(x);
}

/** Allocates an empty unpacked result for a layout. */
export function allocUnpacked(layout: QuantLayout): UnpackedQuant {
  const n = layout.rows * groupsPerRow(layout.cols, layout.groupSize);
  return {
    ...layout,
    codes: new Uint8Array(layout.rows * layout.cols),
    scales: new Float32Array(n),
    zeros: new Float32Array(n),
  };
}

/**
 * Asymmetric min-max parameters for values in [lo, hi] with codes 0..qmax, rounded to the
 * storage type: scale = (hi − lo) / qmax, zero = −lo / scale. Writes [scale, zero] into `out`.
 *
 * Degenerate ranges never produce NaN: a group of zeros gets scale 0 and zero 0 (it decodes to
 * exact zeros); a constant non-zero group, or one whose zero would not fit the storage type, has its
 * range widened to include 0, so the zero lies in [0, qmax].
 */
export function minMaxParams(
  lo: number,
  hi: number,
  qmax: number,
  type: ScaleType,
  out: Float64Array,
  name = "matrix",
): void {
  if (hi > lo) {
    const scale = roundToStorage((hi - lo) / qmax, type);
    if (scale > 0) {
      const zero = roundToStorage(-lo / scale, type);
      if (Number.isFinite(zero) && Number.isFinite(scale)) {
        out[0] = scale;
        out[1] = zero;
        return;
      }
    }
  }
  // Widen the range to include 0: the zero is then in [0, qmax] and always representable.
  const a = Math.min(lo, 0);
  const b = Math.max(hi, 0);
  const scale = roundToStorage((b - a) / qmax, type);
  if (!Number.isFinite(scale)) {
    throw new LimitError(
      `${name}: weight range [${lo}, ${hi}] overflows the ${type} scale; use scale type f32`,
    );
  }
  if (scale === 0) {
    out[0] = 0;
    out[1] = 0;
    return;
  }
  out[0] = scale;
  out[1] = roundToStorage(-a / scale, type);
}

/** The code of one weight: clamp(round(w · invScale + zero), 0, qmax). `invScale` is 0 for scale 0. */
export function codeOf(w: number, invScale: number, zero: number, qmax: number): number {
  const q = Math.round(w * invScale + zero);
  return q < 0 ? 0 : q > qmax ? qmax : q;
}

/** The inverse of a scale, or 0 for a zero scale (such groups decode to 0 whatever the codes). */
export function inverseScale(scale: number): number {
  return scale === 0 ? 0 : 1 / scale;
}

/** Decodes one code exactly as the runtime does, in f32: (f32(q) − zero) · scale. */
export function decodeCode(q: number, zero: number, scale: number): number {
  return Math.fround(Math.fround(q - zero) * scale);
}

/** The matrix the runtime will see: row-major f32 [rows, cols] decoded from an unpacked result. */
export function reconstruct(u: UnpackedQuant): Float32Array {
  const { rows, cols, groupSize } = u;
  const gpr = groupsPerRow(cols, groupSize);
  const out = new Float32Array(rows * cols);
  for (let r = 0; r < rows; r++) {
    for (let g = 0; g < gpr; g++) {
      const scale = u.scales[r * gpr + g];
      const zero = u.zeros[r * gpr + g];
      const end = Math.min((g + 1) * groupSize, cols);
      for (let c = g * groupSize; c < end; c++) {
        out[r * cols + c] = decodeCode(u.codes[r * cols + c], zero, scale);
      }
    }
  }
  return out;
}

/** Packs an unpacked result into the storage format of `schemas/packing.ts` (lossless). */
export function pack(
  u: UnpackedQuant,
): QuantizedTensor & { scales: Uint16Array | Float32Array; zeros: Uint16Array | Float32Array } {
  return {
    rows: u.rows,
    cols: u.cols,
    bits: u.bits,
    groupSize: u.groupSize,
    scaleType: u.scaleType,
    codes: packCodesFast(u.codes, u.rows, u.cols, u.bits),
    scales: encodeParams(u.scales, u.scaleType),
    zeros: encodeParams(u.zeros, u.scaleType),
  };
}

/**
 * `packCodes` of schemas/packing.ts (the format's definition), word at a time: for widths that
 * divide 32 each word is the OR of its 32/bits codes; 3-bit blocks fall back to the reference.
 * Output is identical, including the RangeError for a code that does not fit.
 */
export function packCodesFast(
  codes: Uint8Array,
  rows: number,
  cols: number,
  bits: QuantBits,
): Uint32Array {
  if (cols % 32 !== 0) return packCodes(codes, rows, cols, bits);
  if (bits === 3) return pack3(codes, rows, cols);
  const per = 32 / bits; // codes per word
  const out = new Uint32Array(rows * wordsPerRow(cols, bits));
  const mask = (1 << bits) - 1;
  let any = 0;
  for (let i = 0, o = 0; i < codes.length; i += per, o++) {
    let word = 0;
    for (let j = per - 1; j >= 0; j--) {
      const q = codes[i + j];
      any |= q;
      word = (word << bits) | q;
    }
    out[o] = word >>> 0;
  }
  if (any > mask) return packCodes(codes, rows, cols, bits); // throws naming the code
  return out;
}

/** 3-bit packing: each 32-code block is three words; codes 10 and 21 straddle a word boundary. */
function pack3(codes: Uint8Array, rows: number, cols: number): Uint32Array {
  const out = new Uint32Array(rows * wordsPerRow(cols, 3));
  let any = 0;
  for (let i = 0, o = 0; i < codes.length; i += 32, o += 3) {
    let w0 = 0, w1 = 0, w2 = 0;
    for (let j = 0; j < 11; j++) w0 |= codes[i + j] << (3 * j); // code 10: its low 2 bits
    w1 = codes[i + 10] >>> 2;
    for (let j = 11; j < 22; j++) w1 |= codes[i + j] << (3 * j - 32); // code 21: its low bit
    w2 = codes[i + 21] >>> 1;
    for (let j = 22; j < 32; j++) w2 |= codes[i + j] << (3 * j - 64);
    for (let j = 0; j < 32; j++) any |= codes[i + j];
    out[o] = w0 >>> 0;
    out[o + 1] = w1 >>> 0;
    out[o + 2] = w2 >>> 0;
  }
  if (any > 7) return packCodes(codes, rows, cols, 3); // throws naming the code
  return out;
}

/** Σ(a − b)² and Σa² in float64: the parts of every reconstruction-error figure. */
export function squaredError(
  a: ArrayLike<number>,
  b: ArrayLike<number>,
): { err: number; ref: number } {
  if (a.length !== b.length) {
    throw new UsageError(`squaredError: lengths differ (${a.length} vs ${b.length})`);
  }
  let err = 0;
  let ref = 0;
  for (let i = 0; i < a.length; i++) {
    const d = a[i] - b[i];
    err += d * d;
    ref += a[i] * a[i];
  }
  return { err, ref };
}

/** ‖W − Ŵ‖_F / ‖W‖_F (0 for an exact reconstruction of zeros, Infinity when W = 0 ≠ Ŵ). */
export function relativeError(w: ArrayLike<number>, wHat: ArrayLike<number>): number {
  const { err, ref } = squaredError(w, wHat);
  if (ref === 0) return err === 0 ? 0 : Infinity;
  return Math.sqrt(err / ref);
}
