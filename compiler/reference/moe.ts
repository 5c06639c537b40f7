/**
 * Feed-forward blocks in float64: the sparse MoE block and the dense one.
 *
 * MoE over n tokens: router logits = router · h; each token is routed (router.ts) and shown to
 * the observer; each chosen expert then runs once over the tokens that chose it, and
 * out[t] = Σ w_e · expert_e(h[t]) (experts in index order), plus the shared expert, scaled by
 * sigmoid(shared_expert_gate · h) when gated. Only the chosen experts are computed. The capacity
 * router (capacity.ts) routes the n tokens together and may refuse some: those get no expert.
 *
 * @module
 */

import type { DenseFfnSpec, MoeFfnSpec, StackName } from "../../schemas/model.ts";
import { addBias, matmul, sigmoid } from "./math.ts";
import { mlp, readMlp, type ReferenceMlp } from "./mlp.ts";
import { capacityRoutes } from "./capacity.ts";
import { checkRouter, route, type Routing } from "./router.ts";
import { sparsemixer } from "./sparsemixer.ts";
import type { LayerWeights } from "./weights.ts";

/** A sparse MoE block in float64. */
export interface ReferenceMoe {
  kind: "moe";
  /** Its position in `ReferenceModel.moe` (compiler/ir.ts moeLayers order). */
  index: number;
  stack: StackName;
  layer: number;
  spec: MoeFfnSpec;
  /** [E, H] router rows. */
  router: Float64Array;
  /** [E] router bias, added to the logits (gpt-oss). */
  routerBias: Float64Array | null;
  /** [E] the selection-only bias added to the scores for the choice (router_selection_bias). */
  selectionBias: Float64Array | null;
  /** Routed experts by index; callers may swap entries (a quantized expert, say). */
  experts: ReferenceMlp[];
  shared: ReferenceMlp | null;
  /** [1, H] the shared expert's sigmoid gate row, when gated. */
  sharedGate: Float64Array | null;
}

/** A dense feed-forward block in float64. */
export interface ReferenceDense {
  kind: "dense";
  mlp: ReferenceMlp;
}

/**
 * Called once per (MoE block, token) with the normalised hidden state `h` the experts see, the
 * chosen expert ids and their mixing weights. `moeLayer` indexes `ReferenceModel.moe` (the
 * compiler/ir.ts moeLayers order). The frequency pass counts routes with it; GPTQ collects each
 * expert's routed inputs. `h` is a view into a buffer that is overwritten after the call: copy it
 * (`h.slice()`) to keep it. `position` is the token's position in the sequence. A token the
 * capacity router refuses reaches no expert and is not reported.
 */
export type MoeObserver = (
  moeLayer: number,
  position: number,
  h: Float64Array,
  experts: readonly number[],
  weights: readonly number[],
) => void;

/** Reads a MoE block's weights (router, experts, shared expert and its gate). */
export async function readMoe(
  spec: MoeFfnSpec,
  weights: LayerWeights,
  place: { index: number; stack: StackName; layer: number },
): Promise<ReferenceMoe> {
  if (spec.router.kind !== "capacity") routerOf(spec);
  const experts: ReferenceMlp[] = [];
  for (let e = 0; e < spec.numExperts; e++) {
    experts.push(await readMlp(spec.expert, "expert", weights, e));
  }
  return {
    kind: "moe",
    ...place,
    spec,
    router: await weights.read("router"),
    routerBias: spec.router.kind === "topk" && spec.router.bias
      ? await weights.read("router_bias")
      : null,
    selectionBias: spec.router.kind === "topk" && spec.router.selectionBias
      ? await weights.read("router_selection_bias")
      : null,
    experts,
    shared: spec.shared ? await readMlp(spec.shared.mlp, "shared", weights) : null,
    sharedGate: spec.shared?.gated ? await weights.read("shared_expert_gate") : null,
  };
}

/** Reads a dense block's MLP (roles `dense_*`). */
export async function readDense(
  spec: DenseFfnSpec,
  weights: LayerWeights,
): Promise<ReferenceDense> {
  return { kind: "dense", mlp: await readMlp(spec.mlp, "dense", weights) };
}

