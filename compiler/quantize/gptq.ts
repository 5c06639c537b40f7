/**
 * GPTQ (Frantar et al., 2022): quantize a weight matrix column by column, feeding each column's
 * quantization error back onto the columns not yet quantized so that the layer *output* on the
 * calibration inputs changes as little as possible.
 *
 * With H = 2·XᵀX/n the Hessian of ‖XWᵀ − XŴᵀ‖² (X = calibration inputs [n, cols]) and U the upper
 * Cholesky factor of H⁻¹ (Uᵀ U = H⁻¹), each output row w is processed independently:
 *
 *     for i in 0..cols:
 *       if i starts a group: min-max scale/zero from the current (already updated) w[group]
 *       q_i   = clamp(round(w_i / scale + zero));  ŵ_i = (q_i − zero) · scale
 *       err   = (w_i − ŵ_i) / U[i, i]
 *       w_j  -= err · U[i, j]        for j > i
 *
 * Details as in the reference: dead columns (H_ii = 0: the input is always 0) get H_ii = 1; the
 * diagonal is dampened by `dampPercent` (1%) of its mean. Unlike the reference, dead columns keep
 * their weights (quantized to nearest, error not propagated) instead of being zeroed, so a column
 * the calibration set never exercised is not destroyed; with no calibration data at all (H = 0)
 * GPTQ reduces exactly to min-max RTN. Cost: O(cols³) for the factorisation plus
 * O(rows · cols²) for the updates.
 *
 * @module
 */

import { InputError, UsageError } from "../../schemas/errors.ts";
import { groupsPerRow } from "../../schemas/packing.ts";
import {
  allocUnpacked,
  checkMatrix,
  codeOf,
  decodeCode,
  inverseScale,
  minMaxParams,
  type QuantOptions,
  type UnpackedQuant,
} from "./common.ts";

/**
 * Accumulates the GPTQ Hessian H = 2·XᵀX/n from input rows x (length `cols`) one at a time, as
 * the compiler sees each expert's routed tokens. Only the upper triangle is summed.
 */
export class HessianAccumulator {
  /** Input dimension. */
  readonly cols: number;
  #sum: Float64Array;
  #count = 0;

  /** Creates an accumulator for inputs of length `cols`. */
  constructor(cols: number) {
    if (!Number.isInteger(cols) || cols <= 0) {
      throw new UsageError(`HessianAccumulator: cols ${cols} is not a positive integer`);
    }
    this.cols = cols;
    this.#sum = new Float64Array(cols * cols);
  }

  /** Number of rows added so far. */
  get count(): number {
    return this.#count;
  }

  /** Adds one input row x (length `cols`): sum += x xᵀ. */
  add(x: Float64Array | Float32Array): void {
    const n = this.cols;
    if (x.length !== n) {
      throw new UsageError(`HessianAccumulator: input of length ${x.length}, expected ${n}`);
    }
    const s = this.#sum;
    for (let i = 0; i < n; i++) {
      const xi = x[i];
      if (xi === 0) continue;
      const row = i * n;
      for (let j = i; j < n; j++) s[row + j] += xi * x[j];
    }
    this.#count++;
  }

  /** Adds `x.length / cols` input rows stored row-major. */
  addRows(x: Float64Array | Float32Array): void {
    const n = this.cols;
    if (x.length % n !== 0) {
      throw new UsageError(`HessianAccumulator: ${x.length} values are not whole rows of ${n}`);
    }
    for (let r = 0; r < x.length; r += n) this.add(x.subarray(r, r + n));
  }

  /** H = 2·XᵀX/n as a full symmetric [cols, cols] matrix (all zeros when nothing was added). */
  finish(): Float64Array {
    const n = this.cols;
    const h = new Float64Array(n * n);
    const f = this.#count > 0 ? 2 / this.#count : 0;
    for (let i = 0; i < n; i++) {
      for (let j = i; j < n; j++) {
        const v = this.#sum[i * n + j] * f;
        h[i * n + j] = v;
        h[j * n + i] = v;
      }
    }
    return h;
  }
}

/**
 * In-place lower Cholesky factorisation of a symmetric positive definite row-major [n, n] matrix:
 * on success the lower triangle holds L with A = L Lᵀ (the upper triangle is left untouched).
 * Returns false when A is not (numerically) positive definite.
 */
export function choleskyLower(a: Float64Array, n: number): boolean {
  for (let i = 0; i < n; i++) {
    const ri = i * n;
    for (let j = 0; j <= i; j++) {
      const rj = j * n;
      let s = a[ri + j];
      for (let k = 0; k < j; k++) s -= a[ri + k] * a[rj + k];
      if (i === j) {
        if (!(s > 0) || !Number.isFinite(s)) return false;
        a[ri + i] = Math.sqrt(s);
      } else {
        a[ri + j] = s / a[rj + j];
      }
    }
  }
  return true;
}

