import assert from "node:assert/strict";
import { MomentAccumulator } from "./stats.ts";
import { weightStats } from "../passes/mod.ts";
import { InputError } from "../../schemas/errors.ts";

function lcg(seed: number): () => number {
  let s = seed >>> 0;
  return () => ((s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 2 ** 32);
}

Deno.test("MomentAccumulator matches the two-pass weightStats (1e-10 relative)", () => {
  const r = lcg(7);
  // Heavy-tailed, offset arrays of different sizes: the shift comes from the first one only.
  const arrays = [3000, 50, 7000].map((n, j) =>
    Float32Array.from({ length: n }, () => 0.3 + j * 0.1 + (r() - 0.5) ** 3 * (j + 1))
  );
  const acc = new MomentAccumulator();
  for (const a of arrays) acc.add(a);
  const got = acc.finish();
  const want = weightStats(...arrays);
  assert.equal(got.count, want.count);
  assert.equal(got.min, want.min);
  assert.equal(got.max, want.max);
  assert.equal(got.range, want.range);
  for (const k of ["mean", "std", "kurtosis"] as const) {
    assert.ok(
      Math.abs(got[k] - want[k]) <= 1e-10 * Math.abs(want[k]),
      `${k}: ${got[k]} vs ${want[k]}`,
    );
  }
});

Deno.test("MomentAccumulator: constant values, empty, non-finite", () => {
  const acc = new MomentAccumulator();
  acc.add(new Float32Array([2, 2, 2]));
  assert.equal(acc.finish().kurtosis, 0);
  assert.equal(acc.finish().range, 0);
  assert.throws(() => new MomentAccumulator().finish(), InputError);
  assert.throws(() => new MomentAccumulator().add(new Float32Array([1, NaN]), "w1"), /w1/);
});
