/**
 * The `budget` allocator: moeq's own, cross-layer bit allocation.
 *
 * Problem (a multiple-choice knapsack). Each expert i picks one width k from `widths`, costing
 * `cost[l][e][k]` (an estimated loss increase, e.g. routing frequency × measured relative output
 * error at that width) and using a resource r_ik:
 *
 * - average mode (`targetAverage`): r_ik = widths[k] · params[l][e], and Σ r = target · Σ params
 *   EXACTLY (the constraint is an equality: the average is a promise, not a ceiling);
 * - byte mode (`maxBytes`): r_ik = bytes[l][e][k], and Σ r ≤ maxBytes.
 *
 * minimise Σ cost subject to that constraint.
 *
 * Solvers. Resources are integers; the allocator works in units of g = gcd of all r_ik − r_i,min
 * above each expert's smallest option, so with equal-size experts one unit is one bit per expert
 * and the capacity is (target − w_min) · #experts.
 *
 * - "dp": exact dynamic programming over (expert, units used) — the true optimum, in
 *   O(#experts × capacity × #widths) (about 0.2 s for 60 layers × 64 experts at 2.5 bits).
 * - "greedy": the LP-relaxation greedy. Each expert's options are reduced to their lower convex
 *   hull in (units, cost); all hull steps of all experts are taken in order of decreasing cost
 *   saved per unit while they fit. The LP value at the first step that does not fit is reported
 *   as `lowerBound` (no allocation can cost less). Then an exact-fit repair spends the leftover
 *   units (one move, or a pair of moves on two experts, whose unit change is exactly the leftover,
 *   cheapest first), and an exchange pass applies cost-reducing pairs (one expert up, another
 *   down by the same units) until none is left.
 * - "auto" (default): greedy first; if its cost meets the LP lower bound it is optimal and kept
 *   (the usual case with many experts and convex costs), otherwise dp when #experts ×
 *   (capacity + 1) ≤ `maxDpCells` (default 2·10⁷), else the greedy result with its bound.
 *
 * When the target · Σ params is not reachable with the allowed widths (not an integer, or not a
 * multiple of g above the minimum), the allocation uses the largest reachable total BELOW it
 * (never more bits than asked) and says so in the summary notes.
 *
 * @module
 */

import { InputError, LimitError, UsageError } from "../../schemas/errors.ts";
import { EXPERT_WIDTHS, type ExpertWidth, isExpertWidth } from "../../schemas/packing.ts";
import { type Allocation, type BitsTable, summarize } from "./allocation_result.ts";

/** Input of {@link allocateBudget}. Exactly one of `targetAverage` and `maxBytes`. */
export interface BudgetProblem {
  /** Candidate widths, strictly ascending (e.g. [2, 3, 4]). */
  widths: readonly number[];
  /** cost[moeLayer][expert][widthIndex]: estimated loss increase of that expert at that width. */
  cost: readonly (readonly (readonly number[])[])[];
  /** params[moeLayer][expert]: parameter count (positive integer); default 1 for every expert. */
  params?: readonly (readonly number[])[];
  /** bytes[moeLayer][expert][widthIndex]: stored size; required with `maxBytes`. */
  bytes?: readonly (readonly (readonly number[])[])[];
  /** Exact average bit width to meet, weighted by params. */
  targetAverage?: number;
  /** Byte budget for all experts together. */
  maxBytes?: number;
  /** "auto" (default): dp when small enough, else greedy. */
  solver?: "auto" | "dp" | "greedy";
  /** Largest dp table (experts × (capacity units + 1)) "auto" accepts; default 2e7. */
  maxDpCells?: number;
}

/** One expert's options in integer units above its cheapest-resource option. */
interface Item {
  layer: number;
  expert: number;
  units: number[];
  cost: number[];
}

function gcd(a: number, b: number): number {
  while (b) [a, b] = [b, a % b];
  return a;
}

