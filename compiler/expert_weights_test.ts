/**
 * Expert weights for every activation: the activation outputs taken through the reference's `mlp`
 * and the GPTQ Hessians built from them, checked against a float64 computation written here from
 * the formulas in schemas/model.ts, on random non-zero data (relative tolerance 1e-12: the two
 * computations differ only in the rounding of the activation's formula); quantization keeps every
 * matrix's shape, two-matrix experts included; swapping into a reference model is undone.
 *
 * @module
 */

import assert from "node:assert/strict";
import type { ActivationSpec } from "../schemas/model.ts";
import { mulberry32 } from "../schemas/prng.ts";
import { dequantize } from "../schemas/packing.ts";
import {
  activationOutputs,
  expertBytes,
  expertHessians,
  expertOutputs,
  type ExpertWeights,
  matrixNames,
  outputMatrix,
  quantizeExpert,
  readExpert,
  referenceExpert,
  swapExpert,
  toReferenceMlp,
} from "./expert_weights.ts";
import type { ExpertIR, TensorRef } from "./ir.ts";
import { quantizeMatrix } from "./quantize/mod.ts";
import type { ReferenceModel } from "./reference/mod.ts";
import { checkActivation } from "./reference/mlp.ts";

const ACTIVATIONS: ActivationSpec[] = [
  { kind: "swiglu" },
  { kind: "swiglu_clamped", limit: 0.3, alpha: 1.702 },
  { kind: "geglu" },
  { kind: "relu" },
];

/** The activations the float64 reference implements (SwiGLU at least): what `mlp` can run. */
const RUNNABLE = ACTIVATIONS.filter((a) => {
  try {
    checkActivation(a);
    return true;
  } catch {
    return false;
  }
});

/** Random non-zero values in [−s, −s/100] ∪ [s/100, s]. */
function nonZero(n: number, seed: number, s = 1): Float32Array {
  const rng = mulberry32(seed);
  return Float32Array.from({ length: n }, () => {
    const m = s * (0.01 + 0.99 * rng());
    return rng() < 0.5 ? -m : m;
  });
}

/** A random expert (H = 40, I = 96: more than one H-block of activation outputs), with biases. */
function randomExpert(activation: ActivationSpec, seed: number, H = 40, I = 96): ExpertWeights {
  const w: ExpertWeights = { activation, hidden: H, inter: I, matrices: {}, biases: {} };
  const out = outputMatrix(activation);
  matrixNames(w).forEach((name, k) => {
    const rows = name === out ? H : I;
    const cols = name === out ? I : H;
    w.matrices[name] = nonZero(rows * cols, seed * 10 + k, 0.2);
    w.biases[name] = nonZero(rows, seed * 10 + k + 5, 0.1);
  });
  return w;
}

/** The activation's output for one row, from the formulas of schemas/model.ts. */
function activationByHand(
  act: ActivationSpec,
  first: Float64Array,
  second: Float64Array | null,
): Float64Array {
  const sigmoid = (x: number) => 1 / (1 + Math.exp(-x));
  return first.map((g, i) => {
    const u = second ? second[i] : 0;
    switch (act.kind) {
      case "swiglu":
        return g * sigmoid(g) * u;
      case "swiglu_clamped": {
        const gc = Math.min(g, act.limit);
        const uc = Math.min(Math.max(u, -act.limit), act.limit);
        return (uc + 1) * gc * sigmoid(act.alpha * gc);
      }
      case "geglu":
        return 0.5 * g * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (g + 0.044715 * g ** 3))) * u;
      case "relu":
        return Math.max(g, 0);
    }
  });
}

/** y = W x + b for one row, W [rows, cols]. */
function linear(w: Float32Array, b: Float32Array | undefined, x: ArrayLike<number>, rows: number) {
  const cols = x.length;
  return Float64Array.from({ length: rows }, (_, r) => {
    let s = b ? b[r] : 0;
    for (let c = 0; c < cols; c++) s += w[r * cols + c] * x[c];
    return s;
  });
}

function assertClose(got: ArrayLike<number>, want: ArrayLike<number>, tol: number, what: string) {
  assert.equal(got.length, want.length, what);
  let scale = 0;
  for (let i = 0; i < want.length; i++) scale = Math.max(scale, Math.abs(want[i]));
  assert.ok(scale > 0, `${what}: all zero`);
  for (let i = 0; i < want.length; i++) {
    const d = Math.abs(got[i] - want[i]);
    assert.ok(d <= tol * scale, `${what}[${i}]: ${got[i]} vs ${want[i]}`);
  }
}

Deno.test("activationOutputs and expertOutputs: every activation against a float64 computation (1e-12)", () => {
  assert.ok(RUNNABLE.some((a) => a.kind === "swiglu"));
  const n = 5;
  for (const [k, act] of RUNNABLE.entries()) {
    const w = randomExpert(act, k + 1);
    const { hidden: H, inter: I } = w;
    const x = Float64Array.from(nonZero(n * H, 100 + k));
    const a = activationOutputs(w, x, n);
    const y = expertOutputs(w, Float32Array.from(x), n);
    const names = matrixNames(w);
    const inputs = names.slice(0, -1);
    for (let t = 0; t < n; t++) {
      const xt = x.subarray(t * H, (t + 1) * H);
      const [first, second] = inputs.map((name) =>
        linear(w.matrices[name]!, w.biases[name], xt, I)
      );
      const want = activationByHand(act, first, second ?? null);
      assertClose(a.subarray(t * I, (t + 1) * I), want, 1e-12, `${act.kind} a[${t}]`);
      const out = outputMatrix(act);
      const yWant = linear(w.matrices[out]!, w.biases[out], want, H);
      assertClose(y.subarray(t * H, (t + 1) * H), yWant, 1e-12, `${act.kind} y[${t}]`);
    }
  }
});