/** Inverse of a lower-triangular row-major [n, n] matrix (upper triangle of `l` ignored). */
export function invertLower(l: Float64Array, n: number): Float64Array {
  // Row i of X = L⁻¹ solves Σ_k L[i,k] X[k,:] = e_i; row k of X is zero beyond column k.
  const x = new Float64Array(n * n);
  for (let i = 0; i < n; i++) {
    const ri = i * n;
    for (let k = 0; k < i; k++) {
      const c = l[ri + k];
      if (c === 0) continue;
      const rk = k * n;
      for (let j = 0; j <= k; j++) x[ri + j] -= c * x[rk + j];
    }
    x[ri + i] += 1;
    const d = 1 / l[ri + i];
    for (let j = 0; j <= i; j++) x[ri + j] *= d;
  }
  return x;
}

/**
 * The upper Cholesky factor U of H⁻¹ (Uᵀ U = H⁻¹), without forming H⁻¹. With J the reversal
 * permutation and B the lower Cholesky factor of J H J, U = J B⁻¹ J; reversing a row-major
 * matrix's flat array applies J on both sides. Returns null when H is not positive definite.
 */
export function upperCholeskyOfInverse(h: Float64Array, n: number): Float64Array | null {
  const b = h.slice().reverse();
  if (!choleskyLower(b, n)) return null;
  return invertLower(b, n).reverse();
}

/** Options of {@link gptq}. */
export interface GptqOptions extends QuantOptions {
  /** H = 2·XᵀX/n, row-major [cols, cols] float64 (see {@link HessianAccumulator}). */
  hessian: Float64Array;
  /** Dampening added to the diagonal, as a fraction of its mean; default 0.01. */
  dampPercent?: number;
}

/** GPTQ with group-wise asymmetric min-max parameters (see the module doc). */
export function gptq(
  w: Float32Array,
  rows: number,
  cols: number,
  opts: GptqOptions,
): UnpackedQuant {
  const layout = checkMatrix(w, rows, cols, opts);
  const name = opts.name ?? "matrix";
  const u = gptqFactor(opts.hessian, cols, opts.dampPercent ?? 0.01, name);
  const out = allocUnpacked(layout);
  const { groupSize, scaleType } = layout;
  const qmax = (1 << layout.bits) - 1;
  const gpr = groupsPerRow(cols, groupSize);
  const params = new Float64Array(2);

  // Rows are independent; process them in batches so each row of U is reused from cache.
  const batch = Math.max(1, Math.min(rows, Math.floor(32768 / cols)));
  const wb = new Float64Array(batch * cols);
  const inv = new Float64Array(batch);
  for (let r0 = 0; r0 < rows; r0 += batch) {
    const nb = Math.min(batch, rows - r0);
    for (let i = 0; i < nb * cols; i++) wb[i] = w[r0 * cols + i];
    for (let i = 0; i < cols; i++) {
      const ui = i * cols;
      const d = u[ui + i];
      const g = Math.floor(i / groupSize);
      for (let b = 0; b < nb; b++) {
        const row = b * cols;
        const pi = (r0 + b) * gpr + g;
        if (i === g * groupSize) {
          const end = Math.min(i + groupSize, cols);
          let lo = Infinity;
          let hi = -Infinity;
          for (let j = i; j < end; j++) {
            const x = wb[row + j];
            if (x < lo) lo = x;
            if (x > hi) hi = x;
          }
          minMaxParams(lo, hi, qmax, scaleType, params, name);
          out.scales[pi] = params[0];
          out.zeros[pi] = params[1];
          inv[b] = inverseScale(params[0]);
        }
        const scale = out.scales[pi];
        const zero = out.zeros[pi];
        const x = wb[row + i];
        const q = codeOf(x, inv[b], zero, qmax);
        out.codes[(r0 + b) * cols + i] = q;
        const err = (x - decodeCode(q, zero, scale)) / d;
        if (err === 0) continue;
        for (let j = i + 1; j < cols; j++) wb[row + j] -= err * u[ui + j];
      }
    }
  }
  return out;
}

/** Dead-column fix, dampening and the factor U; retries with 10× the damping if H is singular. */
function gptqFactor(hessian: Float64Array, cols: number, damp: number, name: string): Float64Array {
  if (!(hessian instanceof Float64Array) || hessian.length !== cols * cols) {
    throw new UsageError(`${name}: GPTQ needs a [${cols}, ${cols}] float64 Hessian`);
  }
  if (!(damp >= 0)) throw new UsageError(`${name}: bad GPTQ dampening ${damp}`);
  const h = hessian.slice();
  let mean = 0;
  for (let i = 0; i < cols; i++) {
    const ii = i * cols + i;
    if (!Number.isFinite(h[ii]) || h[ii] < 0) {
      throw new InputError(`${name}: Hessian diagonal ${i} is ${h[ii]}`);
    }
    if (h[ii] === 0) h[ii] = 1; // dead column
    mean += h[ii] / cols;
  }
  for (let attempt = 0; attempt < 6; attempt++) {
    const a = h.slice();
    const add = mean * (attempt === 0 ? damp : Math.max(damp, 0.01) * 10 ** attempt);
    for (let i = 0; i < cols; i++) a[i * cols + i] += add;
    const u = upperCholeskyOfInverse(a, cols);
    if (u) return u;
  }
  throw new InputError(`${name}: Hessian is not positive definite even after dampening`);
}
