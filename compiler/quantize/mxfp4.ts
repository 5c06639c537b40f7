/**
 * Quantization to MXFP4 (schemas/packing.ts, scale type "e8m0"): each run of 32 weights along
 * the input dimension shares one power-of-two scale, each weight is an e2m1 code.
 *
 * Scale choice (OCP Microscaling Formats v1.0, §6.3): X = 2^(⌊log₂ amax⌋ − 2), 2 being e2m1's
 * largest exponent, so the block's largest magnitude lands in [4, 8) and every weight is rounded
 * to the nearest e2m1 value (ties to the even code, magnitudes above 6 saturate to 6). An
 * all-zero block gets s = 0 (scale 0). Exponents below e8m0's range clamp to s = 1.
 *
 * @module
 */

import { InputError } from "../../schemas/errors.ts";
import {
  groupsPerRow,
  MXFP4_GROUP,
  packCodes,
  type QuantizedTensor,
} from "../../schemas/packing.ts";

/** Midpoints between consecutive non-negative e2m1 values (0, 0.5, 1, 1.5, 2, 3, 4, 6). */
const MIDPOINTS = [0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5];

/**
 * The e2m1 code nearest to v (a real number already divided by its block scale): ties go to the
 * even code (the one whose mantissa bit is 0), magnitudes beyond 6 saturate.
 */
export function e2m1Code(v: number): number {
  const a = Math.abs(v);
  let m = 0;
  while (m < 7 && a >= MIDPOINTS[m]) {
    if (a === MIDPOINTS[m] && m % 2 === 0) break; // tie: keep the even code m
    m++;
  }
  return m === 0 ? 0 : v < 0 ? m | 8 : m;
}

/** The e8m0 byte of a block whose largest magnitude is `amax` (see the module doc). */
export function mxfp4ScaleByte(amax: number): number {
  if (!(amax > 0)) return 0;
  const e = Math.floor(Math.log2(amax));
  // Math.log2 may round across a power of two: make 2^e ≤ amax < 2^(e+1) exact.
  const exp = 2 ** e > amax ? e - 1 : 2 ** (e + 1) <= amax ? e + 1 : e;
  return Math.min(254, Math.max(1, exp - 2 + 127));
}

/**
 * Quantizes W [rows, cols] (row-major, rows = output features) to MXFP4. Non-finite weights are
 * an InputError naming `name`.
 */
export function quantizeMxfp4(
  w: ArrayLike<number>,
  rows: number,
  cols: number,
  name = "matrix",
): QuantizedTensor {
  const gpr = groupsPerRow(cols, MXFP4_GROUP);
  const codes = new Uint8Array(rows * cols);
  const scales = new Uint8Array(rows * gpr);
  for (let r = 0; r < rows; r++) {
    for (let g = 0; g < gpr; g++) {
      const c0 = g * MXFP4_GROUP, c1 = Math.min(cols, c0 + MXFP4_GROUP);
      let amax = 0;
      for (let c = c0; c < c1; c++) {
        const v = w[r * cols + c];
        if (!Number.isFinite(v)) {
          throw new InputError(`${name}: non-finite weight ${v} at [${r}, ${c}]`);
        }
        amax = Math.max(amax, Math.abs(v));
      }
      const s = mxfp4ScaleByte(amax);
      scales[r * gpr + g] = s;
      if (s === 0) continue;
      const inv = 2 ** (127 - s);
      for (let c = c0; c < c1; c++) codes[r * cols + c] = e2m1Code(w[r * cols + c] * inv);
    }
  }
  return {
    rows,
    cols,
    bits: 4,
    groupSize: MXFP4_GROUP,
    scaleType: "e8m0",
    codes: packCodes(codes, rows, cols, 4),
    scales,
    zeros: new Uint8Array(0),
  };
}
