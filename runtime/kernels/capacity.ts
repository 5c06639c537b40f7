/**
 * Top-1 routing with expert capacity (Switch Transformer) and the kernels around it: the ReLU
 * of the two-matrix experts and the top-1 combine.
 *
 * Routing follows the float64 reference (compiler/reference/capacity.ts), which is
 * transformers' SwitchTransformersTop1Router at inference: each token goes to the argmax of its
 * router logits (the lowest index among ties), weighted by that expert's softmax probability;
 * each expert accepts at most `capacity` of the tokens routed together (the batch of one forward
 * call), in position order, and refuses the rest. Only a token's argmax expert can refuse it; a
 * refused token gets no expert, so its feed-forward output is zero and the layer passes the
 * residual through.
 *
 * Outputs, in the layouts of kernels/moe.ts with K = 1: expertIds [T] (a refused token gets the
 * out-of-range id E, which no expert matmul serves), expertWeights [T] (0 when refused), and the
 * tiled style's per-expert lists: routes[e] = accepted tokens of e, routes[E + e·listCapacity + j]
 * the j-th of them.
 *
 * @module
 */

import { f, type KernelSource, kernelSource, u } from "./kernel.ts";
import { EW } from "./ops.ts";

/** Parameters of {@link capacityRouteSource}. */
export interface CapacityKey {
  numExperts: number;
  /** Tokens an expert accepts per forward call. */
  capacity: number;
  /** Entries per expert list in `routes` (the engine's most tokens per forward). */
  listCapacity: number;
}

/** Lanes of the routing workgroup. */
const RW = 64;

/**
 * Capacity routing of the step's T tokens in one workgroup: the arg-max and weight of each
 * token (lanes over tokens), the position-ordered acceptance per expert (lanes over experts),
 * then refused tokens marked. Dispatch (1, 1, 1).
 */
export function capacityRouteSource(key: CapacityKey): KernelSource {
  const { numExperts: E, capacity: C, listCapacity: L } = key;
  return kernelSource(
    `capacity_route.${E}.${C}.${L}`,
    [
      ["step", "Step", "uniform"],
      ["routerLogits", "array<f32>"],
      ["expertIds", "array<u32>", "storage, read_write"],
      ["expertWeights", "array<f32>", "storage, read_write"],
      ["routes", "array<u32>", "storage, read_write"],
    ],
    `
const E = ${u(E)};
const CAP = ${u(C)};
const L = ${u(L)};
@compute @workgroup_size(${RW})
fn main(@builtin(local_invocation_index) li: u32) {
  let T = min(step.T, L);
  for (var t = li; t < T; t += ${u(RW)}) {
    let base = t * E;
    var best = 0u;
    var m = routerLogits[base];
    for (var e = 1u; e < E; e++) {
      let v = routerLogits[base + e];
      if (v > m) { m = v; best = e; }
    }
    var z = 0.0;
    for (var e = 0u; e < E; e++) { z += exp(routerLogits[base + e] - m); }
    expertIds[t] = best;
    expertWeights[t] = 1.0 / z;
  }
  storageBarrier();
  // Each expert accepts its first CAP tokens in position order; the rest are marked (weight −1).
  for (var e = li; e < E; e += ${u(RW)}) {
    var seen = 0u;
    var kept = 0u;
    for (var t = 0u; t < T; t++) {
      if (expertIds[t] != e) { continue; }
      seen++;
      if (seen <= CAP) {
        routes[E + e * L + kept] = t;
        kept++;
      } else {
        expertWeights[t] = -1.0;
      }
    }
    routes[e] = kept;
  }
  storageBarrier();
  for (var t = li; t < T; t += ${u(RW)}) {
    if (expertWeights[t] < 0.0) {
      expertIds[t] = E;
      expertWeights[t] = 0.0;
    }
  }
}`,
  );
}

/**
 * Top-1 combine with the residual: x[t] += residualScale · expertWeights[t] · expertOut[t] for
 * accepted tokens (expertIds[t] < E); refused tokens' rows are never read. Dispatch
 * ops.ts elementGroups(hidden, T).
 */
export function top1CombineSource(
  hidden: number,
  numExperts: number,
  residualScale = 1,
): KernelSource {
  const rs = residualScale;
  return kernelSource(
    `top1_combine.${hidden}.${numExperts}${rs === 1 ? "" : `.x${rs}`}`,
    [
      ["step", "Step", "uniform"],
      ["x", "array<f32>", "storage, read_write"],
      ["expertOut", "array<f32>"],
      ["expertIds", "array<u32>"],
      ["expertWeights", "array<f32>"],
    ],
    `
@compute @workgroup_size(${EW})
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
  let c = id.x;
  let t = id.y;
  if (c >= ${u(hidden)} || t >= step.T || expertIds[t] >= ${u(numExperts)}) { return; }
  let v = expertWeights[t] * expertOut[t * ${u(hidden)} + c];
  x[t * ${u(hidden)} + c] += ${rs === 1 ? "v" : `${f(rs)} * v`};
}`,
  );
}

/** ReLU in place over [T, width]. Dispatch ops.ts elementGroups(width, T). */
export function reluSource(width: number): KernelSource {
  return kernelSource(
    `relu.${width}`,
    [["step", "Step", "uniform"], ["x", "array<f32>", "storage, read_write"]],
    `
@compute @workgroup_size(${EW})
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
  if (id.x >= ${u(width)} || id.y >= step.T) { return; }
  let i = id.y * ${u(width)} + id.x;
  x[i] = max(x[i], 0.0);
}`,
  );
}
