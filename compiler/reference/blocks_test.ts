// Unit tests of the reference blocks against values computed by hand (in the comments).

import assert from "node:assert/strict";
import { UnsupportedError } from "../../schemas/errors.ts";
import type { AttentionSpec, GqaAttentionSpec, RopeSpec, RouterSpec } from "../../schemas/model.ts";
import { attention, checkAttention } from "./attention.ts";
import { crossEntropyBits, windows } from "./eval.ts";
import { matmul, silu, softmax } from "./math.ts";
import { checkActivation, mlp, type ReferenceMlp } from "./mlp.ts";
import { checkNorm, layerNorm, rmsNorm } from "./norms.ts";
import { prepareRope, rope, ropeInvFreq } from "./rope.ts";
import { checkRouter, route } from "./router.ts";
import { sparsemixer } from "./sparsemixer.ts";

function assertClose(got: ArrayLike<number>, want: ArrayLike<number>, tol: number, what = "") {
  assert.equal(got.length, want.length, `${what} length`);
  for (let i = 0; i < want.length; i++) {
    assert.ok(
      Math.abs(got[i] - want[i]) <= tol,
      `${what}[${i}]: got ${got[i]}, want ${want[i]} (tol ${tol})`,
    );
  }
}

/** Deterministic non-zero pseudo-random values in [-1, 1) (LCG). */
function randomArray(n: number, seed: number): Float64Array {
  const out = new Float64Array(n);
  let s = seed >>> 0;
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    out[i] = s / 2 ** 31 - 1 || 0.5;
  }
  return out;
}

Deno.test("rmsNorm: x=[1,2,3,4], w=[1,1,2,0.5]: mean(x²)=7.5, out = x·w/√7.5", () => {
  const out = new Float64Array(4);
  rmsNorm(out, Float64Array.of(1, 2, 3, 4), Float64Array.of(1, 1, 2, 0.5), 0);
  const r = 0.3651483716701107; // 1/√7.5
  assertClose(out, [r, 2 * r, 6 * r, 2 * r], 1e-15, "rmsNorm");
  // eps enters under the root: x=[3,4], w=1, eps=0.5 → 1/√(12.5+0.5)
  rmsNorm(out.subarray(0, 2), Float64Array.of(3, 4), Float64Array.of(1, 1), 0.5);
  assertClose(out.subarray(0, 2), [3 / Math.sqrt(13), 4 / Math.sqrt(13)], 1e-15, "eps");
});

Deno.test("layerNorm: x=[1,2,3,6]: mean 3, var 3.5, out = (x−3)·w/√(3.5+eps) + b", () => {
  const out = new Float64Array(4);
  const w = Float64Array.of(1, 2, 0.5, -1);
  const b = Float64Array.of(0.1, 0, -0.2, 0.3);
  layerNorm(out, Float64Array.of(1, 2, 3, 6), w, b, 0.5);
  const r = 1 / Math.sqrt(4); // var 3.5 + eps 0.5
  assertClose(out, [-2 * r + 0.1, -1 * r * 2, -0.2, -3 * r + 0.3], 1e-15, "layerNorm");
  layerNorm(out, Float64Array.of(1, 2, 3, 6), w, null, 0.5);
  assertClose(out, [-2 * r, -2 * r, 0, -3 * r], 1e-15, "no bias");
});

Deno.test("sparsemixer: s=[2, 1.5, −1, 1.9], jitter 0.1: masks by (m − s)/max(|s|, m) > 0.2", () => {
  const s = Float64Array.of(2, 1.5, -1, 1.9);
  // Round 1: m = 2; ratios [0, 0.25, 1.5, 0.05] → keep 0 and 3: w₁ = e²/(e² + e^1.9).
  // Round 2: expert 0 out, m = 1.9; ratios (1.9 − s)/max(|s|, 1.9) = [·, 0.21, 1.53, 0] → keep 3
  // only: w₂ = 1.
  const r = sparsemixer(s, 0.1);
  assert.deepEqual(r.experts, [0, 3]);
  assertClose(r.weights, [1 / (1 + Math.exp(-0.1)), 1], 1e-15, "weights");
  // A larger jitter keeps expert 1 in both rounds.
  const wide = sparsemixer(s, 0.2);
  const z1 = Math.exp(2) + Math.exp(1.5) + Math.exp(1.9);
  assertClose(
    wide.weights,
    [Math.exp(2) / z1, Math.exp(1.9) / (Math.exp(1.5) + Math.exp(1.9))],
    1e-15,
  );
});

