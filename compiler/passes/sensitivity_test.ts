import assert from "node:assert/strict";
import { InputError } from "../../schemas/errors.ts";
import { mulberry32 } from "../../schemas/prng.ts";
import { maxVariance, routerNorm, routingFrequency, weightStats } from "./sensitivity.ts";

/** Random non-zero values in [-1, -0.01] ∪ [0.01, 1]. */
function randomNonZero(n: number, seed: number): Float32Array {
  const rng = mulberry32(seed);
  return Float32Array.from({ length: n }, () => {
    const m = 0.01 + 0.99 * rng();
    return rng() < 0.5 ? -m : m;
  });
}

Deno.test("routerNorm: hand-computed change and fallback, one row per MoE layer", () => {
  const fin = [Float32Array.of(3, 4, 0, 1), Float32Array.of(0, 2)];
  const init = [Float32Array.of(0, 1, 1, 0), Float32Array.of(1, 0)];
  const withInit = routerNorm(fin, 2, init);
  assert.equal(withInit.usedInit, true);
  assert.deepEqual(withInit.scores, [[5 - 1, 1 - 1], [2 - 1]]);
  const fallback = routerNorm(fin, 2);
  assert.equal(fallback.usedInit, false);
  assert.deepEqual(fallback.scores, [[5, 1], [2]]);
});

Deno.test("routerNorm: random data against a float64 reference (rel 1e-12)", () => {
  const E = 6, H = 37;
  const fin = randomNonZero(E * H, 1), init = randomNonZero(E * H, 2);
  const { scores } = routerNorm([fin], H, [init]);
  for (let s = 0; s < E; s++) {
    const ref = Math.hypot(...fin.subarray(s * H, (s + 1) * H)) -
      Math.hypot(...init.subarray(s * H, (s + 1) * H));
    assert.ok(Math.abs(scores[0][s] - ref) <= 1e-12 * Math.max(1, Math.abs(ref)), `${s}`);
  }
});

Deno.test("routerNorm: bad input is an InputError naming the layer", () => {
  assert.throws(() => routerNorm([new Float32Array(5)], 2), InputError);
  assert.throws(
    () => routerNorm([new Float32Array(4)], 2, [new Float32Array(2)]),
    /init router layer 0/,
  );
  assert.throws(() => routerNorm([Float32Array.of(1, NaN)], 2), /router layer 0: non-finite/);
  assert.throws(() => routerNorm([new Float32Array(4)], 2, []), InputError);
});

Deno.test("maxVariance: hand-computed rows", () => {
  // Row 0: [1, 2, 3] → variance 2/3. Row 1: [0, 0, 6] → mean 2, variance (4 + 4 + 16)/3 = 8.
  assert.equal(maxVariance(Float32Array.of(1, 2, 3, 0, 0, 6), 2, 3), 8);
  assert.equal(maxVariance(Float32Array.of(5, 5, 5), 1, 3), 0);
});

Deno.test("maxVariance: random data against E[x²] − E[x]² in float64 (rel 1e-9)", () => {
  const rows = 17, cols = 45;
  const w = randomNonZero(rows * cols, 3);
  let ref = 0;
  for (let r = 0; r < rows; r++) {
    let s1 = 0, s2 = 0;
    for (let c = 0; c < cols; c++) {
      s1 += w[r * cols + c];
      s2 += w[r * cols + c] ** 2;
    }
    ref = Math.max(ref, s2 / cols - (s1 / cols) ** 2);
  }
  const got = maxVariance(w, rows, cols);
  assert.ok(Math.abs(got - ref) <= 1e-9 * ref, `${got} vs ${ref}`);
  assert.throws(() => maxVariance(w, rows, cols + 1, "layers.0.experts.1.w1"), /experts\.1\.w1/);
});

Deno.test("routingFrequency: normalises per layer, rejects bad counts", () => {
  assert.deepEqual(routingFrequency([[1, 3], [], [2, 2]]), [[0.25, 0.75], [], [0.5, 0.5]]);
  assert.throws(() => routingFrequency([[1, -1]]), /counts\[0\]\[1\]/);
  assert.throws(() => routingFrequency([[1], [0, 0]]), /counts\[1\]: no tokens/);
  assert.throws(() => routingFrequency([[Infinity]]), InputError);
});

Deno.test("weightStats: hand case, concatenation and Gaussian kurtosis ≈ 3", () => {
  const s = weightStats(Float32Array.of(-1, 1), Float32Array.of(-1, 1));
  assert.deepEqual(
    [s.min, s.max, s.range, s.mean, s.std, s.kurtosis, s.count],
    [-1, 1, 2, 0, 1, 1, 4],
  );
  const a = randomNonZero(100, 4), b = randomNonZero(50, 5);
  const joined = new Float32Array(150);
  joined.set(a);
  joined.set(b, 100);
  const split = weightStats(a, b), whole = weightStats(joined);
  for (const k of ["range", "mean", "std", "kurtosis"] as const) {
    assert.ok(Math.abs(split[k] - whole[k]) < 1e-12, k);
  }
  // Box–Muller Gaussian sample: kurtosis 3 ± 0.05 (its standard error is about 0.011 at n = 2e5).
  const rng = mulberry32(6), n = 200000, g = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    g[i] = Math.sqrt(-2 * Math.log(1 - rng())) * Math.cos(2 * Math.PI * rng());
  }
  const k = weightStats(g).kurtosis;
  assert.ok(Math.abs(k - 3) < 0.05, `kurtosis ${k}`);
  assert.equal(weightStats(Float32Array.of(2, 2)).kurtosis, 0);
  assert.throws(() => weightStats(), InputError);
});
