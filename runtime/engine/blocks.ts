/**
 * The block variants of the WebGPU engine, one function each, appending the dispatches of one
 * pre-norm residual block `hidden += residualScale · body(norm(hidden))` to a plan: GQA
 * attention, a MoE feed-forward block and a dense one (support.ts lists the variants they
 * cover). Every block leaves its result in acts.hidden; the residual add and its scale are
 * fused into the block's last kernel (the output projection, the MoE combine, the down
 * projection).
 *
 * @module
 */

import type { MlpSpec, MoeFfnSpec } from "../../schemas/model.ts";
import {
  type AttentionKey,
  attentionPrefillSource,
  attentionSource,
  prefillGroups,
  prefillTile,
  ropeStoreSource,
  ropeStoreWidth,
} from "../kernels/attention.ts";
import { combineSource, type RoutingKey } from "../kernels/moe.ts";
import { swigluSource } from "../kernels/ops.ts";
import { clampedSwigluSource, expertBiasSource } from "../kernels/expert_extras.ts";
import type { KvCache } from "./activations.ts";
import type { PlanBuilder } from "./plan.ts";
import type { AttentionWeights, DenseWeights, MlpWeights, MoeWeights } from "./weights.ts";

/**
 * GQA attention: norm → q, k, v projections (+ biases) → q/k norm → clamp, RoPE and the KV-cache
 * store (one kernel) → attention over the cache → output projection added to the residual.
 */
export function attentionBlock(
  plan: PlanBuilder,
  w: AttentionWeights,
  residualScale: number,
  cache: KvCache,
  rope: GPUBuffer,
): void {
  const { acts } = plan;
  const a = w.spec;
  const shape = { numHeads: a.numHeads, numKvHeads: a.numKvHeads, headDim: a.headDim };
  const slots = plan.ctx.slots;
  const ropeAndCache = { rope, kCache: cache.keys, vCache: cache.values };
  const pairs = a.position.kind === "rope"
    ? { rotaryDim: a.position.rotaryDim, pairing: a.position.pairing }
    : {};
  plan.preNorm(w.norm, w.normWeight, w.normBias);

  let q: GPUBuffer, qStride: number;
  if (w.qkv.kind === "stacked") {
    // One projection [q | k | v] per token (no q/k norm to apply between).
    plan.matmul(w.qkv.qkv, acts.normed, acts.qkv, { bias: w.qkv.bias });
    plan.elementwise(
      ropeStoreSource({ ...shape, packed: true, clip: a.clipQkv, ...pairs, slots }),
      { qkv: acts.qkv, ...ropeAndCache },
      ropeStoreWidth(shape),
    );
    q = acts.qkv;
    qStride = (a.numHeads + 2 * a.numKvHeads) * a.headDim;
  } else {
    plan.matmul(w.qkv.q, acts.normed, acts.q, { bias: w.qkv.qBias });
    plan.matmul(w.qkv.k, acts.normed, acts.k, { bias: w.qkv.kBias });
    plan.matmul(w.qkv.v, acts.normed, acts.v, { bias: w.qkv.vBias });
    const eps = a.qkNormSpec.eps;
    if (a.qkNorm === "head") {
      plan.rmsNorm(acts.q, w.qNorm!, null, a.headDim, a.numHeads, eps);
      plan.rmsNorm(acts.k, w.kNorm!, null, a.headDim, a.numKvHeads, eps);
    } else if (a.qkNorm === "full") {
      plan.rmsNorm(acts.q, w.qNorm!, null, a.numHeads * a.headDim, 1, eps);
      plan.rmsNorm(acts.k, w.kNorm!, null, a.numKvHeads * a.headDim, 1, eps);
    }
    plan.elementwise(
      ropeStoreSource({ ...shape, packed: false, clip: a.clipQkv, ...pairs, slots }),
      { q: acts.q, k: acts.k, v: acts.v, ...ropeAndCache },
      ropeStoreWidth(shape),
    );
    q = acts.q;
    qStride = a.numHeads * a.headDim;
  }

  const key = {
    ...shape,
    qStride,
    scale: a.scale,
    sinks: a.sinks,
    window: a.slidingWindow,
    slots,
  };
  attend(plan, key, q, cache, w.sinks);
  // The output bias was uploaded × residualScale (the kernel adds it after the scale).
  const o = { accumulate: true, scale: residualScale, bias: w.oBias };
  plan.matmul(w.o, acts.attention, acts.hidden, o);
}

/**
 * Attention over the KV cache into acts.attention: one token (decode) splits the keys over
 * lanes; more tokens (prefill) use the query-tiled kernel, which loads each key/value once per
 * query tile. A prefill plan records both; the one that does not apply gets zero workgroups.
 */
function attend(
  plan: PlanBuilder,
  key: AttentionKey,
  q: GPUBuffer,
  cache: KvCache,
  sinks?: GPUBuffer,
): void {
  const buffers: Record<string, GPUBuffer> = {
    q,
    kCache: cache.keys,
    vCache: cache.values,
    out: plan.acts.attention,
  };
  if (sinks) buffers.sinks = sinks;
  const none: [number, number, number] = [0, 0, 0];
  if (!plan.prefill) {
    plan.dispatch(attentionSource(key), buffers, (T) => [key.numHeads, T, 1]);
    return;
  }
  plan.dispatch(attentionSource(key), buffers, (T) => T === 1 ? [key.numHeads, 1, 1] : none);
  const tile = prefillTile(key);
  plan.dispatch(
    attentionPrefillSource(key, tile),
    buffers,
    (T) => T > 1 ? prefillGroups(key, tile, T) : none,
  );
}

