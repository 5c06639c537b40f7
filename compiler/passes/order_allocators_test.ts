import assert from "node:assert/strict";
import { UsageError } from "../../schemas/errors.ts";
import {
  allocateFrequency,
  allocatePaper,
  allocateRandom,
  allocateReversePaper,
  allocateUniform,
  bandCounts,
  defaultLevels,
  levelFractions,
  roundTies,
} from "./order_allocators.ts";

/** Experts per width in one layer, highest width first, for the given widths. */
function perWidth(row: readonly number[], widths: number[]): number[] {
  return widths.map((w) => row.filter((b) => b === w).length);
}

Deno.test("roundTies: half-even default, half-up option, float-noise ties", () => {
  assert.equal(roundTies(1.5), 2);
  assert.equal(roundTies(2.5), 2);
  assert.equal(roundTies(2.5, "half-up"), 3);
  assert.equal(roundTies(2.4999999999999), 2);
  assert.equal(roundTies(2.4999999999999, "half-up"), 3);
  assert.equal(roundTies(2.4), 2);
  assert.equal(roundTies(2.6), 3);
});

Deno.test("default levels bracket the target with supported widths", () => {
  assert.deepEqual(defaultLevels(2.5), [2, 3]);
  assert.deepEqual(defaultLevels(3), [3, 4]);
  assert.deepEqual(defaultLevels(4.5), [4, 8]);
  assert.deepEqual(defaultLevels(8), [8]);
  assert.throws(() => defaultLevels(1.5), UsageError);
  assert.throws(() => defaultLevels(9), UsageError);
});

Deno.test("bandCounts: E = 6, κE = 1.5 rounds to 2 high; E = 10, κE = 2.5 depends on rule", () => {
  // target 2.25 between 2 and 3: κ = 0.25.
  assert.deepEqual(bandCounts(6, 2.25), { levels: [3, 2], counts: [2, 4] });
  assert.deepEqual(bandCounts(6, 2.25, { rounding: "half-up" }).counts, [2, 4]);
  assert.deepEqual(bandCounts(10, 2.25).counts, [2, 8]);
  assert.deepEqual(bandCounts(10, 2.25, { rounding: "half-up" }).counts, [3, 7]);
  // Integer κE hits the target.
  assert.deepEqual(bandCounts(8, 2.5).counts, [4, 4]);
  assert.deepEqual(bandCounts(8, 6, {}), { levels: [8, 4], counts: [4, 4] });
  assert.deepEqual(bandCounts(8, 8), { levels: [8], counts: [8] });
  assert.deepEqual(bandCounts(8, 2.5, { levels: [2, 4] }).counts, [2, 6]);
  assert.throws(() => bandCounts(8, 4.5, { levels: [2, 3] }), UsageError);
  assert.throws(() => bandCounts(8, 3, { levels: [2, 5] }), UsageError);
});

Deno.test("three levels: fractions meet the average; caps keep them non-negative", () => {
  for (
    const [target, levels] of [[3, [2, 3, 4]], [3, [2, 3, 8]], [2.2, [2, 3, 4]], [3.9, [
      2,
      3,
      4,
    ]]] as [
      number,
      (2 | 3 | 4 | 8)[],
    ][]
  ) {
    const f = levelFractions(target, levels);
    assert.ok(f.every((x) => x >= 0), `${f}`);
    assert.ok(Math.abs(f[0] + f[1] + f[2] - 1) < 1e-12);
    assert.ok(Math.abs(f[0] * levels[0] + f[1] * levels[1] + f[2] * levels[2] - target) < 1e-12);
  }
  // [2,3,4] at 3: a third each. [2,3,8] at 3 with E = 9: 1 at 8, 3 at 3, 5 at 2 → 27/9 = 3.
  assert.deepEqual(bandCounts(6, 3, { levels: [2, 3, 4] }), {
    levels: [4, 3, 2],
    counts: [2, 2, 2],
  });
  assert.deepEqual(bandCounts(9, 3, { levels: [2, 3, 8] }).counts, [1, 3, 5]);
  // [2,3,4] at 2.2: middle capped at 0.2, no top band; E = 10 → [0, 2, 8] = 2.2.
  assert.deepEqual(bandCounts(10, 2.2, { levels: [2, 3, 4] }).counts, [0, 2, 8]);
  assert.deepEqual(bandCounts(6, 3, { levels: [2, 3, 4], midFraction: 0 }).counts, [3, 0, 3]);
});

const lambda = [[0.5, 0.1, 0.3, 0.2], [0.0, 0.9, -0.3, 0.4], []];
const maxVar = [[1, 1, 1, 1], [1, 1, 1, 1], []];

