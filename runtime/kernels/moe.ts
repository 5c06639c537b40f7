/**
 * The MoE kernels around the expert matmuls: routing (the router logits → each token's k experts
 * and their weights, one WGSL routine shared by both routing kernels), the per-expert token
 * lists of the tiled kernel style, and the combine that adds the weighted expert outputs (and
 * the shared expert) to the residual stream.
 *
 * Buffers: routerLogits [T, E]; expertIds and expertWeights [T, K] (slot k of token t at t·K + k);
 * expertOut [T·K, H] (one row per (token, slot)).
 *
 * @module
 */

import { f, type KernelSource, kernelSource, u } from "./kernel.ts";
import { EW } from "./ops.ts";
import { sparsemixerChooseFunction } from "./sparsemixer.ts";

/**
 * How tokens choose experts (the reference's compiler/reference/router.ts, in f32):
 * scores = softmax over the E router logits, or sigmoid of each; the choice adds
 * `selectionBias` (a bound vector [E]) when set; with `groups`, only the experts of the best
 * `keep` of `count` consecutive groups (group score: its max choice, or the sum of its two best)
 * stay candidates; the top k candidates by choice (largest first; ties go to the lower expert
 * index); weights = their unbiased scores, divided by (sum + 1e-20) when `normTopK`, × `scale`.
 */
export interface RoutingKey {
  numExperts: number;
  topK: number;
  normTopK: boolean;
  /** Multiplier of the chosen experts' weights (routed scaling factor; 1 for most models). */
  scale: number;
  /** PhiMoE sparsemixer routing with this jitter instead (top-2; kernels/sparsemixer.ts). */
  sparsemixer?: number;
  /** Score function (softmax when absent). */
  scoring?: "softmax" | "sigmoid";
  /** A selection-only bias vector is bound (`selectionBias`). */
  selectionBias?: boolean;
  /** Group-limited choice (DeepSeek); null or absent: every expert is a candidate. */
  groups?: { count: number; keep: number; score: "max" | "top2sum" } | null;
}

/** Most experts one router handles (two f32 arrays of E live in workgroup memory). */
export const MAX_ROUTED_EXPERTS = 1024;

/** Lanes of a routing workgroup (one workgroup routes one token at a time). */
const RW = 64;

function routingLabel(key: RoutingKey): string {
  if (key.sparsemixer !== undefined) return `${key.numExperts}.sparsemixer.${key.sparsemixer}`;
  const g = key.groups;
  return `${key.numExperts}.${key.topK}${key.normTopK ? ".norm" : ""}${
    key.scale === 1 ? "" : `.x${key.scale}`
  }${key.scoring === "sigmoid" ? ".sig" : ""}${key.selectionBias ? ".bias" : ""}${
    g ? `.g${g.count}k${g.keep}${g.score}` : ""
  }`;
}

/** The bindings the routing routine reads besides routerLogits/expertIds/expertWeights. */
function routingDecls(key: RoutingKey): [string, string][] {
  return key.selectionBias ? [["selectionBias", "array<f32>"]] : [];
}

/**
 * WGSL `fn chooseExperts(t: u32, li: u32)`, called by all RW lanes of a workgroup together
 * (lane li) in uniform control flow: routes token t, reading routerLogits[t·E ..] and writing
 * expertIds and expertWeights [t·K ..]. Every step is parallel over the lanes (strided over the
 * experts, tree reductions over lanes); the k choices are k rounds of a parallel arg-max. The
 * one routing routine of both routing kernels.
 */
