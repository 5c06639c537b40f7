/**
 * The float64 arithmetic every block uses: the tiled matmul (a Linear layer over n rows),
 * softmax, the scalar non-linearities, and the one error for a variant the reference lacks.
 *
 * @module
 */

import { UnsupportedError } from "../../schemas/errors.ts";

/** UnsupportedError `<what> is not implemented in the reference`. */
export function notImplemented(what: string): UnsupportedError {
  return new UnsupportedError(`${what} is not implemented in the reference`);
}

/** Σ_c w[wo + c] · x[xo + c] over `cols` values. */
function dot(w: Float64Array, wo: number, x: Float64Array, xo: number, cols: number): number {
  let s = 0;
  for (let c = 0; c < cols; c++) s += w[wo + c] * x[xo + c];
  return s;
}

/**
 * out[t, r] = Σ_c w[r, c] · x[t, c] for n input rows x[t] (a Linear layer, weights [rows, cols]
 * out × in like torch). With n = 1 it is a matvec.
 *
 * For speed the main loop computes a 2-row × 4-input tile at once, so each weight and input value
 * loaded serves several sums; every sum still runs over c in order, so the result is bit-identical
 * to the plain `dot` per (t, r) that handles the leftover rows and inputs.
 */
export function matmul(
  out: Float64Array,
  x: Float64Array,
  w: Float64Array,
  n: number,
  rows: number,
  cols: number,
): void {
  let r = 0;
  for (; r + 2 <= rows; r += 2) {
    const wa = r * cols;
    const wb = wa + cols;
    let t = 0;
    for (; t + 4 <= n; t += 4) {
      const x0 = t * cols, x1 = x0 + cols, x2 = x1 + cols, x3 = x2 + cols;
      let a0 = 0, a1 = 0, a2 = 0, a3 = 0;
      let b0 = 0, b1 = 0, b2 = 0, b3 = 0;
      for (let c = 0; c < cols; c++) {
        const ua = w[wa + c];
        const ub = w[wb + c];
        const v0 = x[x0 + c], v1 = x[x1 + c], v2 = x[x2 + c], v3 = x[x3 + c];
        a0 += ua * v0;
        a1 += ua * v1;
        a2 += ua * v2;
        a3 += ua * v3;
        b0 += ub * v0;
        b1 += ub * v1;
        b2 += ub * v2;
        b3 += ub * v3;
      }
      out[t * rows + r] = a0;
      out[(t + 1) * rows + r] = a1;
      out[(t + 2) * rows + r] = a2;
      out[(t + 3) * rows + r] = a3;
      out[t * rows + r + 1] = b0;
      out[(t + 1) * rows + r + 1] = b1;
      out[(t + 2) * rows + r + 1] = b2;
      out[(t + 3) * rows + r + 1] = b3;
    }
    for (; t < n; t++) {
      out[t * rows + r] = dot(w, wa, x, t * cols, cols);
      out[t * rows + r + 1] = dot(w, wb, x, t * cols, cols);
    }
  }
  for (; r < rows; r++) {
    for (let t = 0; t < n; t++) out[t * rows + r] = dot(w, r * cols, x, t * cols, cols);
  }
}

/** Adds the vector `bias` to each of the n rows of `x` ([n, bias.length]). */
export function addBias(x: Float64Array, bias: Float64Array, n: number): void {
  const w = bias.length;
  for (let t = 0; t < n; t++) {
    for (let i = 0; i < w; i++) x[t * w + i] += bias[i];
  }
}

/** x / (1 + e^(−x)). */
export function silu(x: number): number {
  return x / (1 + Math.exp(-x));
}

/** 1 / (1 + e^(−x)). */
export function sigmoid(x: number): number {
  return 1 / (1 + Math.exp(-x));
}

/** In-place softmax over `x[0..n)` (max-subtracted, float64). */
export function softmax(x: Float64Array, n = x.length): void {
  let max = -Infinity;
  for (let i = 0; i < n; i++) if (x[i] > max) max = x[i];
  let sum = 0;
  for (let i = 0; i < n; i++) {
    x[i] = Math.exp(x[i] - max);
    sum += x[i];
  }
  for (let i = 0; i < n; i++) x[i] /= sum;
}
