/**
 * Data-free costs against direct float64 computations on random non-zero weights: the
 * input-norm-scaled error, the router importance, and the routing importance on a case whose
 * answer is known (two opposite router rows, top-1: each expert takes half the isotropic inputs
 * with weight 1).
 *
 * @module
 */

import assert from "node:assert/strict";
import { mlp as mlpSpec, moe } from "../schemas/example_specs.ts";
import { mulberry32 } from "../schemas/prng.ts";
import { expertImportance, normedWeightError } from "./data_free.ts";
import { type ExpertWeights, quantizeExpert } from "./expert_weights.ts";

const H = 32, I = 64;

function randomArray(n: number, rng: () => number, scale = 1): Float32Array {
  return Float32Array.from({ length: n }, () => (rng() - 0.5) * scale);
}

Deno.test("normedWeightError: input-side columns scaled by g, output matrix plain", () => {
  const rng = mulberry32(3);
  const w: ExpertWeights = {
    activation: { kind: "swiglu" },
    hidden: H,
    inter: I,
    matrices: {
      gate: randomArray(I * H, rng),
      up: randomArray(I * H, rng),
      down: randomArray(H * I, rng),
    },
    biases: {},
  };
  const q = quantizeExpert(w, 2, 32, "rtn");
  const g = randomArray(H, rng, 4);
  let want = 0;
  for (const name of ["gate", "up"] as const) {
    for (let r = 0; r < I; r++) {
      for (let c = 0; c < H; c++) {
        const d = (w.matrices[name]![r * H + c] - q.matrices[name]![r * H + c]) * g[c];
        want += d * d;
      }
    }
  }
  for (let i = 0; i < H * I; i++) want += (w.matrices.down![i] - q.matrices.down![i]) ** 2;
  const got = normedWeightError(w, q, g);
  assert.ok(Math.abs(got - want) <= 1e-12 * want, `${got} vs ${want}`);
  assert.ok(got > 0);
});

Deno.test("expertImportance: router norms and routing shares", () => {
  const rng = mulberry32(5);
  const spec = moe(2, 1, mlpSpec(I));
  const v = randomArray(H, rng);
  const router = new Float32Array(2 * H);
  for (let c = 0; c < H; c++) [router[c], router[H + c]] = [v[c], -v[c]];
  const g = randomArray(H, rng, 2);
  const norms = expertImportance("router", spec, router, g);
  let s = 0;
  for (let c = 0; c < H; c++) s += (v[c] * g[c]) ** 2;
  assert.ok(Math.abs(norms[0] - Math.sqrt(s)) < 1e-9 && Math.abs(norms[1] - norms[0]) < 1e-9);
  assert.deepEqual(expertImportance("none", spec, router, g), [1, 1]);
  const share = expertImportance("routing", spec, router, g);
  assert.ok(Math.abs(share[0] - 0.5) < 0.06 && Math.abs(share[1] - 0.5) < 0.06, `${share}`);
  assert.ok(Math.abs(share[0] + share[1] - 1) < 1e-12);
  // A router the reference does not run: the router norm stands in.
  const capacity = { ...spec, router: { ...spec.router, scoring: "sigmoid" as const } };
  assert.deepEqual(expertImportance("routing", capacity, router, g), norms);
});
