/**
 * Which tensors a model description implies, with their shapes: the one place that enumerates a
 * model's weights. The adapters map checkpoint names onto these keys, the artifact writer emits
 * them in this order, the header validator checks an artifact against them, and both forward
 * passes look weights up by key — so no consumer needs to know a family.
 *
 * A tensor is named by (stack, layer, expert, role). layer is −1 for the embedding, the head and a
 * stack's final norm; expert is −1 except for routed-expert matrices.
 *
 * Roles, by owner:
 * - model: `embed` [V, H]; `lm_head` [V, H] (untied); `lm_head_bias` [V]
 * - stack: `final_norm` [H] (+ `final_norm_bias`)
 * - block norms: `attn_norm`, `cross_norm`, `ffn_norm` [H] (+ `_bias` for LayerNorm)
 * - gqa attention (prefix `attn_`, or `cross_` for cross-attention): `q` [nh·hd, H], `k`/`v`
 *   [nkv·hd, H], `o` [H, nh·hd]; `q_bias`/`k_bias`/`v_bias`, `o_bias`; `q_norm`/`k_norm` ([hd] per
 *   head, the projection width when full); `sinks` [nh]; `relative_bias` [buckets, nh] (owner
 *   layer only)
 * - mla attention: `attn_q` [nh·(nope+rope), H] or `attn_q_a` [r_q, H], `attn_q_a_norm` [r_q],
 *   `attn_q_b` [nh·(nope+rope), r_q]; `attn_kv_a` [r_kv + rope, H], `attn_kv_a_norm` [r_kv],
 *   `attn_kv_b` [nh·(nope+v), r_kv]; `attn_o` [H, nh·v]
 * - moe: `router` [E, H], `router_bias` [E], `router_selection_bias` [E]; per expert
 *   `expert_<m>` for each matrix m of the activation (schemas/model.ts mlpMatrices) and
 *   `expert_<m>_bias` when the MLP has biases; `shared_<m>` (+ `_bias`), `shared_expert_gate` [1, H]
 * - dense ffn: `dense_<m>` (+ `_bias`)
 *
 * @module
 */

import {
  type AttentionSpec,
  type BlockSpec,
  type GqaAttentionSpec,
  type MatrixName,
  mlpMatrices,
  type MlpSpec,
  type ModelSpec,
  type NormSpec,
  type StackName,
} from "./model.ts";

/** A tensor's place in the model. */
export interface TensorKey {
  stack: StackName;
  /** −1 for model- and stack-level tensors. */
  layer: number;
  /** −1 except for routed-expert matrices and their biases. */
  expert: number;
  role: string;
}

/** A tensor the description implies, with its shape ([rows, cols] out × in, or [n]). */
export interface ExpectedTensor extends TensorKey {
  shape: number[];
  /** The tensor is a matrix of a routed expert (the allocator gives it bits). */
  expertMatrix: boolean;
  /** A vector (norm weight, bias, sinks): never quantized. */
  vector: boolean;
}

/** "decoder/3/7/expert_up": a key as one string (for maps and messages). */
export function keyString(k: TensorKey): string {
  return `${k.stack}/${k.layer}/${k.expert}/${k.role}`;
}

/** "decoder layer 3 expert 7 expert_up": a key for people. */
export function describeKey(k: TensorKey): string {
  const stack = k.stack === "decoder" ? "" : `${k.stack} `;
  const layer = k.layer >= 0 ? `layer ${k.layer} ` : "";
  const expert = k.expert >= 0 ? `expert ${k.expert} ` : "";
  return `${stack}${layer}${expert}${k.role}`;
}

/** True for the matrix roles of routed experts (`expert_gate`, `expert_up`, `expert_down`). */
export function isExpertMatrixRole(role: string): boolean {
  return role === "expert_gate" || role === "expert_up" || role === "expert_down";
}

/** The role prefix of an attention block's tensors. */
export function attentionPrefix(block: BlockSpec): "attn" | "cross" {
  return block.kind === "cross_attention" ? "cross" : "attn";
}

/**
 * Every tensor of the model once, in the canonical order: embed, lm_head(+bias); then per stack
 * (encoder first) per layer per block: its norm, its body's tensors (experts in index order, each
 * expert's matrices in activation order); then the stack's final norm.
 */