Deno.test("attention with a sink and a window: keys 1..2 of 0..2 plus the sink logit", () => {
  // hd 1, scale 1, q = 1, keys 1,2,3, values 10,20,30, window 2, sink 0.5: the weights are
  // e²/Z, e³/Z with Z = e² + e³ + e^0.5 (the sink's share is dropped).
  const out = new Float64Array(1);
  const extras = { sinks: Float64Array.of(0.5), window: 2 };
  const keys = Float64Array.of(1, 2, 3), values = Float64Array.of(10, 20, 30);
  attention(out, Float64Array.of(1), keys, values, 3, 1, 1, 1, 1, new Float64Array(4), extras);
  const z = Math.exp(2) + Math.exp(3) + Math.exp(0.5);
  assertClose(out, [(20 * Math.exp(2) + 30 * Math.exp(3)) / z], 1e-13, "sink + window");
  // A window at least as long as the keys masks nothing.
  attention(out, Float64Array.of(1), keys, values, 3, 1, 1, 1, 1, new Float64Array(4), {
    window: 3,
  });
  const z3 = Math.exp(1) + Math.exp(2) + Math.exp(3);
  assertClose(out, [(10 * Math.exp(1) + 20 * Math.exp(2) + 30 * Math.exp(3)) / z3], 1e-13);
});

Deno.test("clamped SwiGLU with biases: gate ≤ 7, up ∈ [−7, 7], (up + 1)·gate·σ(1.702·gate)", () => {
  const m: ReferenceMlp = {
    activation: { kind: "swiglu_clamped", limit: 7, alpha: 1.702 },
    inter: 1,
    matrices: { gate: Float64Array.of(1), up: Float64Array.of(2), down: Float64Array.of(0.5) },
    biases: { gate: Float64Array.of(1), up: Float64Array.of(-1), down: Float64Array.of(0.25) },
  };
  const out = new Float64Array(3);
  mlp(out, Float64Array.of(9, -9, 0.5), 3, m, 1);
  const act = (g: number, u: number) => {
    const gc = Math.min(g, 7), uc = Math.min(7, Math.max(-7, u));
    return (uc + 1) * gc / (1 + Math.exp(-1.702 * gc));
  };
  // x = 9: gate 10 → 7, up 17 → 7; x = −9: gate −8, up −19 → −7; x = 0.5: gate 1.5, up 0.
  const want = [act(10, 17), act(-8, -19), act(1.5, 0)].map((a) => 0.5 * a + 0.25);
  assertClose(out, want, 1e-14, "clamped swiglu");
});

Deno.test("route, softmax after top-k: the k largest logits, weights a softmax over them", () => {
  const r = route(Float64Array.of(1, 3, 2, 0), 2, {
    normTopK: false,
    scale: 1,
    softmaxAfterTopK: true,
  });
  assert.deepEqual(r.experts, [1, 2]);
  assertClose(r.weights, [1 / (1 + Math.exp(-1)), Math.exp(-1) / (1 + Math.exp(-1))], 1e-15);
});

Deno.test("YaRN frequencies equal transformers 5.18's (gpt-oss-a's RoPE, truncate off and on)", () => {
  const yarn = (truncate: boolean): RopeSpec => ({
    kind: "rope",
    theta: 150000,
    rotaryDim: 8,
    pairing: "half",
    scaling: {
      kind: "yarn",
      factor: 32,
      originalMaxPositions: 4096,
      betaFast: 32,
      betaSlow: 1,
      attentionFactor: 0.1 * Math.log(32) + 1,
      truncate,
    },
  });
  // _compute_yarn_parameters with float64 defaults (its pos_freqs are float32: rel 1e-7).
  const hf = {
    false: [1.0, 0.05081327259540558, 0.0004564839182421565, 4.099978468730114e-06],
    true: [1.0, 0.05081327259540558, 0.001331338076852262, 4.099978468730114e-06],
  };
  for (const truncate of [false, true]) {
    const r = prepareRope(yarn(truncate), 8);
    hf[`${truncate}`].forEach((want, i) => {
      assert.ok(Math.abs(r.invFreq[i] - want) <= 1e-7 * want, `truncate ${truncate} [${i}]`);
    });
    assertClose([r.mscale], [1.3465735902799727], 1e-15, "attention factor");
  }
});

Deno.test("matmul: [2,3]·[3] and two inputs at once", () => {
  const w = Float64Array.of(1, 2, 3, -1, 0.5, 4); // rows [1,2,3], [-1,0.5,4]
  const x = Float64Array.of(2, -1, 0.5, 1, 1, 1);
  const out = new Float64Array(4);
  matmul(out, x, w, 2, 2, 3);
  // x0=[2,-1,.5]: 2-2+1.5=1.5, -2-0.5+2=-0.5; x1=[1,1,1]: 6, 3.5
  assertClose(out, [1.5, -0.5, 6, 3.5], 0, "matmul");
});