function validate(p: BudgetProblem): void {
  const w = p.widths;
  if (!Array.isArray(w) || w.length === 0) throw new UsageError("budget: no widths given");
  for (let k = 0; k < w.length; k++) {
    if (!isExpertWidth(w[k])) {
      throw new UsageError(`budget: width ${w[k]} is not one of ${EXPERT_WIDTHS}`);
    }
    if (k > 0 && w[k] <= w[k - 1]) throw new UsageError("budget: widths must be ascending");
  }
  if ((p.targetAverage === undefined) === (p.maxBytes === undefined)) {
    throw new UsageError("budget: give exactly one of targetAverage and maxBytes");
  }
  if (p.targetAverage !== undefined) {
    const t = p.targetAverage;
    if (!(t >= w[0] && t <= w[w.length - 1])) {
      throw new UsageError(`budget: target average ${t} is outside widths [${w}]`);
    }
  }
  if (p.maxBytes !== undefined) {
    if (!(p.maxBytes >= 0) || !Number.isFinite(p.maxBytes)) {
      throw new UsageError(`budget: maxBytes ${p.maxBytes} is not a finite number >= 0`);
    }
    if (!p.bytes) throw new UsageError("budget: maxBytes needs bytes[layer][expert][width]");
  }
  p.cost.forEach((row, l) =>
    row.forEach((cs, e) => {
      if (cs.length !== w.length) {
        throw new InputError(`budget cost[${l}][${e}]: ${cs.length} values for ${w.length} widths`);
      }
      cs.forEach((c, k) => {
        if (!Number.isFinite(c)) throw new InputError(`budget cost[${l}][${e}][${k}]: ${c}`);
      });
      const pe = p.params?.[l]?.[e] ?? 1;
      if (!Number.isInteger(pe) || pe <= 0) {
        throw new InputError(`budget params[${l}][${e}]: ${pe} is not a positive integer`);
      }
      if (p.bytes) {
        const bs = p.bytes[l]?.[e];
        if (!bs || bs.length !== w.length || bs.some((b) => !Number.isInteger(b) || b < 0)) {
          throw new InputError(`budget bytes[${l}][${e}]: expected ${w.length} byte counts >= 0`);
        }
      }
    })
  );
}

/** Lower convex hull of an item's options from its min-units option, costs strictly falling. */
function hullOf(item: Item): number[] {
  const idx = item.units.map((_, k) => k).sort((a, b) =>
    item.units[a] - item.units[b] || item.cost[a] - item.cost[b] || a - b
  );
  const pts: number[] = [];
  for (const k of idx) {
    if (pts.length === 0 || item.cost[k] < item.cost[pts[pts.length - 1]]) {
      if (pts.length > 0 && item.units[k] === item.units[pts[pts.length - 1]]) continue;
      pts.push(k);
    }
  }
  const hull: number[] = [];
  const u = item.units, c = item.cost;
  for (const k of pts) {
    while (hull.length >= 2) {
      const a = hull[hull.length - 2], b = hull[hull.length - 1];
      // Pop b when it lies strictly above the chord a→k.
      if ((c[b] - c[a]) * (u[k] - u[b]) > (c[k] - c[b]) * (u[b] - u[a])) hull.pop();
      else break;
    }
    hull.push(k);
  }
  return hull;
}

/** A change of one expert's option. */
interface Move {
  item: number;
  to: number;
  du: number;
  dc: number;
}

/** Mutable solution state shared by the greedy phases. */
class State {
  opt: number[];
  used = 0;
  constructor(readonly items: Item[], start: number[]) {
    this.opt = start;
    start.forEach((k, i) => this.used += items[i].units[k]);
  }
  apply(m: Move): void {
    this.opt[m.item] = m.to;
    this.used += m.du;
  }
  /** Every move, grouped by unit change; per group the two cheapest on distinct experts. */
  buckets(): Map<number, Move[]> {
    const map = new Map<number, Move[]>();
    this.items.forEach((it, i) => {
      const k0 = this.opt[i];
      for (let k = 0; k < it.units.length; k++) {
        if (k === k0) continue;
        const m = { item: i, to: k, du: it.units[k] - it.units[k0], dc: it.cost[k] - it.cost[k0] };
        const list = map.get(m.du) ?? [];
        const same = list.findIndex((x) => x.item === i);
        if (same >= 0) {
          if (list[same].dc <= m.dc) continue;
          list.splice(same, 1);
        }
        list.push(m);
        list.sort((a, b) => a.dc - b.dc || a.item - b.item);
        if (list.length > 2) list.pop();
        map.set(m.du, list);
      }
    });
    return map;
  }
  /** Cheapest single move or pair of moves (distinct experts) changing units by exactly `du`. */
  bestCombo(du: number, allowSingle: boolean): { moves: Move[]; dc: number } | null {
    const map = this.buckets();
    let best: { moves: Move[]; dc: number } | null = null;
    const consider = (moves: Move[]) => {
      const dc = moves.reduce((s, m) => s + m.dc, 0);
      if (!best || dc < best.dc) best = { moves, dc };
    };
    if (allowSingle) {
      const single = map.get(du);
      if (single) consider([single[0]]);
    }
    for (const [d1, l1] of map) {
      const d2 = du - d1;
      if (d1 > d2) continue;
      const l2 = map.get(d2);
      if (!l2) continue;
      for (const a of l1) {
        for (const b of l2) if (a.item !== b.item) consider([a, b]);
      }
    }
    return best;
  }
}