export function expectedTensors(spec: ModelSpec): ExpectedTensor[] {
  const out: ExpectedTensor[] = [];
  const H = spec.hiddenSize;
  const V = spec.vocabSize;
  const add = (
    stack: StackName,
    layer: number,
    role: string,
    shape: number[],
    expert = -1,
  ) =>
    out.push({
      stack,
      layer,
      expert,
      role,
      shape,
      expertMatrix: expert >= 0 && isExpertMatrixRole(role),
      vector: shape.length === 1,
    });
  const norm = (stack: StackName, layer: number, role: string, n: NormSpec, width = H) => {
    add(stack, layer, role, [width]);
    if (n.bias) add(stack, layer, `${role}_bias`, [width]);
  };
  const mlp = (
    stack: StackName,
    layer: number,
    owner: "expert" | "shared" | "dense",
    m: MlpSpec,
    expert = -1,
  ) => {
    for (const name of mlpMatrices(m.activation)) {
      const shape = matrixShape(name, m.intermediate, H);
      add(stack, layer, `${owner}_${name}`, shape, expert);
      if (m.bias) add(stack, layer, `${owner}_${name}_bias`, [shape[0]], expert);
    }
  };

  add("decoder", -1, "embed", [V, H]);
  if (!spec.head.tied) add("decoder", -1, "lm_head", [V, H]);
  if (spec.head.bias) add("decoder", -1, "lm_head_bias", [V]);
  const stacks: [StackName, ModelSpec["decoder"]][] = [];
  if (spec.encoder) stacks.push(["encoder", spec.encoder]);
  stacks.push(["decoder", spec.decoder]);
  for (const [stack, s] of stacks) {
    s.layers.forEach((layer, l) => {
      for (const block of layer.blocks) {
        switch (block.kind) {
          case "attention":
          case "cross_attention": {
            const prefix = attentionPrefix(block);
            norm(stack, l, `${prefix}_norm`, block.norm);
            for (const [role, shape] of attentionTensors(block.attention, H, l)) {
              add(stack, l, `${prefix}_${role}`, shape);
            }
            break;
          }
          case "ffn": {
            norm(stack, l, "ffn_norm", block.norm);
            const f = block.ffn;
            if (f.kind === "dense") {
              mlp(stack, l, "dense", f.mlp);
              break;
            }
            const E = f.numExperts;
            add(stack, l, "router", [E, H]);
            if (f.router.kind === "topk" && f.router.bias) add(stack, l, "router_bias", [E]);
            if (f.router.kind === "topk" && f.router.selectionBias) {
              add(stack, l, "router_selection_bias", [E]);
            }
            for (let e = 0; e < E; e++) mlp(stack, l, "expert", f.expert, e);
            if (f.shared) {
              mlp(stack, l, "shared", f.shared.mlp);
              if (f.shared.gated) add(stack, l, "shared_expert_gate", [1, H]);
            }
            break;
          }
        }
      }
    });
    norm(stack, -1, "final_norm", s.finalNorm);
  }
  return out;
}

/** [rows, cols] of an MLP matrix: gate/up [I, H], down [H, I]. */
export function matrixShape(name: MatrixName, intermediate: number, hidden: number): number[] {
  return name === "down" ? [hidden, intermediate] : [intermediate, hidden];
}

/** The (role suffix, shape) pairs of an attention body, without the block prefix. */
function attentionTensors(a: AttentionSpec, H: number, layer: number): [string, number[]][] {
  if (a.kind === "mla") {
    const qk = a.qkNopeHeadDim + a.qkRopeHeadDim;
    const t: [string, number[]][] = [];
    if (a.qLoraRank === null) t.push(["q", [a.numHeads * qk, H]]);
    else {
      t.push(["q_a", [a.qLoraRank, H]], ["q_a_norm", [a.qLoraRank]]);
      t.push(["q_b", [a.numHeads * qk, a.qLoraRank]]);
    }
    t.push(["kv_a", [a.kvLoraRank + a.qkRopeHeadDim, H]], ["kv_a_norm", [a.kvLoraRank]]);
    t.push(["kv_b", [a.numHeads * (a.qkNopeHeadDim + a.vHeadDim), a.kvLoraRank]]);
    t.push(["o", [H, a.numHeads * a.vHeadDim]]);
    return t;
  }
  return gqaTensors(a, H, layer);
}

function gqaTensors(a: GqaAttentionSpec, H: number, layer: number): [string, number[]][] {
  const q = a.numHeads * a.headDim;
  const kv = a.numKvHeads * a.headDim;
  const t: [string, number[]][] = [["q", [q, H]], ["k", [kv, H]], ["v", [kv, H]], ["o", [H, q]]];
  if (a.qkvBias) t.push(["q_bias", [q]], ["k_bias", [kv]], ["v_bias", [kv]]);
  if (a.outBias) t.push(["o_bias", [H]]);
  if (a.qkNorm === "head") t.push(["q_norm", [a.headDim]], ["k_norm", [a.headDim]]);
  if (a.qkNorm === "full") t.push(["q_norm", [q]], ["k_norm", [kv]]);
  if (a.sinks) t.push(["sinks", [a.numHeads]]);
  if (a.position.kind === "relative_bias" && a.position.ownerLayer === layer) {
    t.push(["relative_bias", [a.position.buckets, a.numHeads]]);
  }
  return t;
}