Deno.test("paper: smallest Λ gets the high bits; ranks; fallback note; dense layer", () => {
  const a = allocatePaper({ lambda, maxVar, usedInit: false }, 2.5);
  // Layer 0 order [1,3,2,0]; layer 1 order [2,0,3,1]; top 2 of each at 3 bits.
  assert.deepEqual(a.bits, [[2, 3, 2, 3], [3, 2, 3, 2], []]);
  assert.deepEqual(a.rank, [[3, 0, 2, 1], [1, 3, 0, 2], []]);
  assert.equal(a.summary.achievedAverage, 2.5);
  assert.equal(a.summary.exact, true);
  assert.deepEqual(a.summary.counts, { 2: 4, 3: 4 });
  assert.ok(a.summary.notes.some((n) => n.includes("fallback")));
  // MaxVar reorder: layer 0 expert 0 (largest Λ) has 4 > 3 × 1 → first.
  const b = allocatePaper({ lambda, maxVar: [[4, 1, 1, 1], [1, 1, 1, 1], []] }, 2.25);
  assert.deepEqual(b.bits[0], [3, 2, 2, 2]);
  assert.equal(b.summary.notes.some((n) => n.includes("fallback")), false);
});

Deno.test("reverse-paper and frequency use the same band sizes with their own order", () => {
  const r = allocateReversePaper({ lambda, maxVar }, 2.5);
  assert.deepEqual(r.bits, [[3, 2, 3, 2], [2, 3, 2, 3], []]);
  const f = allocateFrequency([[0.1, 0.4, 0.2, 0.3], [0.25, 0.25, 0.25, 0.25], []], 2.5);
  assert.deepEqual(f.bits, [[2, 3, 2, 3], [3, 3, 2, 2], []]);
});

Deno.test("non-integer κE: achieved average reported, not the target", () => {
  const a = allocatePaper({ lambda: [[1, 2, 3, 4, 5, 6]], maxVar: [[1, 1, 1, 1, 1, 1]] }, 2.25);
  assert.deepEqual(a.bits, [[3, 3, 2, 2, 2, 2]]);
  assert.equal(a.summary.exact, false);
  assert.ok(Math.abs(a.summary.achievedAverage - 14 / 6) < 1e-12);
  assert.ok(a.summary.notes.some((n) => n.includes("2.3333")));
});

Deno.test("random: reproducible per seed, equal per-layer counts to paper, varied", () => {
  const shape = [8, 8, 0, 8];
  const lam = shape.map((n) => Array.from({ length: n }, (_, i) => (i * 7) % 5));
  const paper = allocatePaper({ lambda: lam, maxVar: lam.map((r) => r.map(() => 1)) }, 2.75);
  const a = allocateRandom(shape, 2.75, 42), b = allocateRandom(shape, 2.75, 42);
  assert.deepEqual(a.bits, b.bits);
  const distinct = new Set<string>();
  const high = new Array(8).fill(0);
  for (let seed = 0; seed < 400; seed++) {
    const r = allocateRandom(shape, 2.75, seed);
    r.bits.forEach((row, l) =>
      assert.deepEqual(perWidth(row, [3, 2]), perWidth(paper.bits[l], [3, 2]))
    );
    distinct.add(JSON.stringify(r.bits));
    r.bits[0].forEach((bits, e) => high[e] += bits === 3 ? 1 : 0);
  }
  assert.ok(distinct.size > 390, `${distinct.size} distinct of 400`);
  // κ = 0.75: each expert high with probability 6/8 → 300 ± 40 of 400 (about 4.6 sd).
  for (const h of high) assert.ok(Math.abs(h - 300) < 40, `${high}`);
  assert.throws(() => allocateRandom(shape, 2.75, 1.5), UsageError);
});

Deno.test("uniform: supported widths only", () => {
  const u = allocateUniform([3, 0, 2], 4);
  assert.deepEqual(u.bits, [[4, 4, 4], [], [4, 4]]);
  assert.equal(u.summary.achievedAverage, 4);
  assert.throws(() => allocateUniform([3], 2.5), /uniform allocation: 2.5 bits/);
  assert.throws(() => allocateUniform([3], 5), UsageError);
});

Deno.test("order allocators: --expert-bits mxfp4 (4.25) puts every expert in MXFP4; levels mix it", () => {
  assert.deepEqual(allocateUniform([2, 3], 4.25).bits, [[4.25, 4.25], [4.25, 4.25, 4.25]]);
  const r = allocateRandom([5], 4.25, 1);
  assert.deepEqual(r.bits, [new Array(5).fill(4.25)]);
  const mix = allocateRandom([8], 3.625, 2, { levels: [3, 4.25] });
  assert.equal(mix.bits[0].filter((b) => b === 4.25).length, 4);
  assert.equal(mix.summary.achievedAverage, 3.625);
});