/**
 * MoE feed-forward: norm → router logits → each token's top-k experts → the experts' gate/up +
 * SwiGLU and down projections on their tokens only → the shared expert → combine into the
 * residual.
 */
export function moeBlock(plan: PlanBuilder, w: MoeWeights, residualScale: number): void {
  const { acts } = plan;
  const f = w.spec;
  const H = plan.ctx.spec.hiddenSize, I = f.expert.intermediate, K = f.topK;
  const routing = routingKey(f);
  plan.preNorm(w.norm, w.normWeight, w.normBias);
  plan.matmul(w.router, acts.normed, acts.routerLogits, { bias: w.routerBias });
  plan.route(routing, w.selectionBias);

  const ex = w.experts;
  const bias = (which: "gate" | "up" | "down", y: GPUBuffer, width: number) => {
    const b = w.expertBiases?.[which];
    if (!b) return;
    const src = expertBiasSource(width, K);
    plan.elementwise(src, { y, bias: b, expertIds: acts.expertIds }, width, (T) => T * K);
  };
  if (ex.kind === "stacked") {
    plan.expertMatmuls(ex.gateUp, acts.normed, acts.mlpGate, "token", routing, true);
  } else {
    plan.expertMatmuls(ex.gate, acts.normed, acts.mlpGate, "token", routing);
    plan.expertMatmuls(ex.up, acts.normed, acts.mlpUp, "token", routing);
    bias("gate", acts.mlpGate, I);
    bias("up", acts.mlpUp, I);
    const act = f.expert.activation;
    if (act.kind === "swiglu_clamped") {
      plan.elementwise(
        clampedSwigluSource(I, K, act.limit, act.alpha),
        { gate: acts.mlpGate, up: acts.mlpUp },
        I,
        (T) => T * K,
      );
    } else swiglu(plan, I, K);
  }
  plan.expertMatmuls(ex.down, acts.mlpGate, acts.expertOut, "slot", routing);
  bias("down", acts.expertOut, H);

  const sharedBuffers: Record<string, GPUBuffer> = {};
  if (w.shared) {
    mlpActivation(plan, w.shared, f.shared!.mlp);
    plan.matmul(w.shared.down, acts.mlpGate, acts.sharedOut);
    sharedBuffers.sharedOut = acts.sharedOut;
    if (w.sharedGate) {
      plan.matmul(w.sharedGate, acts.normed, acts.sharedGate);
      sharedBuffers.sharedGate = acts.sharedGate;
    }
  }
  const shared = !w.shared ? "none" : w.sharedGate ? "gated" : "plain";
  plan.elementwise(
    combineSource({ hidden: H, topK: K, shared, residualScale }),
    {
      x: acts.hidden,
      expertOut: acts.expertOut,
      expertWeights: acts.expertWeights,
      ...sharedBuffers,
    },
    H,
  );
}

/** The routing kernels' key of a MoE block's router (support.ts refused the others). */
function routingKey(f: MoeFfnSpec): RoutingKey {
  const r = f.router;
  const base = { numExperts: f.numExperts, topK: f.topK };
  if (r.kind === "sparsemixer") {
    return { ...base, normTopK: false, scale: 1, sparsemixer: r.jitter };
  }
  if (r.kind !== "topk") throw new Error(`unchecked router ${r.kind}`);
  // The top-k logits' softmax equals the full softmax renormalised over the top k (support.ts
  // refuses softmax after top-k with sigmoid scores, a selection bias or groups).
  return {
    ...base,
    normTopK: r.normTopK || r.softmaxAfterTopK,
    scale: r.scale,
    scoring: r.scoring,
    selectionBias: r.selectionBias,
    groups: r.groups,
  };
}

/** Dense feed-forward: norm → gate/up + SwiGLU → down projection added to the residual. */
export function denseBlock(plan: PlanBuilder, w: DenseWeights, residualScale: number): void {
  const { acts } = plan;
  plan.preNorm(w.norm, w.normWeight, w.normBias);
  mlpActivation(plan, w.mlp, w.spec.mlp);
  plan.matmul(w.mlp.down, acts.mlpGate, acts.hidden, { accumulate: true, scale: residualScale });
}

/** silu(gate·normed) ⊙ (up·normed) of a dense MLP or shared expert into acts.mlpGate. */
function mlpActivation(plan: PlanBuilder, w: MlpWeights, m: MlpSpec): void {
  const { acts } = plan;
  if (w.kind === "stacked") {
    plan.matmul(w.gateUp, acts.normed, acts.mlpGate, { gateUp: true });
    return;
  }
  plan.matmul(w.gate, acts.normed, acts.mlpGate);
  plan.matmul(w.up, acts.normed, acts.mlpUp);
  swiglu(plan, m.intermediate, 1);
}

/** acts.mlpGate = silu(mlpGate) ⊙ mlpUp over `rowsPerToken` rows of `width` per token. */
function swiglu(plan: PlanBuilder, width: number, rowsPerToken: number): void {
  plan.elementwise(
    swigluSource(width, rowsPerToken),
    { gate: plan.acts.mlpGate, up: plan.acts.mlpUp },
    width,
    (T) => T * rowsPerToken,
  );
}
