import assert from "node:assert/strict";
import { InputError, LimitError, UsageError } from "../../schemas/errors.ts";
import { allocatePaper, allocateRandom } from "./order_allocators.ts";
import { allocateBudget, type BudgetProblem } from "./budget_allocator.ts";
import { mulberry32 } from "../../schemas/prng.ts";

type Cost = number[][][];

/** Every assignment of widths to the experts of a [layers][experts] toy; returns the best. */
function bruteForce(
  cost: Cost,
  fits: (choice: number[]) => boolean,
  score: (choice: number[]) => number,
): { best: number; reached: boolean } {
  const n = cost.flat().length, w = cost[0][0].length;
  let best = Infinity;
  const choice = new Array<number>(n).fill(0);
  for (let code = 0; code < w ** n; code++) {
    let c = code;
    for (let i = 0; i < n; i++) {
      choice[i] = c % w;
      c = Math.floor(c / w);
    }
    if (fits(choice)) best = Math.min(best, score(choice));
  }
  return { best, reached: best < Infinity };
}

/** Toy costs: decreasing in width with random slopes, sometimes non-convex or non-monotone. */
function toyCost(rng: () => number, layers: number, experts: number, widths: number): Cost {
  return Array.from({ length: layers }, () =>
    Array.from({ length: experts }, () => {
      const c = [rng() * 10];
      for (let k = 1; k < widths; k++) c.push(c[k - 1] * (rng() < 0.15 ? 1.1 : rng()));
      return c;
    }));
}

function costOf(cost: Cost, bits: number[][], widths: readonly number[]): number {
  let s = 0;
  bits.forEach((row, l) => row.forEach((b, e) => s += cost[l][e][widths.indexOf(b)]));
  return s;
}

Deno.test("budget: hand case gives the bits to the expert that saves the most", () => {
  const a = allocateBudget({ widths: [2, 4], cost: [[[10, 0], [1, 0]]], targetAverage: 3 });
  assert.deepEqual(a.bits, [[4, 2]]);
  assert.equal(a.summary.achievedAverage, 3);
  assert.equal(a.summary.exact, true);
  assert.equal(a.summary.totalCost, 1);
  assert.equal(
    allocateBudget({ widths: [2, 4], cost: [[[10, 0], [1, 0]]], targetAverage: 3, solver: "dp" })
      .summary.totalCost,
    1,
  );
  assert.deepEqual(a.rank, [[0, 1]]);
  const g = allocateBudget({
    widths: [2, 4],
    cost: [[[10, 0], [1, 0]]],
    targetAverage: 3,
    solver: "greedy",
  });
  assert.deepEqual(g.bits, [[4, 2]]);
  assert.equal(g.summary.lowerBound, 1);
});

Deno.test("budget: 2×3 toy, exact average, dp optimal and greedy within its bound", () => {
  const widths = [2, 3, 4] as const;
  const rng = mulberry32(11);
  let greedyOptimal = 0, cases = 0, worstGap = 0;
  for (let t = 0; t < 60; t++) {
    const cost = toyCost(rng, 2, 3, 3);
    for (const target of [2, 2 + 1 / 6, 2.5, 3, 3 + 5 / 6, 4]) {
      const total = Math.round(target * 6);
      const opt = bruteForce(
        cost,
        (ch) => ch.reduce((s, k) => s + widths[k], 0) === total,
        (ch) => ch.reduce((s, k, i) => s + cost[Math.floor(i / 3)][i % 3][k], 0),
      ).best;
      const problem: BudgetProblem = { widths, cost, targetAverage: target };
      const dp = allocateBudget({ ...problem, solver: "dp" });
      assert.equal(dp.summary.exact, true);
      assert.ok(Math.abs(dp.bits.flat().reduce((s, b) => s + b, 0) - total) === 0);
      assert.ok(Math.abs(costOf(cost, dp.bits, widths) - opt) < 1e-9, `dp ${t} ${target}`);
      assert.ok(Math.abs(dp.summary.totalCost! - opt) < 1e-9);
      const auto = allocateBudget(problem);
      assert.ok(Math.abs(auto.summary.totalCost! - opt) < 1e-9, `auto ${t} ${target}`);
      const gr = allocateBudget({ ...problem, solver: "greedy" });
      assert.equal(gr.summary.exact, true, `greedy exact ${t} ${target}`);
      const gc = costOf(cost, gr.bits, widths);
      assert.ok(gr.summary.lowerBound! <= opt + 1e-9, "lower bound is a bound");
      // Stated bound: greedy is within one expert's cost span of the optimum.
      const span = Math.max(...cost.flat().map((c) => Math.max(...c) - Math.min(...c)));
      assert.ok(gc <= opt + span + 1e-9, `greedy ${gc} vs ${opt}`);
      worstGap = Math.max(worstGap, gc - opt);
      if (gc - opt < 1e-9) greedyOptimal++;
      cases++;
    }
  }
  console.log(`greedy optimal in ${greedyOptimal}/${cases} toy cases, worst gap ${worstGap}`);
});