function solveDp(items: Item[], cap: number, exact: boolean): number[] {
  const width = cap + 1;
  let dp = new Float64Array(width).fill(Infinity);
  let next = new Float64Array(width);
  dp[0] = 0;
  const choice = new Uint8Array(items.length * width);
  items.forEach((it, i) => {
    next.fill(Infinity);
    const row = i * width;
    for (let x = 0; x < width; x++) {
      const base = dp[x];
      if (base === Infinity) continue;
      for (let k = 0; k < it.units.length; k++) {
        const y = x + it.units[k];
        if (y >= width) continue;
        const v = base + it.cost[k];
        if (v < next[y]) {
          next[y] = v;
          choice[row + y] = k;
        }
      }
    }
    [dp, next] = [next, dp];
  });
  let x = -1;
  if (exact) {
    for (x = cap; x >= 0 && dp[x] === Infinity; x--);
  } else {
    for (let y = 0; y < width; y++) if (x < 0 || dp[y] < dp[x]) x = y;
  }
  const opt = new Array<number>(items.length);
  for (let i = items.length - 1; i >= 0; i--) {
    opt[i] = choice[i * width + x];
    x -= items[i].units[opt[i]];
  }
  return opt;
}

function solveGreedy(
  items: Item[],
  cap: number,
  exact: boolean,
): { opt: number[]; lowerBound: number } {
  const hulls = items.map(hullOf);
  const state = new State(items, hulls.map((h) => h[0]));
  let cost = items.reduce((s, it, i) => s + it.cost[state.opt[i]], 0);
  // Hull steps, best saving per unit first; within an expert, in hull order.
  const steps: { item: number; seg: number; eff: number }[] = [];
  hulls.forEach((h, i) => {
    for (let s = 1; s < h.length; s++) {
      const it = items[i];
      const eff = (it.cost[h[s - 1]] - it.cost[h[s]]) / (it.units[h[s]] - it.units[h[s - 1]]);
      steps.push({ item: i, seg: s, eff });
    }
  });
  steps.sort((a, b) => b.eff - a.eff || a.item - b.item || a.seg - b.seg);
  const blocked = new Uint8Array(items.length);
  let lowerBound: number | null = null;
  for (const st of steps) {
    if (blocked[st.item]) continue;
    const it = items[st.item], h = hulls[st.item];
    const du = it.units[h[st.seg]] - it.units[h[st.seg - 1]];
    if (state.used + du <= cap) {
      const dc = it.cost[h[st.seg]] - it.cost[h[st.seg - 1]];
      state.apply({ item: st.item, to: h[st.seg], du, dc });
      cost += dc;
    } else {
      blocked[st.item] = 1;
      if (lowerBound === null) lowerBound = cost - st.eff * (cap - state.used);
    }
  }
  lowerBound ??= cost;
  // Exact-fit repair (average mode) or spending leftover bytes on improvements (byte mode).
  for (let guard = 0; state.used < cap && guard < items.length * 8; guard++) {
    const left = cap - state.used;
    if (exact) {
      const combo = state.bestCombo(left, true);
      if (combo) {
        combo.moves.forEach((m) => state.apply(m));
        break;
      }
    }
    let pick: Move | null = null;
    for (const list of state.buckets().values()) {
      for (const m of list) {
        if (m.du <= 0 || m.du > left || (!exact && m.dc >= 0)) continue;
        const better = exact
          ? !pick || m.du > pick.du || (m.du === pick.du && m.dc < pick.dc)
          : !pick || m.dc < pick.dc;
        if (better) pick = m;
      }
    }
    if (!pick) break;
    state.apply(pick);
  }
  // Exchanges at constant units while they lower the cost.
  for (let guard = 0; guard < items.length + 16; guard++) {
    const total = items.reduce((s, it, i) => s + it.cost[state.opt[i]], 0);
    const combo = state.bestCombo(0, true);
    if (!combo || combo.dc >= -1e-12 * (1 + Math.abs(total))) break;
    combo.moves.forEach((m) => state.apply(m));
  }
  return { opt: state.opt, lowerBound };
}