Deno.test("matmul: tiled loops equal a plain per-(t, r) dot exactly, tails included", () => {
  for (const [n, rows, cols] of [[7, 5, 9], [4, 2, 3], [1, 3, 16], [9, 8, 1]]) {
    const x = randomArray(n * cols, n + rows);
    const w = randomArray(rows * cols, cols);
    const out = new Float64Array(n * rows);
    matmul(out, x, w, n, rows, cols);
    for (let t = 0; t < n; t++) {
      for (let r = 0; r < rows; r++) {
        let s = 0;
        for (let c = 0; c < cols; c++) s += w[r * cols + c] * x[t * cols + c];
        assert.equal(out[t * rows + r], s, `[${n},${rows},${cols}] t=${t} r=${r}`);
      }
    }
  }
});

Deno.test("rope: hand values at position 1, θ=10000, hd=4 (invFreq = [1, 0.01])", () => {
  const inv = ropeInvFreq(4, 10000);
  assertClose(inv, [1, 0.01], 1e-18, "invFreq");
  const v = Float64Array.of(1, 2, 3, 4);
  rope(
    v,
    1,
    4,
    Float64Array.of(Math.cos(1), Math.cos(0.01)),
    Float64Array.of(Math.sin(1), Math.sin(0.01)),
  );
  // pairs (x_i, x_{i+2}): (1,3) by angle 1, (2,4) by angle 0.01
  const c1 = 0.5403023058681398, s1 = 0.8414709848078965;
  const c2 = 0.9999500004166653, s2 = 0.009999833334166664;
  assertClose(v, [1 * c1 - 3 * s1, 2 * c2 - 4 * s2, 3 * c1 + 1 * s1, 4 * c2 + 2 * s2], 1e-15);
});

Deno.test("rope: q·k after rotation depends only on the position difference", () => {
  const hd = 8;
  const inv = ropeInvFreq(hd, 10000);
  const at = (x: Float64Array, pos: number) => {
    const y = x.slice();
    rope(y, 1, hd, inv.map((f) => Math.cos(pos * f)), inv.map((f) => Math.sin(pos * f)));
    return y;
  };
  const q = randomArray(hd, 1);
  const k = randomArray(hd, 2);
  const dot = (a: Float64Array, b: Float64Array) => a.reduce((s, ai, i) => s + ai * b[i], 0);
  const d1 = dot(at(q, 7), at(k, 3));
  const d2 = dot(at(q, 104), at(k, 100));
  assert.ok(Math.abs(d1 - d2) < 1e-12, `${d1} vs ${d2}`);
  assert.ok(Math.abs(d1 - dot(q, k)) > 1e-3, "rotation changes the dot product");
  // norm is preserved, position 0 is the identity
  assert.ok(Math.abs(dot(at(q, 50), at(q, 50)) - dot(q, q)) < 1e-12);
  assertClose(at(q, 0), q, 0, "pos 0");
});

Deno.test("softmax and silu: hand values", () => {
  const p = Float64Array.of(0, Math.log(3), 1000); // huge logit must not overflow
  softmax(p, 2);
  assertClose(p.subarray(0, 2), [0.25, 0.75], 1e-15, "softmax");
  assert.ok(Math.abs(silu(1) - 0.7310585786300049) < 1e-15); // 1/(1+e^-1)
  assert.ok(Math.abs(silu(-2) - -0.2384058440442351) < 1e-15); // -2/(1+e^2)
});

Deno.test("route: top-k, renormalisation on and off, scale", () => {
  // probabilities ∝ [1, 3, 2, 4] / 10
  const logits = Float64Array.of(0, Math.log(3), Math.log(2), Math.log(4));
  const raw = route(logits, 2, { normTopK: false, scale: 1 });
  assert.deepEqual(raw.experts, [3, 1]);
  assertClose(raw.weights, [0.4, 0.3], 1e-15, "raw");
  const norm = route(logits, 2, { normTopK: true, scale: 1 });
  assert.deepEqual(norm.experts, [3, 1]);
  assertClose(norm.weights, [4 / 7, 3 / 7], 1e-15, "normTopK");
  const scaled = route(logits, 2, { normTopK: true, scale: 2.5 });
  assertClose(scaled.weights, [10 / 7, 7.5 / 7], 1e-15, "scale after renormalisation");
  // does not modify its input
  assertClose(logits, [0, Math.log(3), Math.log(2), Math.log(4)], 0, "input");
});