Deno.test("budget: unreachable average falls to the largest total below, noted", () => {
  const cost: Cost = [[[3, 2, 1], [3, 2, 1], [3, 2, 1]]];
  const a = allocateBudget({ widths: [2, 3, 4], cost, targetAverage: 2.5 });
  // 7.5 bit-experts is not an integer: 7 is the largest reachable → average 7/3.
  assert.equal(a.bits.flat().reduce((s, b) => s + b, 0), 7);
  assert.equal(a.summary.exact, false);
  assert.ok(a.summary.notes.some((n) => n.includes("not reachable")));
  const b = allocateBudget({ widths: [2, 4], cost: [[[1, 0], [1, 0]]], targetAverage: 2.5 });
  assert.deepEqual(b.bits, [[2, 2]]);
});

Deno.test("budget: unequal params weight the average", () => {
  // Expert 0 has 3× the parameters: 4 bits on it alone gives (4·3 + 2·1)/4 = 3.5.
  const a = allocateBudget({
    widths: [2, 4],
    cost: [[[5, 0], [5, 0]]],
    params: [[3, 1]],
    targetAverage: 3.5,
  });
  assert.deepEqual(a.bits, [[4, 2]]);
  assert.equal(a.summary.achievedAverage, 3.5);
  assert.throws(
    () => allocateBudget({ widths: [2, 4], cost: [[[1, 0]]], params: [[0]], targetAverage: 3 }),
    /params\[0\]\[0\]/,
  );
});

Deno.test("budget: maxBytes respected, dp optimal, greedy within bound", () => {
  const widths = [2, 3, 4, 8] as const;
  const rng = mulberry32(12);
  for (let t = 0; t < 20; t++) {
    const cost = toyCost(rng, 2, 3, 4);
    // Expert sizes differ per layer; bytes = codes + a fixed scale overhead.
    const bytes = [0, 1].map((l) => [0, 1, 2].map(() => widths.map((w) => w * 64 * (l + 1) + 32)));
    const flatBytes = bytes.flat();
    // All experts at 2 bits take 1344 bytes, all at 8 bits 4800.
    const maxBytes = 1344 + Math.floor(rng() * 3456);
    const opt = bruteForce(
      cost,
      (ch) => ch.reduce((s, k, i) => s + flatBytes[i][k], 0) <= maxBytes,
      (ch) => ch.reduce((s, k, i) => s + cost[Math.floor(i / 3)][i % 3][k], 0),
    ).best;
    for (const solver of ["dp", "greedy"] as const) {
      const a = allocateBudget({ widths, cost, bytes, maxBytes, solver });
      assert.ok(a.summary.totalBytes! <= maxBytes, `${solver} ${a.summary.totalBytes}`);
      const c = costOf(cost, a.bits, widths);
      const span = Math.max(...cost.flat().map((x) => Math.max(...x) - Math.min(...x)));
      if (solver === "dp") assert.ok(Math.abs(c - opt) < 1e-9, `dp ${c} vs ${opt}`);
      else assert.ok(c <= opt + span + 1e-9 && a.summary.lowerBound! <= opt + 1e-9);
    }
  }
  assert.throws(
    () =>
      allocateBudget({ widths, cost: [[[1, 1, 1, 1]]], bytes: [[[10, 20, 30, 40]]], maxBytes: 9 }),
    LimitError,
  );
});

