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
import { dequantize, type QuantBits } from "../schemas/packing.ts";
import type { MatrixName } from "../schemas/model.ts";
import {
  expertImportance,
  normedWeightError,
  sampledExpertError,
  sampledRows,
} from "./data_free.ts";
import { type ExpertWeights, quantizeExpert } from "./expert_weights.ts";
import type { ExpertIR, TensorRef } from "./ir.ts";
import { quantizeMatrix } from "./quantize/mod.ts";

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
  // A router that does not route token by token (top-1 capacity): the router norm stands in.
  const capacity = { ...spec, router: { kind: "capacity" as const, capacity: 4 } };
  assert.deepEqual(expertImportance("routing", capacity, router, g), norms);
});

Deno.test("sampledExpertError: whole small matrices exactly, sampled rows of large ones scaled up", async () => {
  const rng = mulberry32(9);
  const matrix = (name: MatrixName, rows: number, cols: number) => {
    const values = randomArray(rows * cols, rng);
    const weight: TensorRef = {
      name,
      shape: [rows, cols],
      dtype: "F32",
      read: () => Promise.resolve(values),
      readRows: (start, count) =>
        Promise.resolve(values.slice(start * cols, (start + count) * cols)),
    };
    return { name, weight, values };
  };
  const g = randomArray(64, rng, 3);
  // Small: [96, 64] input side, [64, 96] output: every row read, equals normedWeightError.
  const small = [matrix("gate", 96, 64), matrix("up", 96, 64), matrix("down", 64, 96)];
  const expert = (ms: typeof small): ExpertIR => ({
    stack: "decoder",
    layer: 0,
    index: 0,
    activation: { kind: "swiglu" },
    matrices: ms.map(({ name, weight }) => ({ name, weight })),
  });
  const got = await sampledExpertError(expert(small), [2, 4], 32, "rtn", g);
  const w: ExpertWeights = {
    activation: { kind: "swiglu" },
    hidden: 64,
    inter: 96,
    matrices: Object.fromEntries(small.map((m) => [m.name, m.values])),
    biases: {},
  };
  [2, 4].forEach((b, k) => {
    const want = normedWeightError(w, quantizeExpert(w, b as QuantBits, 32, "rtn"), g);
    assert.ok(Math.abs(got[k] - want) <= 1e-9 * want, `${b} bits: ${got[k]} vs ${want}`);
  });
  // Large input-side matrix [2048, 1024] (> 2^20 values): 16 rows in two blocks of 8.
  const big = matrix("gate", 2048, 1024);
  const blocks = sampledRows(2048, 1024);
  assert.equal(blocks.reduce((s, [, n]) => s + n, 0), 16);
  const one = await sampledExpertError(
    { ...expert(small), matrices: [{ name: "gate", weight: big.weight }] },
    [3],
    64,
    "rtn",
    null,
  );
  let want = 0;
  for (const [start, count] of blocks) {
    const rows = big.values.slice(start * 1024, (start + count) * 1024);
    const q = dequantize(
      quantizeMatrix(rows, count, 1024, { bits: 3, groupSize: 64, method: "rtn" }),
    );
    for (let i = 0; i < rows.length; i++) want += (rows[i] - q[i]) ** 2;
  }
  want *= 2048 / 16;
  assert.ok(Math.abs(one[0] - want) <= 1e-9 * want);
});