Deno.test("route: ties go to the lower expert index", () => {
  const plain = { normTopK: false, scale: 1 };
  const renorm = { normTopK: true, scale: 1 };
  const tied = route(Float64Array.of(0, 1, 1, 0), 2, plain); // p ∝ [1, e, e, 1]
  assert.deepEqual(tied.experts, [1, 2]);
  const e = Math.E;
  assertClose(tied.weights, [e / (2 + 2 * e), e / (2 + 2 * e)], 1e-15, "tied");
  assert.deepEqual(route(new Float64Array(4), 3, renorm).experts, [0, 1, 2]);
  assertClose(route(new Float64Array(4), 3, renorm).weights, [1 / 3, 1 / 3, 1 / 3], 1e-15);
});

Deno.test("attention: GQA with hand values (2 query heads share 1 kv head, hd=2)", () => {
  // keys k0=[1,0], k1=[0,1]; values v0=[1,2], v1=[3,4]; scale 1/√2
  const keys = Float64Array.of(1, 0, 0, 1);
  const values = Float64Array.of(1, 2, 3, 4);
  const q = Float64Array.of(Math.SQRT2 * Math.log(3), 0, 0, 0); // head 0 scores [ln3, 0]; head 1 [0, 0]
  const out = new Float64Array(4);
  attention(out, q, keys, values, 2, 2, 1, 2, Math.SQRT1_2, new Float64Array(2));
  // head 0: p = [3/4, 1/4] → [1.5, 2.5]; head 1: p = [1/2, 1/2] → [2, 3]
  assertClose(out, [1.5, 2.5, 2, 3], 1e-14, "attention");
  // causal: with one key only, the output is v0 whatever q is
  attention(out, q, keys, values, 1, 2, 1, 2, Math.SQRT1_2, new Float64Array(2));
  assertClose(out, [1, 2, 1, 2], 0, "one key");
});

Deno.test("windows: plan of tiny_moe.py bpb", () => {
  assert.deepEqual(windows(10, 4), [
    { start: 0, length: 4 },
    { start: 4, length: 4 },
    { start: 8, length: 1 },
  ]);
  // n = 9: the window at 8 would have nothing to predict
  assert.deepEqual(windows(9, 4), [{ start: 0, length: 4 }, { start: 4, length: 4 }]);
  assert.deepEqual(windows(1, 4), []);
  const plan = windows(16384, 128);
  assert.equal(plan.length, 128);
  assert.equal(plan.reduce((s, w) => s + w.length, 0), 16383);
  assert.throws(() => windows(10, 0), /context/);
});

Deno.test("crossEntropyBits: uniform, hand value, large logits", () => {
  assert.ok(Math.abs(crossEntropyBits([0, 0, 0, 0], 2) - 2) < 1e-15);
  // p(target) = 3/4 → -log2(0.75)
  assert.ok(Math.abs(crossEntropyBits([0, Math.log(3)], 1) - 0.41503749927884376) < 1e-15);
  assert.ok(Math.abs(crossEntropyBits([1000, 1000], 0) - 1) < 1e-12);
});

Deno.test("rope: partial rotaryDim rotates the first dims of each head, the rest pass through", () => {
  // hd = 6, rotaryDim = 4: pairs (0, 2) and (1, 3) per head, dims 4 and 5 untouched;
  // invFreq over rotaryDim: [1, θ^(−1/2)] with θ = 100 → [1, 0.1]
  const inv = ropeInvFreq(4, 100);
  assertClose(inv, [1, 0.1], 1e-16, "invFreq");
  const pos = 3;
  const cos = inv.map((f) => Math.cos(pos * f));
  const sin = inv.map((f) => Math.sin(pos * f));
  const v = Float64Array.of(1, 2, 3, 4, 5, 6, -1, -2, -3, -4, -5, -6); // two heads
  rope(v, 2, 6, cos, sin, 4);
  const want = (s: number) => [
    s * (1 * cos[0] - 3 * sin[0]),
    s * (2 * cos[1] - 4 * sin[1]),
    s * (3 * cos[0] + 1 * sin[0]),
    s * (4 * cos[1] + 2 * sin[1]),
    s * 5,
    s * 6,
  ];
  assertClose(v, [...want(1), ...want(-1)], 1e-15, "partial rope");
});