Deno.test("budget: bad problems are typed errors", () => {
  const cost: Cost = [[[1, 0]]];
  assert.throws(() => allocateBudget({ widths: [2, 5], cost, targetAverage: 3 }), UsageError);
  assert.throws(() => allocateBudget({ widths: [4, 2], cost, targetAverage: 3 }), UsageError);
  assert.throws(() => allocateBudget({ widths: [2, 4], cost }), /exactly one/);
  assert.throws(() => allocateBudget({ widths: [2, 4], cost, targetAverage: 5 }), UsageError);
  assert.throws(() => allocateBudget({ widths: [2, 4], cost, maxBytes: 10 }), /needs bytes/);
  assert.throws(
    () => allocateBudget({ widths: [2, 4], cost: [[[1, NaN]]], targetAverage: 3 }),
    InputError,
  );
  assert.throws(
    () => allocateBudget({ widths: [2, 3, 4], cost, targetAverage: 3 }),
    /cost\[0\]\[0\]: 2 values/,
  );
});

Deno.test("speed: 60 layers × 64 experts (measured, not asserted)", () => {
  const L = 60, E = 64, rng = mulberry32(13);
  const shape = new Array(L).fill(E);
  const lambda = shape.map((n) => Array.from({ length: n }, () => rng()));
  const maxVar = shape.map((n) => Array.from({ length: n }, () => rng()));
  const widths = [2, 3, 4] as const;
  const cost = shape.map((n) =>
    Array.from({ length: n }, () => {
      const f = rng(), e2 = 0.3 + 0.2 * rng();
      return [f * e2, f * e2 / 3.5, f * e2 / 12];
    })
  );
  const time = <T>(f: () => T) => {
    const t0 = performance.now();
    const r = f();
    return { ms: performance.now() - t0, r };
  };
  const paper = time(() => allocatePaper({ lambda, maxVar }, 2.5));
  const random = time(() => allocateRandom(shape, 2.5, 1));
  const auto = time(() => allocateBudget({ widths, cost, targetAverage: 2.5 }));
  const dp = time(() => allocateBudget({ widths, cost, targetAverage: 2.5, solver: "dp" }));
  const greedy = time(() => allocateBudget({ widths, cost, targetAverage: 2.5, solver: "greedy" }));
  const d = dp.r.summary, g = greedy.r.summary;
  assert.equal(d.exact, true);
  assert.equal(g.exact, true);
  assert.ok(g.totalCost! >= d.totalCost! - 1e-9 && d.totalCost! >= g.lowerBound! - 1e-9);
  console.log(
    `paper ${paper.ms.toFixed(1)} ms, random ${random.ms.toFixed(1)} ms, ` +
      `budget auto ${auto.ms.toFixed(1)} ms (${auto.r.summary.solver}), ` +
      `dp ${dp.ms.toFixed(1)} ms (${d.solver}, cost ${d.totalCost!.toFixed(6)}), ` +
      `greedy ${greedy.ms.toFixed(1)} ms (cost ${g.totalCost!.toFixed(6)}, LP bound ${
        g.lowerBound!.toFixed(6)
      })`,
  );
});

Deno.test("budget: MXFP4 (4.25) is a width like the others: quarter-bit resources, exact mix", () => {
  // 8 equal experts choosing 3 bits or MXFP4: 3 + 1.25·k/8 = 3.625 needs k = 4 MXFP4 experts,
  // given to the four whose 3-bit cost is highest.
  const cost: Cost = [[...Array(8)].map((_, e) => [1 + e, 0])];
  const a = allocateBudget({ widths: [3, 4.25], cost, targetAverage: 3.625 });
  assert.deepEqual(a.bits, [[3, 3, 3, 3, 4.25, 4.25, 4.25, 4.25]]);
  assert.ok(a.summary.exact);
  assert.deepEqual(a.summary.levels, [3, 4.25]);
  // All MXFP4.
  const all = allocateBudget({ widths: [3, 4.25], cost, targetAverage: 4.25 });
  assert.deepEqual(all.bits, [new Array(8).fill(4.25)]);
  assert.throws(() => allocateBudget({ widths: [3, 4.5], cost, targetAverage: 4 }), UsageError);
});