Deno.test("expertHessians: 2·XᵀX/n of the inputs and of the activation outputs (1e-12)", () => {
  const n = 7;
  for (const [k, act] of RUNNABLE.entries()) {
    const w = randomExpert(act, 20 + k);
    const { hidden: H, inter: I } = w;
    const inputs = nonZero(n * H, 200 + k);
    const sample = { n, seen: n, inputs, weights: new Float32Array(n).fill(1) };
    const h = expertHessians(w, sample);
    const a = activationOutputs(w, Float64Array.from(inputs), n);
    const gram = (v: ArrayLike<number>, d: number) => {
      const g = new Float64Array(d * d);
      for (let t = 0; t < n; t++) {
        for (let i = 0; i < d; i++) {
          for (let j = 0; j < d; j++) g[i * d + j] += (2 / n) * v[t * d + i] * v[t * d + j];
        }
      }
      return g;
    };
    assertClose(h.input, gram(inputs, H), 1e-12, `${act.kind} input Hessian`);
    assertClose(h.output, gram(a, I), 1e-12, `${act.kind} output Hessian`);
  }
});

Deno.test("quantizeExpert: every matrix at its shape and width, biases kept, GPTQ sides right", () => {
  for (const [k, act] of ACTIVATIONS.entries()) {
    const w = randomExpert(act, 40 + k, 64, 96);
    const q = quantizeExpert(w, 3, 32, "rtn");
    const out = outputMatrix(act);
    for (const name of matrixNames(w)) {
      const [rows, cols] = name === out ? [64, 96] : [96, 64];
      const want = dequantize(
        quantizeMatrix(w.matrices[name]!, rows, cols, { bits: 3, groupSize: 32, method: "rtn" }),
      );
      assert.deepEqual(q.matrices[name], want, `${act.kind} ${name}`);
      assert.equal(q.biases[name], w.biases[name]);
    }
    assert.throws(() => quantizeExpert(w, 4, 32, "gptq"), /needs a Hessian/);
    if (!RUNNABLE.includes(act)) continue;
    // GPTQ: the input Hessian is [H, H], the output one [I, I]; swapped sides would throw.
    const inputs = nonZero(80 * 64, 300 + k);
    const sample = { n: 80, seen: 80, inputs, weights: new Float32Array(80) };
    const g = quantizeExpert(w, 4, 32, "gptq", expertHessians(w, sample));
    assert.equal(Object.keys(g.matrices).length, matrixNames(w).length);
  }
  // Stored bytes at 2 bits, group 32: codes rows·cols/4 bytes, f16 scale + zero per group.
  assert.equal(
    expertBytes([[96, 64], [64, 96]], 2, 32),
    2 * (96 * 64 * 2 / 8 + 96 * 2 * 2 * 2),
  );
});

Deno.test("readExpert: a two-matrix expert of the IR, matrices and biases by name", async () => {
  const ref = (name: string, shape: number[], data: Float32Array): TensorRef => ({
    name,
    shape,
    dtype: "F32",
    read: () => Promise.resolve(data.slice()),
  });
  const up = nonZero(6 * 4, 1), down = nonZero(4 * 6, 2), upBias = nonZero(6, 3);
  const e: ExpertIR = {
    stack: "encoder",
    layer: 1,
    index: 2,
    activation: { kind: "relu" },
    matrices: [
      { name: "up", weight: ref("wi", [6, 4], up), bias: ref("wi.b", [6], upBias) },
      { name: "down", weight: ref("wo", [4, 6], down) },
    ],
  };
  const w = await readExpert(e);
  assert.deepEqual([w.hidden, w.inter, Object.keys(w.matrices)], [4, 6, ["up", "down"]]);
  assert.deepEqual(w.matrices.up, up);
  assert.deepEqual(w.biases.up, upBias);
  assert.equal(w.biases.down, undefined);
});

Deno.test("referenceExpert / swapExpert: by MoE layer, restored, shape checked", () => {
  const relu = randomExpert({ kind: "relu" }, 50, 8, 8);
  const other = randomExpert({ kind: "relu" }, 51, 8, 8);
  const model = {
    spec: { hiddenSize: 8 },
    moe: [{ experts: [toReferenceMlp(relu), toReferenceMlp(other)] }],
  } as unknown as ReferenceModel;
  const got = referenceExpert(model, 0, 0);
  assert.deepEqual(got.matrices, relu.matrices);
  assert.deepEqual(got.biases, relu.biases);
  const before = model.moe[0].experts[1];
  const q = quantizeExpert(referenceExpert(model, 0, 1), 2, 8, "rtn");
  const restore = swapExpert(model, 0, 1, q);
  assert.notEqual(model.moe[0].experts[1], before);
  assert.deepEqual(model.moe[0].experts[1].matrices.up, Float64Array.from(q.matrices.up!));
  restore();
  assert.equal(model.moe[0].experts[1], before);
  assert.throws(() => swapExpert(model, 0, 0, randomExpert({ kind: "relu" }, 52, 8, 16)), /shape/);
  assert.throws(() => referenceExpert(model, 1, 0), /no expert 0 in MoE layer 1/);
});