Deno.test("attention: the scale multiplies q·k before the softmax", () => {
  // one head, hd = 1: keys [1, 2], values [10, 20], q = 1; scale 0.5 → scores [0.5, 1]
  const out = new Float64Array(1);
  attention(
    out,
    Float64Array.of(1),
    Float64Array.of(1, 2),
    Float64Array.of(10, 20),
    2,
    1,
    1,
    1,
    0.5,
    new Float64Array(2),
  );
  const p1 = Math.exp(1) / (Math.exp(0.5) + Math.exp(1));
  assertClose(out, [10 * (1 - p1) + 20 * p1], 1e-14, "scaled");
});

Deno.test("mlp: SwiGLU with biases, hand values; without biases equals the naive loops", () => {
  // H = 2, I = 1: g = [1, 2]·x + 0.5, u = [1, −1]·x + 0.25, out = [2, 3]·silu(g)u + [1, −1]
  const m: ReferenceMlp = {
    activation: { kind: "swiglu" },
    inter: 1,
    matrices: {
      gate: Float64Array.of(1, 2),
      up: Float64Array.of(1, -1),
      down: Float64Array.of(2, 3),
    },
    biases: { gate: Float64Array.of(0.5), up: Float64Array.of(0.25), down: Float64Array.of(1, -1) },
  };
  const out = new Float64Array(2);
  mlp(out, Float64Array.of(1, 1), 1, m, 2); // g = 3.5, u = 0.25
  const a = silu(3.5) * 0.25;
  assertClose(out, [2 * a + 1, 3 * a - 1], 1e-15, "biased");

  const [n, H, I] = [3, 5, 4];
  const x = randomArray(n * H, 7);
  const plain: ReferenceMlp = {
    activation: { kind: "swiglu" },
    inter: I,
    matrices: {
      gate: randomArray(I * H, 1),
      up: randomArray(I * H, 2),
      down: randomArray(H * I, 3),
    },
    biases: {},
  };
  const got = new Float64Array(n * H);
  mlp(got, x, n, plain, H);
  const { gate, up, down } = plain.matrices as Record<string, Float64Array>;
  for (let t = 0; t < n; t++) {
    const act = Array.from({ length: I }, (_, i) => {
      let g = 0, u = 0;
      for (let c = 0; c < H; c++) {
        g += gate[i * H + c] * x[t * H + c];
        u += up[i * H + c] * x[t * H + c];
      }
      return silu(g) * u;
    });
    for (let r = 0; r < H; r++) {
      let s = 0;
      for (let i = 0; i < I; i++) s += down[r * I + i] * act[i];
      assert.ok(Math.abs(got[t * H + r] - s) < 1e-14, `t=${t} r=${r}`);
    }
  }
});

Deno.test("variants the reference lacks are an UnsupportedError naming them", () => {
  const gqa: GqaAttentionSpec = {
    kind: "gqa",
    numHeads: 2,
    numKvHeads: 1,
    headDim: 4,
    qkvBias: false,
    outBias: false,
    qkNorm: "none",
    qkNormSpec: { kind: "rms", eps: 1e-6, bias: false },
    clipQkv: null,
    scale: 0.5,
    sinks: false,
    slidingWindow: null,
    causal: true,
    position: {
      kind: "rope",
      theta: 1e4,
      rotaryDim: 4,
      pairing: "half",
      scaling: { kind: "none" },
    },
  };
  assert.equal(checkAttention(gqa), gqa);
  const mla = { kind: "mla" } as AttentionSpec;
  const topk: RouterSpec = {
    kind: "topk",
    scoring: "softmax",
    softmaxAfterTopK: false,
    normTopK: true,
    scale: 1,
    bias: false,
    selectionBias: false,
    groups: null,
  };
  assert.equal(checkRouter(topk), topk);
  const cases: [() => unknown, string][] = [
    [() => checkAttention(mla), 'attention kind "mla" is not implemented in the reference'],
    [() => checkActivation({ kind: "geglu" }), 'activation "geglu"'],
    [
      () => checkRouter({ ...topk, scoring: "sigmoid", softmaxAfterTopK: true }),
      "softmax after top-k with sigmoid scores",
    ],
    [() => checkRouter({ kind: "capacity", capacity: 4 }), 'router kind "capacity"'],
    [() => checkNorm({ kind: "rms", eps: 1e-5, bias: true }), "an RMSNorm with a bias"],
    [
      () => prepareRope({ ...gqa.position, scaling: { kind: "linear", factor: 2 } } as never, 4),
      'RoPE scaling "linear"',
    ],
    [() => prepareRope({ kind: "none" }, 4), 'position kind "none"'],
  ];
  for (const [fn, message] of cases) {
    assert.throws(fn, (e) => e instanceof UnsupportedError && e.message.includes(message), message);
  }
});