/** The MoE block over n tokens h [n, H] → out [n, H]; `start` is the first token's position. */
export function moeBlock(
  out: Float64Array,
  h: Float64Array,
  n: number,
  f: ReferenceMoe,
  start: number,
  observer?: MoeObserver,
): void {
  const H = h.length / n;
  const E = f.spec.numExperts;
  const logits = new Float64Array(n * E);
  matmul(logits, h, f.router, n, E, H);
  if (f.routerBias) addBias(logits, f.routerBias, n);
  const routes = routeTokens(f.spec, logits, n, f.selectionBias);

  // Route every token; collect, per expert, the tokens it serves and their weights.
  const tokensOf: number[][] = Array.from({ length: E }, () => []);
  const weightsOf: number[][] = Array.from({ length: E }, () => []);
  for (let t = 0; t < n; t++) {
    const r = routes[t];
    if (r.experts.length === 0) continue;
    observer?.(f.index, start + t, h.subarray(t * H, (t + 1) * H), r.experts, r.weights);
    for (let j = 0; j < r.experts.length; j++) {
      tokensOf[r.experts[j]].push(t);
      weightsOf[r.experts[j]].push(r.weights[j]);
    }
  }

  // Each chosen expert over its tokens: out[t] += w · expert(h[t]).
  for (let e = 0; e < E; e++) {
    const tokens = tokensOf[e];
    const m = tokens.length;
    if (m === 0) continue;
    const xe = new Float64Array(m * H);
    for (let i = 0; i < m; i++) xe.set(h.subarray(tokens[i] * H, (tokens[i] + 1) * H), i * H);
    const ye = new Float64Array(m * H);
    mlp(ye, xe, m, f.experts[e], H);
    for (let i = 0; i < m; i++) {
      const w = weightsOf[e][i];
      const o = tokens[i] * H;
      for (let c = 0; c < H; c++) out[o + c] += w * ye[i * H + c];
    }
  }

  // The shared expert, optionally scaled by sigmoid(sharedGate · h).
  if (f.shared) {
    const ys = new Float64Array(n * H);
    mlp(ys, h, n, f.shared, H);
    const gate = new Float64Array(n);
    if (f.sharedGate) matmul(gate, h, f.sharedGate, n, 1, H);
    for (let t = 0; t < n; t++) {
      const g = f.sharedGate ? sigmoid(gate[t]) : 1;
      for (let c = 0; c < H; c++) out[t * H + c] += g * ys[t * H + c];
    }
  }
}

/** The routing function of a MoE block; UnsupportedError for a router the reference lacks. */
/**
 * Routes n tokens from their router logits [n, E]: token by token, or (capacity routers) over the
 * whole sequence, where a refused token gets no expert.
 */
function routeTokens(
  spec: MoeFfnSpec,
  logits: Float64Array,
  n: number,
  selectionBias: Float64Array | null,
): Routing[] {
  const E = spec.numExperts;
  if (spec.router.kind === "capacity") return capacityRoutes(logits, n, E, spec.router.capacity);
  const router = routerOf(spec, selectionBias ?? undefined);
  return Array.from({ length: n }, (_, t) => router(logits.subarray(t * E, (t + 1) * E)));
}

/** The per-token router of a topk (with its selection bias, if any) or sparsemixer MoE block. */
function routerOf(
  spec: MoeFfnSpec,
  selectionBias?: Float64Array,
): (logits: Float64Array) => Routing {
  const r = spec.router;
  if (r.kind === "sparsemixer") return (logits) => sparsemixer(logits, r.jitter);
  if (r.kind === "capacity") throw new Error("a capacity router routes whole sequences");
  const topk = checkRouter(r);
  return (logits) => route(logits, spec.topK, topk, selectionBias);
}

/** The dense block over n tokens h [n, H] → out [n, H]. */
export function denseBlock(out: Float64Array, h: Float64Array, n: number, f: ReferenceDense) {
  mlp(out, h, n, f.mlp, h.length / n);
}
