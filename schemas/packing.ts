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
 * **MXFP4** (OCP Microscaling, the format gpt-oss releases its experts in) is the same layout
 * with `scaleType` "e8m0", which fixes bits = 4 and groupSize = 32: each code is an e2m1 float
 * ({@link E2M1_VALUES}), each group's scale one e8m0 byte s (scale 2^(s − 127); s = 0 decodes as
 * 0, s = 255 is not allowed), and there are no zeros: w = e2m1(q) · 2^(s − 127), exact in f32.
 * 4 code bits + 8 scale bits per 32 weights = 4.25 bits per weight. A 4-bit block's words are
 * the 16 bytes of an MXFP4 release block read little-endian (two codes per byte, low nibble
 * first), so released codes are stored verbatim.
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

/** Storage type of scales and zeros; "e8m0" is the MXFP4 format (e2m1 codes, no zeros). */
export type ScaleType = "f16" | "f32" | "e8m0";

/** The MXFP4 scale group (weights per e8m0 scale, along the input dimension). */
export const MXFP4_GROUP = 32;

/**
 * The expert width that stands for MXFP4 in allocation tables: its storage cost in bits per
 * weight (4 code bits + one 8-bit scale per 32 weights). Integer widths are the affine formats.
 */
export const MXFP4_WIDTH = 4.25;

/** A width an expert can be stored at: an affine code width, or {@link MXFP4_WIDTH}. */
export type ExpertWidth = QuantBits | typeof MXFP4_WIDTH;

/** Every expert width, ascending. */
export const EXPERT_WIDTHS: readonly ExpertWidth[] = [2, 3, 4, MXFP4_WIDTH, 8];

/** True for a width an expert can be stored at (including {@link MXFP4_WIDTH}). */
export function isExpertWidth(b: number): b is ExpertWidth {
  return isQuantBits(b) || b === MXFP4_WIDTH;
}

/** A width as users write it: "mxfp4" or the number. */
export function widthName(b: number): string {
  return b === MXFP4_WIDTH ? "mxfp4" : String(b);
}

/**
 * The e2m1 values of codes 0..15: bit 3 the sign, bits 2–1 the exponent, bit 0 the mantissa
 * (subnormal when the exponent is 0). Code 8 is −0.
 */
export const E2M1_VALUES: readonly number[] = [
  0,
  0.5,
  1,
  1.5,
  2,
  3,
  4,
  6,
  -0,
  -0.5,
  -1,
  -1.5,
  -2,
  -3,
  -4,
  -6,
];

const E2M1_F64 = Float64Array.from(E2M1_VALUES);

/** The scale of e8m0 byte s: 2^(s − 127); 0 for s = 0 (moeq's rule); NaN for s = 255. */
export function e8m0Scale(s: number): number {
  return s === 0 ? 0 : s === 255 ? NaN : 2 ** (s - 127);
}

/** True when a layout is MXFP4 (e8m0 scales). */
export function isMxfp4(layout: { scaleType: ScaleType }): boolean {
  return layout.scaleType === "e8m0";
}

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
  /**
   * rows · groupsPerRow values: f16 bit patterns (Uint16Array), f32 (Float32Array) or e8m0
   * bytes (Uint8Array).
   */
  scales: Uint16Array | Float32Array | Uint8Array;
  /** Same shape and type as `scales`; empty for MXFP4. */
  zeros: Uint16Array | Float32Array | Uint8Array;
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

/** Bytes per stored scale (or zero) of each scale type. */
export const PARAM_BYTES: Record<ScaleType, number> = { f16: 2, f32: 4, e8m0: 1 };

/** Throws unless an MXFP4 layout has bits 4 and groupSize 32 (no-op for other layouts). */
export function checkMxfp4Layout(layout: Pick<QuantLayout, "bits" | "groupSize" | "scaleType">) {
  if (isMxfp4(layout) && (layout.bits !== 4 || layout.groupSize !== MXFP4_GROUP)) {
    throw new RangeError(
      `e8m0 scales (MXFP4) need 4 bits and group size 32, not ${layout.bits} bits, group size ` +
        `${layout.groupSize}`,
    );
  }
}

/** Bytes of each part of a packed matrix. */
export function packedByteSizes(
  layout: QuantLayout,
): { codes: number; scales: number; zeros: number; total: number } {
  const codes = layout.rows * wordsPerRow(layout.cols, layout.bits) * 4;
  const per = PARAM_BYTES[layout.scaleType];
  const scales = layout.rows * groupsPerRow(layout.cols, layout.groupSize) * per;
  const zeros = isMxfp4(layout) ? 0 : scales;
  return { codes, scales, zeros, total: codes + scales + zeros };
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

/** Reads scale or zero i as a number, whatever its storage type (e8m0 bytes as their scale). */
export function paramAt(a: Uint16Array | Float32Array | Uint8Array, i: number): number {
  if (a instanceof Uint8Array) return e8m0Scale(a[i]);
  return a instanceof Uint16Array ? f16ToF32(a[i]) : a[i];
}

/** Encodes scale/zero values in an affine storage type (f16 or f32). */
export function encodeParams(
  values: ArrayLike<number>,
  type: ScaleType,
): Uint16Array | Float32Array {
  if (type === "e8m0") throw new RangeError("e8m0 scales are bytes: only MXFP4 writes them");
  if (type === "f32") return Float32Array.from(values);
  const out = new Uint16Array(values.length);
  for (let i = 0; i < values.length; i++) out[i] = f32ToF16(values[i]);
  return out;
}

/**
 * Dequantizes to row-major f32 [rows, cols] exactly as the runtime does: (f32(q) − zero) · scale,
 * or e2m1(q) · 2^(s − 127) for MXFP4.
 */
export function dequantize(t: QuantizedTensor): Float32Array {
  const { rows, cols, bits, groupSize } = t;
  if (isMxfp4(t)) {
    // Block (r, g) is 16 bytes: byte k holds codes 2k (low nibble) and 2k + 1 (high nibble).
    const out = new Float32Array(rows * cols);
    const gpr = groupsPerRow(cols, groupSize);
    const bytes = new Uint8Array(t.codes.buffer, t.codes.byteOffset, t.codes.byteLength);
    for (let r = 0; r < rows; r++) {
      for (let g = 0; g < gpr; g++) {
        const s = paramAt(t.scales, r * gpr + g);
        const at = (r * gpr + g) * 16, o = r * cols + g * 32, n = Math.min(32, cols - g * 32);
        if (n === 32) {
          for (let k = 0; k < 16; k++) {
            const b = bytes[at + k];
            out[o + 2 * k] = E2M1_F64[b & 15] * s;
            out[o + 2 * k + 1] = E2M1_F64[b >> 4] * s;
          }
        } else {
          for (let j = 0; j < n; j++) {
            const b = bytes[at + (j >> 1)];
            out[o + j] = E2M1_F64[j & 1 ? b >> 4 : b & 15] * s;
          }
        }
      }
    }
    return out;
  }
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
