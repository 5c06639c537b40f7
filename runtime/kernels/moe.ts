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
 * How tokens choose experts: softmax over the E router logits, the top k (largest first; ties go
 * to the lower expert index), weights = their probabilities, renormalised to sum 1 when
 * `normTopK`, times `scale`.
 */
export interface RoutingKey {
  numExperts: number;
  topK: number;
  normTopK: boolean;
  /** Multiplier of the chosen experts' weights (routed scaling factor; 1 for most models). */
  scale: number;
  /** PhiMoE sparsemixer routing with this jitter instead (top-2; kernels/sparsemixer.ts). */
  sparsemixer?: number;
}

function routingLabel(key: RoutingKey): string {
  if (key.sparsemixer !== undefined) return `${key.numExperts}.sparsemixer.${key.sparsemixer}`;
  return `${key.numExperts}.${key.topK}${key.normTopK ? ".norm" : ""}${
    key.scale === 1 ? "" : `.x${key.scale}`
  }`;
}

/**
 * WGSL `fn chooseExperts(t: u32)`: routes token t, reading routerLogits[t·E ..] and writing
 * expertIds and expertWeights [t·K ..]. The one routing routine of both routing kernels.
 */
function chooseExpertsFunction(key: RoutingKey): string {
  if (key.sparsemixer !== undefined) {
    return sparsemixerChooseFunction(key.numExperts, key.sparsemixer);
  }
  const { numExperts: E, topK: K } = key;
  const weight = key.normTopK ? "chosen[k] / sum" : "chosen[k]";
  return `
fn chooseExperts(t: u32) {
  let base = t * ${u(E)};
  var m = -3.0e38;
  for (var e = 0u; e < ${u(E)}; e++) { m = max(m, routerLogits[base + e]); }
  var z = 0.0;
  for (var e = 0u; e < ${u(E)}; e++) { z += exp(routerLogits[base + e] - m); }
  var taken: array<bool, ${E}>;
  for (var e = 0u; e < ${u(E)}; e++) { taken[e] = false; }
  var chosen: array<f32, ${K}>;
  var sum = 0.0;
  for (var k = 0u; k < ${u(K)}; k++) {
    var best = 0u;
    var bestLogit = -3.4e38;
    for (var e = 0u; e < ${u(E)}; e++) {
      let l = routerLogits[base + e];
      if (!taken[e] && l > bestLogit) { bestLogit = l; best = e; }
    }
    taken[best] = true;
    chosen[k] = exp(bestLogit - m) / z;
    sum += chosen[k];
    expertIds[t * ${u(K)} + k] = best;
  }
  for (var k = 0u; k < ${u(K)}; k++) {
    expertWeights[t * ${u(K)} + k] = ${key.scale === 1 ? weight : `${f(key.scale)} * ${weight}`};
  }
}`;
}

/** Routing one token per invocation (classic kernel style). Dispatch (ceil(T / 64), 1, 1). */
export function routerSource(key: RoutingKey): KernelSource {
  return kernelSource(
    `router.${routingLabel(key)}`,
    [
      ["step", "Step", "uniform"],
      ["routerLogits", "array<f32>"],
      ["expertIds", "array<u32>", "storage, read_write"],
      ["expertWeights", "array<f32>", "storage, read_write"],
    ],
    `${chooseExpertsFunction(key)}
@compute @workgroup_size(${EW})
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
  if (id.x >= step.T) { return; }
  chooseExperts(id.x);
}`,
  );
}

/**
 * Routing plus per-expert token lists (tiled kernel style), in one workgroup: every token is
 * routed as by {@link routerSource}, then for each expert e, routes[e] = the number of
 * (token, slot) rows that chose e and routes[E + e·capacity + j] = the j-th such row index
 * t·K + k, in increasing order. `capacity` is the most tokens a batch holds (the prefill chunk);
 * capacity · K must fit in workgroup memory (≤ 4096). Dispatch (1, 1, 1).
 */
export function routeListsSource(key: RoutingKey, capacity: number): KernelSource {
  const { numExperts: E, topK: K } = key;
  if (capacity * K > 4096) {
    throw new RangeError(`routeListsSource: capacity ${capacity} × top-k ${K} > 4096`);
  }
  return kernelSource(
    `route_lists.${routingLabel(key)}.${capacity}`,
    [
      ["step", "Step", "uniform"],
      ["routerLogits", "array<f32>"],
      ["expertIds", "array<u32>", "storage, read_write"],
      ["expertWeights", "array<f32>", "storage, read_write"],
      ["routes", "array<u32>", "storage, read_write"],
    ],
    `${chooseExpertsFunction(key)}
const E = ${u(E)};
const K = ${u(K)};
const CAPACITY = ${u(capacity)};
var<workgroup> chosenIds: array<u32, ${capacity * K}>;
@compute @workgroup_size(${EW})
fn main(@builtin(local_invocation_index) li: u32) {
  let T = min(step.T, CAPACITY);
  for (var t = li; t < T; t += ${u(EW)}) {
    chooseExperts(t);
    for (var k = 0u; k < K; k++) { chosenIds[t * K + k] = expertIds[t * K + k]; }
  }
  workgroupBarrier();
  for (var e = li; e < E; e += ${u(EW)}) {
    var n = 0u;
    for (var r = 0u; r < T * K; r++) {
      if (chosenIds[r] == e) {
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
