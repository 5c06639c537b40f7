/**
 * Routers in float64: which experts a token goes to and with what weights. Implemented: the
 * top-k router with softmax or sigmoid scores, an optional selection-only bias (DeepSeek-V3 /
 * GLM `e_score_correction_bias`, ERNIE `moe_statics`), optional group-limited choice (DeepSeek's
 * expert groups: group score = its max or the sum of its top two), weights from the unbiased
 * scores, optionally renormalised, times a scale; or (gpt-oss) the k largest logits with a
 * softmax over those k. A router bias (gpt-oss) is added to the logits by the caller; sparsemixer
 * is sparsemixer.ts. The capacity router is routed over whole sequences by moe.ts.
 *
 * @module
 */

import type { RouterSpec } from "../../schemas/model.ts";
import { notImplemented, sigmoid, softmax } from "./math.ts";

/** The experts one token is sent to and their mixing weights, in descending choice score. */
export interface Routing {
  experts: number[];
  weights: number[];
}

/** The top-k router spec. */
export type TopKRouter = Extract<RouterSpec, { kind: "topk" }>;

/** The router spec if the reference implements it; UnsupportedError naming it otherwise. */
export function checkRouter(spec: RouterSpec): TopKRouter {
  if (spec.kind !== "topk") throw notImplemented(`router kind "${spec.kind}"`);
  if (spec.softmaxAfterTopK && (spec.scoring !== "softmax" || spec.selectionBias || spec.groups)) {
    throw notImplemented("softmax after top-k with sigmoid scores, selection bias or groups");
  }
  return spec;
}

/**
 * What {@link route} reads of a router spec; absent fields mean softmax, no groups, softmax before
 * top-k.
 */
export type RouteOptions =
  & Pick<TopKRouter, "normTopK" | "scale">
  & Partial<Pick<TopKRouter, "scoring" | "groups" | "softmaxAfterTopK">>;

/**
 * Routes one token from its router logits:
 * 1. scores = softmax (over all experts) or sigmoid (each) of the logits; the logits themselves
 *    with `softmaxAfterTopK` (gpt-oss);
 * 2. choice = scores + `selectionBias` (when given);
 * 3. with `groups` (E split into `count` consecutive groups): each group scores its max choice
 *    ("max", DeepSeek-V2) or the sum of its two best ("top2sum", DeepSeek-V3/GLM); only the
 *    experts of the best `keep` groups stay candidates (transformers masks the others to 0 or
 *    −∞; with topK ≤ kept experts both are exclusion);
 * 4. the `topK` candidates of highest choice (ties go to the lower index, which is what
 *    torch.topk returns on CPU in practice; torch does not specify the order among exact ties);
 * 5. weights = their unbiased scores: a softmax over those k with `softmaxAfterTopK`, else
 *    divided by (sum + 1e-20) when `normTopK` (the 1e-20 is DeepSeek-V3's guard; it cannot
 *    change a sum of probabilities of top experts); then × `scale`.
 */
export function route(
  logits: Float64Array,
  topK: number,
  router: RouteOptions,
  selectionBias?: Float64Array,
): Routing {
  const E = logits.length;
  const scores = Float64Array.from(logits);
  // With softmax after top-k the logits themselves choose.
  const scoring = router.softmaxAfterTopK ? "logits" : router.scoring ?? "softmax";
  if (scoring === "softmax") softmax(scores);
  else if (scoring === "sigmoid") { for (let e = 0; e < E; e++) scores[e] = sigmoid(scores[e]); }
  const choice = Float64Array.from(scores);
  if (selectionBias) { for (let e = 0; e < E; e++) choice[e] += selectionBias[e]; }

  const candidate = new Uint8Array(E).fill(1);
  const groups = router.groups;
  if (groups) {
    const size = E / groups.count;
    const groupScore = new Float64Array(groups.count);
    for (let g = 0; g < groups.count; g++) {
      const members = choice.subarray(g * size, (g + 1) * size);
      const best = topIndices(members, groups.score === "max" ? 1 : 2);
      groupScore[g] = best.reduce((a, i) => a + members[i], 0);
    }
    const kept = new Set(topIndices(groupScore, groups.keep));
    for (let e = 0; e < E; e++) candidate[e] = kept.has(Math.floor(e / size)) ? 1 : 0;
  }

  const experts = topIndices(choice, topK, candidate);
  const weights = experts.map((e) => scores[e]);
  if (router.softmaxAfterTopK) {
    const chosen = Float64Array.from(weights);
    softmax(chosen);
    chosen.forEach((w, j) => weights[j] = w);
  } else if (router.normTopK) {
    const sum = weights.reduce((a, b) => a + b, 0) + 1e-20;
    for (let j = 0; j < topK; j++) weights[j] /= sum;
  }
  if (router.scale !== 1) { for (let j = 0; j < topK; j++) weights[j] *= router.scale; }
  return { experts, weights };
}

/** Indices of the k largest values among the allowed ones, largest first, ties to the lower. */
function topIndices(values: Float64Array, k: number, allowed?: Uint8Array): number[] {
  const taken = new Uint8Array(values.length);
  const out: number[] = [];
  for (let j = 0; j < k; j++) {
    let best = -1;
    for (let e = 0; e < values.length; e++) {
      if (taken[e] || (allowed && !allowed[e])) continue;
      if (best < 0 || values[e] > values[best]) best = e;
    }
    if (best < 0) throw new RangeError(`route: fewer than ${k} candidate experts`);
    taken[best] = 1;
    out.push(best);
  }
  return out;
}