function chooseExpertsFunction(key: RoutingKey): string {
  if (key.sparsemixer !== undefined) {
    return sparsemixerChooseFunction(key.numExperts, key.sparsemixer);
  }
  const { numExperts: E, topK: K } = key;
  if (E > MAX_ROUTED_EXPERTS) {
    throw new RangeError(`routing: ${E} experts > ${MAX_ROUTED_EXPERTS}`);
  }
  const g = key.groups ?? null;
  const softmax = (key.scoring ?? "softmax") === "softmax";
  const bias = key.selectionBias ? " + selectionBias[e]" : "";
  const size = g ? E / g.count : E;
  const groupScore = !g ? "" : g.score === "max"
    ? `var best = -3.4e38;
    for (var i = 0u; i < ${u(size)}; i++) { best = max(best, rChoice[gi * ${u(size)} + i]); }
    rGroup[gi] = best;`
    : `var b1 = -3.4e38;
    var b2 = -3.4e38;
    for (var i = 0u; i < ${u(size)}; i++) {
      let c = rChoice[gi * ${u(size)} + i];
      if (c > b1) { b2 = b1; b1 = c; } else if (c > b2) { b2 = c; }
    }
    rGroup[gi] = b1 + b2;`;
  const groupStep = !g ? "" : `
  // Group scores, then each group's rank (ties to the lower index): the best ${g.keep} stay.
  for (var gi = li; gi < ${u(g.count)}; gi += ${u(RW)}) {
    ${groupScore}
  }
  workgroupBarrier();
  for (var gi = li; gi < ${u(g.count)}; gi += ${u(RW)}) {
    var rank = 0u;
    for (var h = 0u; h < ${u(g.count)}; h++) {
      let o = rGroup[h];
      if (o > rGroup[gi] || (o == rGroup[gi] && h < gi)) { rank++; }
    }
    rKeep[gi] = select(0u, 1u, rank < ${u(g.keep)});
  }
  workgroupBarrier();
  for (var e = li; e < ${u(E)}; e += ${u(RW)}) {
    if (rKeep[e / ${u(size)}] == 0u) { rChoice[e] = ROUTE_NONE; }
  }
  workgroupBarrier();`;
  const weight = key.normTopK ? "rChosen[k] / (sum + 1e-20)" : "rChosen[k]";
  return `
const ROUTE_NONE = -3.4e38;
var<workgroup> rScore: array<f32, ${E}>;
var<workgroup> rChoice: array<f32, ${E}>;
var<workgroup> rValue: array<f32, ${RW}>;
var<workgroup> rIndex: array<u32, ${RW}>;
var<workgroup> rChosen: array<f32, ${K}>;
${
    g
      ? `var<workgroup> rGroup: array<f32, ${g.count}>;
var<workgroup> rKeep: array<u32, ${g.count}>;`
      : ""
  }

// Max (op 0) or sum (op 1) of rValue over the lanes, left in rValue[0].
fn routeReduce(li: u32, op: u32) {
  for (var s = ${u(RW / 2)}; s > 0u; s >>= 1u) {
    workgroupBarrier();
    if (li < s) {
      rValue[li] = select(max(rValue[li], rValue[li + s]), rValue[li] + rValue[li + s], op == 1u);
    }
  }
  workgroupBarrier();
}

fn chooseExperts(t: u32, li: u32) {
  let base = t * ${u(E)};
${
    softmax
      ? `  var m = -3.4e38;
  for (var e = li; e < ${u(E)}; e += ${u(RW)}) { m = max(m, routerLogits[base + e]); }
  rValue[li] = m;
  routeReduce(li, 0u);
  m = rValue[0];
  workgroupBarrier();
  var z = 0.0;
  for (var e = li; e < ${u(E)}; e += ${u(RW)}) {
    let p = exp(routerLogits[base + e] - m);
    rScore[e] = p;
    z += p;
  }
  rValue[li] = z;
  routeReduce(li, 1u);
  z = rValue[0];
  for (var e = li; e < ${u(E)}; e += ${u(RW)}) {
    rScore[e] = rScore[e] / z;
    rChoice[e] = rScore[e]${bias};
  }`
      : `  for (var e = li; e < ${u(E)}; e += ${u(RW)}) {
    rScore[e] = 1.0 / (1.0 + exp(-routerLogits[base + e]));
    rChoice[e] = rScore[e]${bias};
  }`
  }
  workgroupBarrier();${groupStep}
  // ${K} rounds of a parallel arg-max over the candidates; the winner leaves the candidates.
  for (var k = 0u; k < ${u(K)}; k++) {
    var bv = ROUTE_NONE;
    var bi = 0xffffffffu;
    for (var e = li; e < ${u(E)}; e += ${u(RW)}) {
      let c = rChoice[e];
      if (c != ROUTE_NONE && (c > bv || bi == 0xffffffffu)) { bv = c; bi = e; }
    }
    rValue[li] = bv;
    rIndex[li] = bi;
    for (var s = ${u(RW / 2)}; s > 0u; s >>= 1u) {
      workgroupBarrier();
      if (li < s) {
        let oi = rIndex[li + s];
        let ov = rValue[li + s];
        let mi = rIndex[li];
        if (oi != 0xffffffffu && (mi == 0xffffffffu || ov > rValue[li] || (ov == rValue[li] && oi < mi))) {
          rValue[li] = ov;
          rIndex[li] = oi;
        }
      }
    }
    workgroupBarrier();
    if (li == 0u) {
      let best = rIndex[0];
      expertIds[t * ${u(K)} + k] = best;
      rChosen[k] = rScore[best];
      rChoice[best] = ROUTE_NONE;
    }
    workgroupBarrier();
  }
  if (li == 0u) {
    var sum = 0.0;
    for (var k = 0u; k < ${u(K)}; k++) { sum += rChosen[k]; }
    for (var k = 0u; k < ${u(K)}; k++) {
      expertWeights[t * ${u(K)} + k] = ${key.scale === 1 ? weight : `${f(key.scale)} * ${weight}`};
    }
  }
  workgroupBarrier();
}`;
}

