import assert from "node:assert/strict";
import { route } from "./router.ts";

const sig = (x: number) => 1 / (1 + Math.exp(-x));
const logit = (p: number) => Math.log(p / (1 - p));

function close(got: number[], want: number[], tol: number, what: string) {
  assert.equal(got.length, want.length, what);
  got.forEach((g, i) =>
    assert.ok(Math.abs(g - want[i]) <= tol, `${what}[${i}]: ${g} vs ${want[i]}`)
  );
}

Deno.test("route: sigmoid scores, selection bias picks, unbiased weights renormalised (+1e-20) × scale", () => {
  // scores [0.9, 0.2, 0.6, 0.5]; bias lifts expert 3 above expert 2 for the choice only.
  const scores = [0.9, 0.2, 0.6, 0.5];
  const logits = Float64Array.from(scores, logit);
  const bias = Float64Array.of(0, 0, 0, 0.2);
  const r = route(logits, 2, { scoring: "sigmoid", normTopK: true, scale: 2.5 }, bias);
  assert.deepEqual(r.experts, [0, 3]);
  close(r.weights, [2.5 * 0.9 / 1.4, 2.5 * 0.5 / 1.4], 1e-14, "weights");
  const raw = route(logits, 2, { scoring: "sigmoid", normTopK: false, scale: 1 }, bias);
  close(raw.weights, [0.9, 0.5], 1e-14, "unnormalised");
  assert.deepEqual(route(logits, 2, { scoring: "sigmoid", normTopK: false, scale: 1 }).experts, [
    0,
    2,
  ]);
});

Deno.test("route: groups by max (DeepSeek-V2) and by top-2 sum (DeepSeek-V3) differ", () => {
  // 3 groups of 2 (softmax off: sigmoid scores written directly).
  // group 0: [0.95, 0.05] max 0.95 sum 1.0; group 1: [0.7, 0.7] max 0.7 sum 1.4;
  // group 2: [0.8, 0.1] max 0.8 sum 0.9.
  const scores = [0.95, 0.05, 0.7, 0.7, 0.8, 0.1];
  const logits = Float64Array.from(scores, logit);
  const base = { scoring: "sigmoid" as const, normTopK: false, scale: 1 };
  const byMax = route(logits, 2, { ...base, groups: { count: 3, keep: 1, score: "max" } });
  assert.deepEqual(byMax.experts, [0, 1]);
  const bySum = route(logits, 2, { ...base, groups: { count: 3, keep: 1, score: "top2sum" } });
  assert.deepEqual(bySum.experts, [2, 3]);
  const keep2 = route(logits, 2, { ...base, groups: { count: 3, keep: 2, score: "top2sum" } });
  assert.deepEqual(keep2.experts, [0, 2]);
  close(keep2.weights, [0.95, 0.7], 1e-14, "weights");
  // Softmax scoring with groups: weights stay the full-softmax probabilities.
  const soft = route(logits, 2, {
    normTopK: false,
    scale: 1,
    groups: { count: 3, keep: 1, score: "max" },
  });
  const z = logits.reduce((a, l) => a + Math.exp(l), 0);
  close(soft.weights, [Math.exp(logits[0]) / z, Math.exp(logits[1]) / z], 1e-14, "softmax");
});

Deno.test("route: ERNIE selection-only bias with softmax scores, renormalised", () => {
  const logits = Float64Array.of(1, 0.5, 0.2, -1);
  const bias = Float64Array.of(0, 0, 0.5, 0);
  const r = route(logits, 2, { normTopK: true, scale: 1 }, bias);
  assert.deepEqual(r.experts, [2, 0]);
  const p = [...logits].map(Math.exp);
  close(r.weights, [p[2] / (p[0] + p[2]), p[0] / (p[0] + p[2])], 1e-14, "weights");
});

Deno.test("route: 256 experts, top-8, 8 groups keep 4 — equals a brute-force restatement", () => {
  let seed = 7;
  const rand = () => ((seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31);
  for (let trial = 0; trial < 20; trial++) {
    const logits = Float64Array.from({ length: 256 }, () => 4 * rand() - 2);
    const bias = Float64Array.from({ length: 256 }, () => 0.2 * rand() - 0.1);
    const r = route(logits, 8, {
      scoring: "sigmoid",
      normTopK: true,
      scale: 2.5,
      groups: { count: 8, keep: 4, score: "top2sum" },
    }, bias);
    // brute force: sort, not scan
    const choice = [...logits].map((l, e) => sig(l) + bias[e]);
    const groupScore = Array.from({ length: 8 }, (_, g) => {
      const m = choice.slice(g * 32, g * 32 + 32).sort((a, b) => b - a);
      return { g, s: m[0] + m[1] };
    }).sort((a, b) => b.s - a.s).slice(0, 4).map((x) => x.g);
    const want = choice.map((c, e) => ({ c, e }))
      .filter((x) => groupScore.includes(Math.floor(x.e / 32)))
      .sort((a, b) => b.c - a.c).slice(0, 8).map((x) => x.e);
    assert.deepEqual(r.experts, want);
    const sum = want.reduce((a, e) => a + sig(logits[e]), 0);
    close(r.weights, want.map((e) => 2.5 * sig(logits[e]) / sum), 1e-14, "weights");
  }
});
