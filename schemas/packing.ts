/**
 * The one definition of moeq's quantized weight format, shared by the compiler (which packs) and
 * the runtime (whose WGSL kernels unpack). See `schemas/PACKING.md` for the worked example.
 *
 * A quantized matrix W [rows, cols] (rows = output features, cols = input features) is stored as:
 *
 * - **codes**: per row, the `cols` integer codes q ∈ [0, 2^bits) in blocks of 32 codes. A block
 *   occupies exactly `bits` little-endian u32 words; code j of a block sits at bit offset
 *   `bits · j` of the block's `32 · bits`-bit string (bit 0 = least significant bit of word 0).
 *   For 2, 4 and 8 bits no code straddles a word; for 3 bits codes 10 and 21 of a block straddle
 *   words 0/1 and 1/2. The last block of a row is padded with zero codes. Row r starts at word
 *   `r · wordsPerRow` with `wordsPerRow = ceil(cols / 32) · bits`.
 * - **groups** run along the input dimension: group g of a row covers columns
 *   [g · groupSize, min((g + 1) · groupSize, cols)). `groupSize` is a multiple of 32, or equals
 *   `cols` (one group per row: per-channel quantization).
 * - **scales** and **zeros**: one each per (row, group), row-major [rows, groupsPerRow], stored as
 *   IEEE f16 (or f32 when `scaleType` is "f32"). Zeros are real-valued (HQQ's optimised zero).
 * - **dequantization**, in f32 arithmetic: w = (f32(q) − zero) · scale.
 *   Symmetric quantization is the special case zero = 2^(bits−1).
 *
 * @module
 */

import { f16ToF32, f32ToF16 } from "./half.ts";

/** Bit widths moeq packs. */
export type QuantBits = 2 | 3 | 4 | 8;

/** All supported bit widths, ascending. */
export const QUANT_BITS: readonly QuantBits[] = [2, 3, 4, 8];

/** Codes per block; a block is `bits` u32 words. */
export const BLOCK_CODES = 32;

/** Storage type of scales and zeros. */
export type ScaleType = "f16" | "f32";

/** Shape and parameters of a quantized matrix. */
export interface QuantLayout {
  rows: number;
  cols: number;
  bits: QuantBits;
  groupSize: number;
  scaleType: ScaleType;
}

/** A quantized matrix: the layout plus its three arrays. */
export interface QuantizedTensor extends QuantLayout {
  /** rows · wordsPerRow u32 words. */
  codes: Uint32Array;
  /** rows · groupsPerRow values: f16 bit patterns (Uint16Array) or f32 (Float32Array). */
  scales: Uint16Array | Float32Array;
  /** Same shape and type as `scales`. */
  zeros: Uint16Array | Float32Array;
}

/** True for a supported bit width. */
export function isQuantBits(b: number): b is QuantBits {
  return b === 2 || b === 3 || b === 4 || b === 8;
}

/** u32 words per packed row. */
export function wordsPerRow(cols: number, bits: QuantBits): number {
  return Math.ceil(cols / BLOCK_CODES) * bits;
}

/** Groups per row. */
export function groupsPerRow(cols: number, groupSize: number): number {
  return Math.ceil(cols / groupSize);
}

/** Throws unless the group size is legal for `cols` (a multiple of 32, or exactly `cols`). */
export function checkGroupSize(cols: number, groupSize: number): void {
  if (!Number.isInteger(groupSize) || groupSize <= 0) {
    throw new RangeError(`group size ${groupSize} is not a positive integer`);
  }
  if (groupSize % BLOCK_CODES !== 0 && groupSize !== cols) {
    throw new RangeError(
      `group size ${groupSize} is not a multiple of 32 nor the row length ${cols}`,
    );
  }
}

/** Bytes of each part of a packed matrix. */
export function packedByteSizes(
  layout: QuantLayout,
): { codes: number; scales: number; zeros: number; total: number } {
  const codes = layout.rows * wordsPerRow(layout.cols, layout.bits) * 4;
  const per = layout.scaleType === "f16" ? 2 : 4;
  const scales = layout.rows * groupsPerRow(layout.cols, layout.groupSize) * per;
  return { codes, scales, zeros: scales, total: codes + 2 * scales };
}

/** Packs row-major codes [rows, cols] (each < 2^bits) into the block layout. */
export function packCodes(
  codes: Uint8Array,
  rows: number,
  cols: number,
  bits: QuantBits,
): Uint32Array {
  const wpr = wordsPerRow(cols, bits);
  const out = new Uint32Array(rows * wpr);
  const mask = (1 << bits) - 1;
  for (let r = 0; r < rows; r++) {
    const base = r * wpr;
    for (let c = 0; c < cols; c++) {
      const q = codes[r * cols + c];
      if (q > mask) throw new RangeError(`code ${q} at [${r}, ${c}] does not fit ${bits} bits`);
      const bit = (c >> 5) * bits * 32 + (c & 31) * bits;
      const w = base + (bit >>> 5);
      const sh = bit & 31;
      out[w] |= q << sh;
      if (sh + bits > 32) out[w + 1] |= q >>> (32 - sh);
    }
  }
  return out;
}

/** Reads code (r, c) of a packed matrix: the reference the WGSL kernels mirror. */
export function codeAt(
  words: Uint32Array,
  r: number,
  c: number,
  cols: number,
  bits: QuantBits,
): number {
  const bit = (c >> 5) * bits * 32 + (c & 31) * bits;
  const w = r * wordsPerRow(cols, bits) + (bit >>> 5);
  const sh = bit & 31;
  let v = words[w] >>> sh;
  if (sh + bits > 32) v |= words[w + 1] << (32 - sh);
  return v & ((1 << bits) - 1);
}

/** Unpacks to row-major codes [rows, cols]. */
export function unpackCodes(
  words: Uint32Array,
  rows: number,
  cols: number,
  bits: QuantBits,
): Uint8Array {
  const out = new Uint8Array(rows * cols);
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < cols; c++) out[r * cols + c] = codeAt(words, r, c, cols, bits);
  }
  return out;
}

/** Reads scale or zero i as a number, whatever its storage type. */
export function paramAt(a: Uint16Array | Float32Array, i: number): number {
  return a instanceof Uint16Array ? f16ToF32(a[i]) : a[i];
}

/** Encodes scale/zero values in the storage type. */
export function encodeParams(
  values: ArrayLike<number>,
  type: ScaleType,
): Uint16Array | Float32Array {
  if (type === "f32") return Float32Array.from(values);
  const out = new Uint16Array(values.length);
  for (let i = 0; i < values.length; i++) out[i] = f32ToF16(values[i]);
  return out;
}

/** Dequantizes to row-major f32 [rows, cols] exactly as the runtime does: (f32(q) − zero) · scale. */
export function dequantize(t: QuantizedTensor): Float32Array {
  const { rows, cols, bits, groupSize } = t;
  const gpr = groupsPerRow(cols, groupSize);
  const out = new Float32Array(rows * cols);
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < cols; c++) {
      const g = r * gpr + Math.floor(c / groupSize);
      const q = codeAt(t.codes, r, c, cols, bits);
      out[r * cols + c] = Math.fround(
        Math.fround(q - paramAt(t.zeros, g)) * paramAt(t.scales, g),
      );
    }
  }
  return out;
}
