/**
 * HQQ: Half-Quadratic Quantization (Badri & Shaji, 2023), calibration-free.
 *
 * Starting from the min-max RTN grid, HQQ keeps each group's scale s fixed and optimises its zero z
 * to minimise the ℓp (p < 1) norm of the reconstruction error, which tolerates outliers better
 * than ℓ2. Half-quadratic splitting introduces an auxiliary error variable W_e and alternates:
 *
 *     W_q = clamp(round(W / s + z))                      codes for the current zero
 *     W_e = shrink_lp(W − (W_q − z) · s, β, p)          proximal step for the ℓp term
 *     z   = mean(W_q − (W − W_e) / s)                    closed-form zero for the quadratic term
 *     β   = β · κ
 *
 * with shrink_lp(x, β, p) = sign(x) · max(|x| − |x|^(p−1) / β, 0), the generalised soft threshold.
 * Like the reference implementation, a group stops as soon as its error stops improving. Every
 * iterate's zero is first rounded to the storage type, and the iterate with the smallest squared
 * reconstruction error is kept, so the result is never worse (in ℓ2, per group) than RTN, which is
 * iterate 0.
 *
 * @module
 */

import { UsageError } from "../../schemas/errors.ts";
import { groupsPerRow } from "../../schemas/packing.ts";
import {
  codeOf,
  inverseScale,
  type QuantOptions,
  roundToStorage,
  type UnpackedQuant,
} from "./common.ts";
import { rtnAsymmetric } from "./rtn.ts";

/** HQQ solver parameters (defaults are the reference's). */
export interface HqqParams {
  /** p of the ℓp error norm, in (0, 1]; default 0.7. */
  lpNorm?: number;
  /** Initial β of the half-quadratic penalty; default 10. */
  beta?: number;
  /** Growth factor of β per iteration; default 1.01. */
  kappa?: number;
  /** Maximum iterations per group; default 20. */
  iters?: number;
}

/** Options of {@link hqq}: the common options plus the solver parameters. */
export interface HqqOptions extends QuantOptions, HqqParams {}

/** Generalised soft-thresholding for the ℓp norm (p < 1 shrinks small values harder). */
export function shrinkLp(x: number, beta: number, p: number): number {
  const a = Math.abs(x);
  const t = p === 1 ? a - 1 / beta : a - Math.pow(a, p - 1) / beta;
  return t > 0 ? (x < 0 ? -t : t) : 0;
}

/** HQQ zero optimisation on top of min-max RTN; codes, scales and zeros in the storage type. */
export function hqq(
  w: Float32Array,
  rows: number,
  cols: number,
  opts: HqqOptions,
): UnpackedQuant {
  const p = opts.lpNorm ?? 0.7;
  const beta0 = opts.beta ?? 10;
  const kappa = opts.kappa ?? 1.01;
  const iters = opts.iters ?? 20;
  if (
    !(p > 0 && p <= 1) || !(beta0 > 0) || !(kappa >= 1) || !(Number.isInteger(iters) && iters >= 0)
  ) {
    throw new UsageError(
      `${
        opts.name ?? "matrix"
      }: bad HQQ parameters (lpNorm ${p}, beta ${beta0}, kappa ${kappa}, iters ${iters})`,
    );
  }
  const u = rtnAsymmetric(w, rows, cols, opts);
  const { groupSize, scaleType } = u;
  const qmax = (1 << u.bits) - 1;
  const gpr = groupsPerRow(cols, groupSize);

  // β per iteration, and the |x| below which shrink_lp returns 0: |x| ≤ |x|^(p−1)/β ⇔
  // |x| ≤ β^(−1/(2−p)). Checking it first skips Math.pow for most elements.
  const betas = new Float64Array(iters);
  const cutoff = new Float64Array(iters);
  for (let k = 0, beta = beta0; k < iters; k++, beta *= kappa) {
    betas[k] = beta;
    cutoff[k] = Math.pow(beta, -1 / (2 - p));
  }

  for (let r = 0; r < rows; r++) {
    for (let g = 0; g < gpr; g++) {
      const scale = u.scales[r * gpr + g];
      if (scale === 0) continue; // all-zero group: already exact
      const start = r * cols + g * groupSize;
      const end = r * cols + Math.min((g + 1) * groupSize, cols);
      const inv = inverseScale(scale);
      let zero = u.zeros[r * gpr + g]; // iterate 0 = RTN
      let bestZero = zero;
      let bestErr = Infinity;
      for (let k = 0; k < iters; k++) {
        let err = 0;
        let sum = 0;
        for (let i = start; i < end; i++) {
          const x = w[i];
          const q = codeOf(x, inv, zero, qmax);
          const e = x - (q - zero) * scale;
          err += e * e;
          const we = Math.abs(e) > cutoff[k] ? shrinkLp(e, betas[k], p) : 0;
          sum += q - (x - we) * inv;
        }
        if (err >= bestErr) break;
        bestErr = err;
        bestZero = zero;
        zero = roundToStorage(sum / (end - start), scaleType);
      }
      if (bestZero !== u.zeros[r * gpr + g]) {
        u.zeros[r * gpr + g] = bestZero;
        for (let i = start; i < end; i++) u.codes[i] = codeOf(w[i], inv, bestZero, qmax);
      }
    }
  }
  return u;
}
