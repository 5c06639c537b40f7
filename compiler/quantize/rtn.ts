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

import { LimitError } from "../../runtime/errors.ts";
import { groupsPerRow } from "../../schemas/packing.ts";
import {
  allocUnpacked,
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
  const layout = checkMatrix(w, rows, cols, opts);
  const u = allocUnpacked(layout);
  const { groupSize, scaleType } = layout;
  const qmax = (1 << layout.bits) - 1;
  const gpr = groupsPerRow(cols, groupSize);
  const params = new Float64Array(2);
  for (let r = 0; r < rows; r++) {
    for (let g = 0; g < gpr; g++) {
      const start = r * cols + g * groupSize;
      const end = r * cols + Math.min((g + 1) * groupSize, cols);
      let lo = Infinity;
      let hi = -Infinity;
      for (let i = start; i < end; i++) {
        const x = w[i];
        if (x < lo) lo = x;
        if (x > hi) hi = x;
      }
      minMaxParams(lo, hi, qmax, scaleType, params, opts.name);
      const scale = params[0];
      const zero = params[1];
      u.scales[r * gpr + g] = scale;
      u.zeros[r * gpr + g] = zero;
      const inv = inverseScale(scale);
      const codes = u.codes;
      for (let i = start; i < end; i++) {
        // codeOf, inlined (the hot loop of RTN)
        const q = Math.round(w[i] * inv + zero);
        codes[i] = q < 0 ? 0 : q > qmax ? qmax : q;
      }
    }
  }
  return u;
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
