/**
 * Round-to-nearest (RTN) quantizers: no data, no iteration, one pass per group.
 *
 * - {@link rtnAsymmetric}: per (row, group) min-max grid. scale = (max − min) / (2^b − 1),
 *   zero = −min / scale, both rounded to the storage type first; then
 *   q = clamp(round(w / scale + zero), 0, 2^b − 1) with the stored values.
 * - {@link rtnSymmetric}: MoQE-style symmetric grid, zero fixed at 2^(b−1). Convention: let m be
 *   the group's value of largest magnitude (with its sign); scale = −m / 2^(b−1), so m is code 0
 *   and decodes to itself (up to the scale's rounding), and all 2^b codes are usable:
 *   the grid is {−2^(b−1), …, 2^(b−1) − 1} · |scale| on m's side first. The scale is negative
 *   when m > 0; w = (q − zero) · scale holds either way. Use groupSize = cols for per-channel.
 *
 * @module
 */

import { LimitError } from "../../schemas/errors.ts";
import { groupsPerRow } from "../../schemas/packing.ts";
import {
  allocUnpacked,
  checkFinite,
  checkMatrix,
  codeOf,
  inverseScale,
  minMaxParams,
  type QuantOptions,
  roundToStorage,
  type UnpackedQuant,
} from "./common.ts";

/** Asymmetric min-max round-to-nearest, group-wise along the input dimension. */
export function rtnAsymmetric(
  w: Float32Array,
  rows: number,
  cols: number,
  opts: QuantOptions,
): UnpackedQuant {
  return rtnAsymmetricFused(w, rows, cols, opts, false).u;
}

/**
 * {@link rtnAsymmetric} plus the reconstruction error sums of the result, in one pass per group:
 * `err` = Σ (w − ŵ)² with ŵ decoded in f32 exactly as the runtime does ((f32(q − zero)) · scale),
 * `ref` = Σ w², both summed in float64 in row-major element order (the order of a separate pass).
 */
export function rtnAsymmetricWithError(
  w: Float32Array,
  rows: number,
  cols: number,
  opts: QuantOptions,
): { u: UnpackedQuant; err: number; ref: number } {
  return rtnAsymmetricFused(w, rows, cols, opts, true);
}

/** 1.5 · 2^52: (v + it) − it is v rounded to an integer, ties to even, for |v| < 2^51. */
const ROUND_MAGIC = 6755399441055744;

function rtnAsymmetricFused(
  w: Float32Array,
  rows: number,
  cols: number,
  opts: QuantOptions,
  sums: boolean,
): { u: UnpackedQuant; err: number; ref: number } {
  const layout = checkMatrix(w, rows, cols, opts, false);
  const u = allocUnpacked(layout);
  const { groupSize, scaleType } = layout;
  const qmax = (1 << layout.bits) - 1;
  const gpr = groupsPerRow(cols, groupSize);
  const params = new Float64Array(2);
  const decoded = new Float64Array(qmax + 1);
  const codes = u.codes;
  const scales = u.scales;
  const zeros = u.zeros;
  let err = 0;
  let ref = 0;
  try {
    for (let r = 0; r < rows; r++) {
      for (let g = 0; g < gpr; g++) {
        const start = r * cols + g * groupSize;
        const end = r * cols + Math.min((g + 1) * groupSize, cols);
        let lo = Infinity;
        let hi = -Infinity;
        let probe = 0; // x − x: 0 for finite x, NaN otherwise (the finiteness check, fused)
        for (let i = start; i < end; i++) {
          const x = w[i];
          probe += x - x;
          if (x < lo) lo = x;
          if (x > hi) hi = x;
        }
        if (probe !== 0) checkFinite(w, cols, opts.name); // throws naming the first bad value
        minMaxParams(lo, hi, qmax, scaleType, params, opts.name);
        const scale = params[0];
        const zero = params[1];
        scales[r * gpr + g] = scale;
        zeros[r * gpr + g] = zero;
        const inv = inverseScale(scale);
        if (sums) {
          // The decoded value of each code, as the runtime computes it: f32(f32(q − zero) · scale).
          for (let q = 0; q <= qmax; q++) decoded[q] = Math.fround(Math.fround(q - zero) * scale);
          for (let i = start; i < end; i++) {
            const x = w[i];
            const v = x * inv + zero;
            // Math.round(v), exactly: round half to even by the 1.5·2^52 trick, then a tie that
            // went down goes up (|v| ≥ 2^51 is far outside [0, qmax] either way, so clamps alike).
            let t = (v + ROUND_MAGIC) - ROUND_MAGIC;
            if (v - t === 0.5) t += 1;
            const q = t < 0 ? 0 : t > qmax ? qmax : t;
            codes[i] = q;
            const d = x - decoded[q];
            err += d * d;
            ref += x * x;
          }
        } else {
          for (let i = start; i < end; i++) {
            const v = w[i] * inv + zero;
            let t = (v + ROUND_MAGIC) - ROUND_MAGIC; // Math.round(v), as above
            if (v - t === 0.5) t += 1;
            codes[i] = t < 0 ? 0 : t > qmax ? qmax : t;
          }
        }
      }
    }
  } catch (e) {
    // A non-finite weight anywhere is reported before a range error in an earlier group.
    checkFinite(w, cols, opts.name);
    throw e;
  }
  return { u, err, ref };
}

/** Symmetric round-to-nearest with zero = 2^(bits−1) (see the module doc for the convention). */
export function rtnSymmetric(
  w: Float32Array,
  rows: number,
  cols: number,
  opts: QuantOptions,
): UnpackedQuant {
  const layout = checkMatrix(w, rows, cols, opts);
  const u = allocUnpacked(layout);
  const { groupSize, scaleType } = layout;
  const qmax = (1 << layout.bits) - 1;
  const half = 1 << (layout.bits - 1);
  const gpr = groupsPerRow(cols, groupSize);
  for (let r = 0; r < rows; r++) {
    for (let g = 0; g < gpr; g++) {
      const start = r * cols + g * groupSize;
      const end = r * cols + Math.min((g + 1) * groupSize, cols);
      let m = 0;
      for (let i = start; i < end; i++) {
        if (Math.abs(w[i]) > Math.abs(m)) m = w[i];
      }
      const scale = roundToStorage(-m / half, scaleType);
      if (!Number.isFinite(scale)) {
        throw new LimitError(
          `${
            opts.name ?? "matrix"
          }: weight ${m} overflows the ${scaleType} scale; use scale type f32`,
        );
      }
      u.scales[r * gpr + g] = scale;
      u.zeros[r * gpr + g] = half;
      const inv = inverseScale(scale);
      for (let i = start; i < end; i++) u.codes[i] = codeOf(w[i], inv, half, qmax);
    }
  }
  return u;
}
