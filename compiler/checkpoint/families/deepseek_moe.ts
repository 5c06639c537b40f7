/**
 * What the DeepSeek-style MoE families share (deepseek_v2, deepseek_v3, glm4_moe, ernie4_5_moe):
 * fine-grained routed experts beside always-on shared experts (`mlp.shared_experts.*`, width
 * moe_intermediate_size × the shared count), routers with a selection-only correction bias and
 * expert groups, and the first `first_k_dense_replace` layers dense.
 *
 * @module
 */

import { InputError } from "../../../schemas/errors.ts";
import type { MoeFfnSpec, RouterSpec } from "../../../schemas/model.ts";
import { type ConfigFields, MAX_COUNT } from "../fields.ts";
import { swiglu } from "./decoder.ts";

/** Per-layer tensor names of the shared experts (and the correction bias) in the hub layout. */
export const SHARED_EXPERTS_NAMES: Record<string, string> = {
  shared_gate: "mlp.shared_experts.gate_proj.weight",
  shared_up: "mlp.shared_experts.up_proj.weight",
  shared_down: "mlp.shared_experts.down_proj.weight",
  router_selection_bias: "mlp.gate.e_score_correction_bias",
};

/** Options of {@link groupedMoe}: the config keys and router of one family. */
export interface GroupedMoeOptions {
  numExperts: number;
  topK: number;
  intermediate: number;
  /** Shared experts fused into one MLP (0: none). */
  sharedCount: number;
  router: Extract<RouterSpec, { kind: "topk" }>;
}

/** A MoE block with SwiGLU experts and an ungated shared MLP of `sharedCount` experts' width. */
export function groupedMoe(f: ConfigFields, o: GroupedMoeOptions): MoeFfnSpec {
  if (o.topK > o.numExperts) {
    throw new InputError(
      `top-k (${o.topK}) exceeds the number of experts (${o.numExperts})`,
      f.file,
    );
  }
  return {
    kind: "moe",
    numExperts: o.numExperts,
    topK: o.topK,
    router: o.router,
    expert: swiglu(o.intermediate),
    shared: o.sharedCount > 0
      ? { mlp: swiglu(o.intermediate * o.sharedCount), gated: false }
      : null,
  };
}

/**
 * DeepSeek's expert groups from `n_group` / `topk_group` (null when one group holds every
 * expert: the restriction is then a no-op). The group count must divide the experts.
 */
export function expertGroups(
  f: ConfigFields,
  numExperts: number,
  score: "max" | "top2sum",
): { count: number; keep: number; score: "max" | "top2sum" } | null {
  const count = f.positiveInt("n_group", 1, MAX_COUNT);
  const keep = f.positiveInt("topk_group", 1, MAX_COUNT);
  if (numExperts % count !== 0) f.fail("n_group", `(${count}) must divide ${numExperts} experts`);
  if (keep > count) f.fail("topk_group", `(${keep}) exceeds n_group (${count})`);
  if (score === "top2sum" && numExperts / count < 2) {
    f.fail("n_group", `leaves fewer than 2 experts per group`);
  }
  return count === 1 || keep === count ? null : { count, keep, score };
}