/** Solves a {@link BudgetProblem}; see the module doc for the method and guarantees. */
export function allocateBudget(problem: BudgetProblem): Allocation {
  validate(problem);
  const widths = problem.widths as readonly ExpertWidth[];
  const byteMode = problem.maxBytes !== undefined;
  // Bit-params in quarter bits when MXFP4 (4.25) is a candidate, so resources stay integers.
  const quarter = widths.every(Number.isInteger) ? 1 : 4;
  const items: Item[] = [];
  let totalParams = 0;
  problem.cost.forEach((row, l) =>
    row.forEach((cs, e) => {
      const p = problem.params?.[l]?.[e] ?? 1;
      totalParams += p;
      const r = byteMode ? [...problem.bytes![l][e]] : widths.map((w) => w * quarter * p);
      items.push({ layer: l, expert: e, units: r, cost: [...cs] });
    })
  );
  const budget = byteMode
    ? Math.floor(problem.maxBytes!)
    : Math.floor(problem.targetAverage! * quarter * totalParams * (1 + 1e-12));
  let base = 0, g = 0, maxUnits = 0;
  for (const it of items) {
    const r0 = Math.min(...it.units);
    base += r0;
    it.units = it.units.map((r) => r - r0);
    for (const d of it.units) g = gcd(g, d);
  }
  if (budget < base) {
    throw new LimitError(
      `budget: ${budget} ${byteMode ? "bytes" : "bit-params"} is below the smallest ` +
        `possible ${base} (every expert at its smallest option)`,
    );
  }
  g ||= 1;
  for (const it of items) {
    it.units = it.units.map((d) => d / g);
    maxUnits += Math.max(...it.units);
  }
  const cap = Math.min(Math.floor((budget - base) / g), maxUnits);
  const cells = items.length * (cap + 1);
  const notes = [`cost units of ${g} ${byteMode ? "bytes" : "bit-params"}, capacity ${cap}`];
  const wanted = problem.solver ?? "auto";
  let solver: "dp" | "greedy" = "greedy";
  let opt: number[] = [];
  let lowerBound = -Infinity;
  if (wanted !== "dp") {
    ({ opt, lowerBound } = solveGreedy(items, cap, !byteMode));
    const cost = items.reduce((s, it, i) => s + it.cost[opt[i]], 0);
    const proved = cost - lowerBound <= 1e-12 * (1 + Math.abs(cost));
    if (wanted === "auto" && !proved && cells <= (problem.maxDpCells ?? 2e7)) solver = "dp";
    else {
      notes.push(
        "solver greedy on convex hulls + exact-fit repair + exchanges" +
          (proved ? ": optimal (meets the LP lower bound)" : ""),
      );
    }
  }
  if (wanted === "dp" || solver === "dp") {
    solver = "dp";
    opt = solveDp(items, cap, !byteMode);
    notes.push(`solver dp over ${cells} cells: optimal for the given costs`);
  }
  const bits: BitsTable = problem.cost.map((row) => new Array<ExpertWidth>(row.length));
  let totalCost = 0, totalBytes = 0;
  items.forEach((it, i) => {
    bits[it.layer][it.expert] = widths[opt[i]];
    totalCost += it.cost[opt[i]];
    if (problem.bytes) totalBytes += problem.bytes[it.layer][it.expert][opt[i]];
  });
  if (solver === "dp") lowerBound = Math.max(lowerBound, totalCost);
  const summary = summarize(
    "budget",
    bits,
    problem.targetAverage ?? null,
    notes,
    problem.params ?? problem.cost.map((row) => row.map(() => 1)),
  );
  summary.solver = solver;
  summary.totalCost = totalCost;
  summary.lowerBound = lowerBound;
  if (problem.bytes) summary.totalBytes = totalBytes;
  if (!byteMode && !summary.exact) {
    notes.push(
      `target ${problem.targetAverage} not reachable exactly with widths [${widths}]: ` +
        `achieved ${summary.achievedAverage.toFixed(6)} (largest reachable below)`,
    );
  }
  // Rank within a layer: more bits first, then larger cost saved from lowest to highest width.
  const rank = problem.cost.map((row, l) => {
    const order = row.map((_, e) => e).sort((a, b) =>
      bits[l][b] - bits[l][a] ||
      (row[b][0] - row[b][row[b].length - 1]) - (row[a][0] - row[a][row[a].length - 1]) ||
      a - b
    );
    const r = new Array<number>(row.length);
    order.forEach((e, pos) => r[e] = pos);
    return r;
  });
  return { bits, rank, summary };
}
