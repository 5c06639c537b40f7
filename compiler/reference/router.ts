/**
 * Routers in float64: which experts a token goes to and with what weights. Implemented: the
 * softmax top-k router (softmax over all experts, the k most probable, optionally renormalised to
 * sum to one, times a scale; or, gpt-oss, the k largest logits with a softmax over those k), with
 * or without a router bias (added to the logits by the caller); sparsemixer is sparsemixer.ts.
 * The other described routers (sigmoid scores, selection bias, expert groups, capacity) are not
 * implemented here yet.
 *
 * @module
 */

import type { RouterSpec } from "../../schemas/model.ts";
import { notImplemented, softmax } from "./math.ts";

/** The experts one token is sent to and their mixing weights, in descending score. */
export interface Routing {
  experts: number[];
  weights: number[];
}

/** The softmax top-k router spec. */
export type SoftmaxTopKRouter = Extract<RouterSpec, { kind: "topk" }>;

/** The router spec if the reference implements it; UnsupportedError naming it otherwise. */
export function checkRouter(spec: RouterSpec): SoftmaxTopKRouter {
  if (spec.kind !== "topk") throw notImplemented(`router kind "${spec.kind}"`);
  if (spec.scoring !== "softmax") throw notImplemented(`router scoring "${spec.scoring}"`);
  if (spec.selectionBias) throw notImplemented("a router selection bias");
  if (spec.groups) throw notImplemented("group-limited routing");
  return spec;
}

/**
 * Routes one token from its router logits: softmax over all experts, the `topK` most probable
 * (ties go to the lower expert index, which is what torch.topk returns on CPU in practice; the
 * order among exact ties is not specified by torch), weights renormalised to sum to one when
 * `normTopK`, then multiplied by `scale`. `softmaxAfterTopK`: the `topK` largest logits, weights
 * a softmax over those (then `scale`).
 */
export function route(
  logits: Float64Array,
  topK: number,
  router: Pick<SoftmaxTopKRouter, "normTopK" | "scale"> & { softmaxAfterTopK?: boolean },
): Routing {
  const p = Float64Array.from(logits);
  if (!router.softmaxAfterTopK) softmax(p);
  const taken = new Uint8Array(p.length);
  const experts: number[] = [];
  const weights: number[] = [];
  for (let j = 0; j < topK; j++) {
    let best = -1;
    for (let e = 0; e < p.length; e++) {
      if (!taken[e] && (best < 0 || p[e] > p[best])) best = e;
    }
    taken[best] = 1;
    experts.push(best);
    weights.push(p[best]);
  }
  if (router.softmaxAfterTopK) {
    const chosen = Float64Array.from(weights);
    softmax(chosen);
    chosen.forEach((w, j) => weights[j] = w);
  } else if (router.normTopK) {
    const sum = weights.reduce((a, b) => a + b, 0);
    for (let j = 0; j < topK; j++) weights[j] /= sum;
  }
  if (router.scale !== 1) { for (let j = 0; j < topK; j++) weights[j] *= router.scale; }
  return { experts, weights };
}
