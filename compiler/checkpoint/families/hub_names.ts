/**
 * Checkpoint tensor names of the Hugging Face decoder-only layout (`model.layers.L.self_attn.*`,
 * `input_layernorm`, `post_attention_layernorm`, `model.norm`, `lm_head`), shared by the families
 * of the Llama lineage; a family gives only where its classic MoE tensors live.
 *
 * Routed experts come in two layouts, chosen per layer by which tensors are present:
 * - classic: one tensor per expert and matrix (`<experts>.E.<matrix>.weight`);
 * - packed (transformers v5): `mlp.experts.gate_up_proj [E, 2I, H]` (gate rows first, then up)
 *   and `mlp.experts.down_proj [E, H, I]`, each expert a block of rows; router `mlp.gate`.
 *
 * @module
 */

import type { MatrixName, ModelSpec, MoeFfnSpec } from "../../../schemas/model.ts";
import { describeKey, type ExpectedTensor } from "../../../schemas/tensors.ts";
import type { ExpertLayout, FamilyAdapter, TensorSource } from "./family.ts";

/** Where a family's classic-layout MoE tensors live, relative to `model.layers.L.`. */
export interface ClassicMoeNames {
  /** The router Linear (`.weight` is appended). */
  router: string;
  /** The expert list; expert e's matrix m is `<experts>.<e>.<matrices[m]>.weight`. */
  experts: string;
  matrices: Record<MatrixName, string>;
}

/** Qwen / OLMoE naming: `mlp.gate`, `mlp.experts.E.{gate,up,down}_proj`. */
export const MLP_EXPERTS: ClassicMoeNames = {
  router: "mlp.gate",
  experts: "mlp.experts",
  matrices: { gate: "gate_proj", up: "up_proj", down: "down_proj" },
};

/** Names of the per-layer tensors that do not depend on the expert layout. */
const LAYER_TENSORS: Record<string, string> = {
  attn_norm: "input_layernorm.weight",
  attn_norm_bias: "input_layernorm.bias",
  ffn_norm: "post_attention_layernorm.weight",
  ffn_norm_bias: "post_attention_layernorm.bias",
  attn_q: "self_attn.q_proj.weight",
  attn_k: "self_attn.k_proj.weight",
  attn_v: "self_attn.v_proj.weight",
  attn_o: "self_attn.o_proj.weight",
  attn_q_bias: "self_attn.q_proj.bias",
  attn_k_bias: "self_attn.k_proj.bias",
  attn_v_bias: "self_attn.v_proj.bias",
  attn_o_bias: "self_attn.o_proj.bias",
  attn_q_norm: "self_attn.q_norm.weight",
  attn_k_norm: "self_attn.k_norm.weight",
  dense_gate: "mlp.gate_proj.weight",
  dense_up: "mlp.up_proj.weight",
  dense_down: "mlp.down_proj.weight",
  shared_gate: "mlp.shared_expert.gate_proj.weight",
  shared_up: "mlp.shared_expert.up_proj.weight",
  shared_down: "mlp.shared_expert.down_proj.weight",
  shared_expert_gate: "mlp.shared_expert_gate.weight",
};

/** Names of the model-level tensors. */
const MODEL_TENSORS: Record<string, string> = {
  embed: "model.embed_tokens.weight",
  lm_head: "lm_head.weight",
  lm_head_bias: "lm_head.bias",
  final_norm: "model.norm.weight",
  final_norm_bias: "model.norm.bias",
};

const PACKED_GATE_UP = "mlp.experts.gate_up_proj";
const PACKED_DOWN = "mlp.experts.down_proj";
const PACKED_ROUTER = "mlp.gate.weight";

/** The MoE block of a decoder layer (the packed slices need its sizes). */
function moeAt(spec: ModelSpec, layer: number): MoeFfnSpec {
  for (const b of spec.decoder.layers[layer]?.blocks ?? []) {
    if (b.kind === "ffn" && b.ffn.kind === "moe") return b.ffn;
  }
  throw new Error(`decoder layer ${layer} has no MoE block`);
}

/**
 * The expert tensors of the layer at `prefix` in the packed layout; with `mxfp4`, the same
 * matrices released as MXFP4 `_blocks` / `_scales` pairs (checkpoint/mxfp4.ts).
 */
function packedSource(
  t: ExpectedTensor,
  spec: ModelSpec,
  prefix: string,
  mxfp4: boolean,
): TensorSource {
  const moe = moeAt(spec, t.layer);
  const [E, I, H] = [moe.numExperts, moe.expert.intermediate, spec.hiddenSize];
  if (mxfp4 && t.role.startsWith("expert_")) {
    const down = t.role === "expert_down";
    return {
      name: prefix + (down ? PACKED_DOWN : PACKED_GATE_UP),
      mxfp4: { block: t.expert, rowStart: t.role === "expert_up" ? I : 0, rowStep: 1 },
    };
  }
  switch (t.role) {
    case "expert_gate":
    case "expert_up":
      return {
        name: prefix + PACKED_GATE_UP,
        packed: { shape: [E, 2 * I, H], block: t.expert, rowStart: t.role === "expert_up" ? I : 0 },
      };
    case "expert_down":
      return {
        name: prefix + PACKED_DOWN,
        packed: { shape: [E, H, I], block: t.expert, rowStart: 0 },
      };
  }
  throw new Error(`no packed checkpoint tensor for ${describeKey(t)}`);
}

/**
 * The naming half of a {@link FamilyAdapter} for this layout, given the family's classic MoE
 * names; `layerNames` adds or renames per-layer roles (relative to `model.layers.L.`).
 */
export function hubNames(
  classic: ClassicMoeNames,
  layerNames: Record<string, string> = {},
): Pick<FamilyAdapter, "expertLayout" | "source" | "unused"> {
  const names = { ...LAYER_TENSORS, ...layerNames };
  return {
    expertLayout(has, _stack, layer): ExpertLayout {
      const gateUp = `model.layers.${layer}.${PACKED_GATE_UP}`;
      if (has(`${gateUp}_blocks`)) return "packed-mxfp4";
      return has(gateUp) ? "packed" : "classic";
    },
    source(t, spec, layout) {
      if (t.stack === "decoder" && t.layer < 0 && MODEL_TENSORS[t.role]) {
        return { name: MODEL_TENSORS[t.role] };
      }
      const prefix = `model.layers.${t.layer}.`;
      if (t.stack === "decoder" && t.layer >= 0) {
        if (names[t.role]) return { name: prefix + names[t.role] };
        if (t.role === "router") {
          return {
            name: prefix + (layout === "classic" ? `${classic.router}.weight` : PACKED_ROUTER),
          };
        }
        if (t.expert >= 0 && layout !== "classic") {
          return packedSource(t, spec, prefix, layout === "packed-mxfp4");
        }
        const matrix = /^expert_(gate|up|down)$/.exec(t.role)?.[1] as MatrixName | undefined;
        if (t.expert >= 0 && matrix) {
          return {
            name: `${prefix}${classic.experts}.${t.expert}.${classic.matrices[matrix]}.weight`,
          };
        }
      }
      throw new Error(`no checkpoint tensor name for ${describeKey(t)}`);
    },
    unused(spec) {
      return spec.head.tied ? [MODEL_TENSORS.lm_head] : [];
    },
  };
}
