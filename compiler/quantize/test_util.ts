/**
 * Seeded random data for the quantizer tests (not part of the public API).
 *
 * @module
 */

import { mulberry32 } from "../../schemas/prng.ts";
import assert from "node:assert/strict";
import { groupsPerRow } from "../../schemas/packing.ts";
import type { UnpackedQuant } from "./common.ts";

/** A seeded uniform generator on [0, 1) (mulberry32, schemas/prng.ts). */
export const rng: (seed: number) => () => number = mulberry32;

/** A standard normal sampler (Box-Muller) driven by `u`. */
export function normal(u: () => number): () => number {
  return () => Math.sqrt(-2 * Math.log(1 - u())) * Math.cos(2 * Math.PI * u());
}

/** n i.i.d. N(0, std²) values as f32. */
export function gaussianMatrix(n: number, std: number, seed: number): Float32Array {
  const g = normal(rng(seed));
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = std * g();
  return out;
}

/** n i.i.d. Student-t (ν = 3) values scaled by `scale`: heavy tails, like LLM weight outliers. */
export function heavyTailedMatrix(n: number, scale: number, seed: number): Float32Array {
  const g = normal(rng(seed));
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    const chi2 = g() ** 2 + g() ** 2 + g() ** 2;
    out[i] = scale * g() / Math.sqrt(chi2 / 3);
  }
  return out;
}

/** Float64 value of code q at (r, c) under u's params: (q − zero) · scale. */
export function value64(u: UnpackedQuant, r: number, c: number, q: number): number {
  const g = r * groupsPerRow(u.cols, u.groupSize) + Math.floor(c / u.groupSize);
  return (q - u.zeros[g]) * u.scales[g];
}

/** Asserts every code is in range and is the nearest grid point to its weight (float64). */
export function assertNearest(w: Float32Array, u: UnpackedQuant): void {
  const qmax = (1 << u.bits) - 1;
  for (let r = 0; r < u.rows; r++) {
    for (let c = 0; c < u.cols; c++) {
      const q = u.codes[r * u.cols + c];
      assert.ok(q <= qmax, `code ${q} out of range`);
      const x = w[r * u.cols + c];
      const d = Math.abs(x - value64(u, r, c, q));
      for (const q2 of [q - 1, q + 1]) {
        if (q2 < 0 || q2 > qmax) continue;
        const d2 = Math.abs(x - value64(u, r, c, q2));
        assert.ok(d <= d2 + 1e-12 * Math.abs(x), `[${r},${c}]: code ${q} not nearest`);
      }
    }
  }
}