/** Routing one token per workgroup (classic kernel style). Dispatch (T, 1, 1). */
export function routerSource(key: RoutingKey): KernelSource {
  return kernelSource(
    `router.${routingLabel(key)}`,
    [
      ["step", "Step", "uniform"],
      ["routerLogits", "array<f32>"],
      ["expertIds", "array<u32>", "storage, read_write"],
      ["expertWeights", "array<f32>", "storage, read_write"],
      ...routingDecls(key),
    ],
    `${chooseExpertsFunction(key)}
@compute @workgroup_size(${RW})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
  if (wid.x >= step.T) { return; }
  chooseExperts(wid.x, li);
}`,
  );
}

/**
 * Routing plus per-expert token lists (tiled kernel style), in one workgroup: every token is
 * routed in turn as by {@link routerSource} (all lanes on one token), then for each expert e,
 * routes[e] = the number of (token, slot) rows that chose e and routes[E + e·capacity + j] = the
 * j-th such row index t·K + k, in increasing order. `capacity` is the most tokens a batch holds
 * (the prefill chunk). Dispatch (1, 1, 1).
 */
export function routeListsSource(key: RoutingKey, capacity: number): KernelSource {
  const { numExperts: E, topK: K } = key;
  return kernelSource(
    `route_lists.${routingLabel(key)}.${capacity}`,
    [
      ["step", "Step", "uniform"],
      ["routerLogits", "array<f32>"],
      ["expertIds", "array<u32>", "storage, read_write"],
      ["expertWeights", "array<f32>", "storage, read_write"],
      ["routes", "array<u32>", "storage, read_write"],
      ...routingDecls(key),
    ],
    `${chooseExpertsFunction(key)}
const E = ${u(E)};
const K = ${u(K)};
const CAPACITY = ${u(capacity)};
@compute @workgroup_size(${RW})
fn main(@builtin(local_invocation_index) li: u32) {
  let T = min(step.T, CAPACITY);
  for (var t = 0u; t < T; t++) { chooseExperts(t, li); }
  storageBarrier();
  for (var e = li; e < E; e += ${u(RW)}) {
    var n = 0u;
    for (var r = 0u; r < T * K; r++) {
      if (expertIds[r] == e) {
        routes[E + e * CAPACITY + n] = r;
        n++;
      }
    }
    routes[e] = n;
  }
}`,
  );
}

/** What the combine adds besides the routed experts. */
export type SharedExpertTerm = "none" | "plain" | "gated";

/** Options of {@link combineSource}. */
export interface CombineKey {
  hidden: number;
  topK: number;
  /** "plain": + sharedOut[t]; "gated": + sigmoid(sharedGate[t]) · sharedOut[t]. */
  shared: SharedExpertTerm;
  /** Multiplier of the block output before the residual add (the layer's residual scale). */
  residualScale: number;
}

/**
 * MoE combine with the residual: x[t] += residualScale · (Σ_k expertWeights[t,k] ·
 * expertOut[t·K + k] + shared term). Dispatch ops.ts elementGroups(hidden, T).
 */
export function combineSource(key: CombineKey): KernelSource {
  const { hidden, topK: K, shared } = key;
  const decls: [string, string, string?][] = [
    ["step", "Step", "uniform"],
    ["x", "array<f32>", "storage, read_write"],
    ["expertOut", "array<f32>"],
    ["expertWeights", "array<f32>"],
  ];
  if (shared !== "none") decls.push(["sharedOut", "array<f32>"]);
  if (shared === "gated") decls.push(["sharedGate", "array<f32>"]);
  const sharedTerm = shared === "none"
    ? ""
    : shared === "plain"
    ? "v += sharedOut[t * H + c];"
    : "v += sharedOut[t * H + c] / (1.0 + exp(-sharedGate[t]));";
  const rs = key.residualScale;
  return kernelSource(
    `combine.${hidden}.${K}.${shared}${rs === 1 ? "" : `.x${rs}`}`,
    decls,
    `
const H = ${u(hidden)};
@compute @workgroup_size(${EW})
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
  let c = id.x;
  let t = id.y;
  if (c >= H || t >= step.T) { return; }
  var v = 0.0;
  for (var k = 0u; k < ${u(K)}; k++) {
    v += expertWeights[t * ${u(K)} + k] * expertOut[(t * ${u(K)} + k) * H + c];
  }
  ${sharedTerm}
  x[t * H + c] += ${rs === 1 ? "v" : `${f(rs)} * v`};
}`,
  );
}
