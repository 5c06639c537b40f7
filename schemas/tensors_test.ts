import assert from "node:assert/strict";
import {
  attentionBlock,
  decoderOnly,
  ffnBlock,
  gqa,
  MIXTRAL_LIKE,
  MLA_LIKE,
  mlp,
  moe,
  QWEN2_MOE_LIKE,
  SWITCH_LIKE,
} from "./example_specs.ts";
import type { ModelSpec } from "./model.ts";
import { describeKey, expectedTensors, keyString } from "./tensors.ts";

/** "stack layer expert role RxC" per expected tensor. */
function listing(spec: ModelSpec): string[] {
  return expectedTensors(spec).map((t) =>
    `${t.stack} ${t.layer} ${t.expert} ${t.role} ${t.shape.join("x")}`
  );
}

/** The lines of `count` experts of one layer, each with `matrices` ([role, shape] pairs). */
function experts(prefix: string, count: number, matrices: [string, string][]): string[] {
  const out: string[] = [];
  for (let e = 0; e < count; e++) {
    for (const [role, shape] of matrices) out.push(`${prefix} ${e} ${role} ${shape}`);
  }
  return out;
}

Deno.test("expectedTensors: Mixtral-like (GQA + RoPE, 4 SwiGLU experts, untied head)", () => {
  const layer = (l: number) => [
    `decoder ${l} -1 attn_norm 16`,
    `decoder ${l} -1 attn_q 32x16`,
    `decoder ${l} -1 attn_k 16x16`,
    `decoder ${l} -1 attn_v 16x16`,
    `decoder ${l} -1 attn_o 16x32`,
    `decoder ${l} -1 ffn_norm 16`,
    `decoder ${l} -1 router 4x16`,
    ...experts(`decoder ${l}`, 4, [
      ["expert_gate", "24x16"],
      ["expert_up", "24x16"],
      ["expert_down", "16x24"],
    ]),
  ];
  assert.deepEqual(listing(MIXTRAL_LIKE), [
    "decoder -1 -1 embed 32x16",
    "decoder -1 -1 lm_head 32x16",
    ...layer(0),
    ...layer(1),
    "decoder -1 -1 final_norm 16",
  ]);
  const t = expectedTensors(MIXTRAL_LIKE);
  assert.equal(t.filter((x) => x.expertMatrix).length, 2 * 4 * 3);
  assert.ok(t.filter((x) => x.expertMatrix).every((x) => x.role.startsWith("expert_")));
  assert.deepEqual(t.filter((x) => x.vector).map((x) => x.role), [
    "attn_norm",
    "ffn_norm",
    "attn_norm",
    "ffn_norm",
    "final_norm",
  ]);
  assert.equal(new Set(t.map(keyString)).size, t.length, "keys are unique");
});

Deno.test("expectedTensors: Qwen2-MoE-like (qkv bias, dense layer, gated shared expert)", () => {
  const attention = (l: number) => [
    `decoder ${l} -1 attn_norm 16`,
    `decoder ${l} -1 attn_q 16x16`,
    `decoder ${l} -1 attn_k 8x16`,
    `decoder ${l} -1 attn_v 8x16`,
    `decoder ${l} -1 attn_o 16x16`,
    `decoder ${l} -1 attn_q_bias 16`,
    `decoder ${l} -1 attn_k_bias 8`,
    `decoder ${l} -1 attn_v_bias 8`,
  ];
  assert.deepEqual(listing(QWEN2_MOE_LIKE), [
    "decoder -1 -1 embed 32x16",
    "decoder -1 -1 lm_head 32x16",
    ...attention(0),
    "decoder 0 -1 ffn_norm 16",
    "decoder 0 -1 dense_gate 40x16",
    "decoder 0 -1 dense_up 40x16",
    "decoder 0 -1 dense_down 16x40",
    ...attention(1),
    "decoder 1 -1 ffn_norm 16",
    "decoder 1 -1 router 4x16",
    ...experts("decoder 1", 4, [
      ["expert_gate", "8x16"],
      ["expert_up", "8x16"],
      ["expert_down", "16x8"],
    ]),
    "decoder 1 -1 shared_gate 24x16",
    "decoder 1 -1 shared_up 24x16",
    "decoder 1 -1 shared_down 16x24",
    "decoder 1 -1 shared_expert_gate 1x16",
    "decoder -1 -1 final_norm 16",
  ]);
  // Shared and dense matrices are not routed-expert matrices.
  const t = expectedTensors(QWEN2_MOE_LIKE);
  assert.deepEqual(
    [...new Set(t.filter((x) => x.expertMatrix).map((x) => x.role))],
    ["expert_gate", "expert_up", "expert_down"],
  );
});

Deno.test("expectedTensors: Switch-like encoder–decoder (relative bias, cross-attention, ReLU)", () => {
  const self = (stack: string, l: number) => [
    `${stack} ${l} -1 attn_norm 16`,
    `${stack} ${l} -1 attn_q 16x16`,
    `${stack} ${l} -1 attn_k 16x16`,
    `${stack} ${l} -1 attn_v 16x16`,
    `${stack} ${l} -1 attn_o 16x16`,
    ...(l === 0 ? [`${stack} 0 -1 attn_relative_bias 8x2`] : []),
  ];
  const cross = (l: number) => [
    `decoder ${l} -1 cross_norm 16`,
    `decoder ${l} -1 cross_q 16x16`,
    `decoder ${l} -1 cross_k 16x16`,
    `decoder ${l} -1 cross_v 16x16`,
    `decoder ${l} -1 cross_o 16x16`,
  ];
  const dense = (stack: string) => [
    `${stack} 0 -1 ffn_norm 16`,
    `${stack} 0 -1 dense_up 32x16`,
    `${stack} 0 -1 dense_down 16x32`,
  ];
  const routed = (stack: string) => [
    `${stack} 1 -1 ffn_norm 16`,
    `${stack} 1 -1 router 4x16`,
    ...experts(`${stack} 1`, 4, [["expert_up", "32x16"], ["expert_down", "16x32"]]),
  ];
  assert.deepEqual(listing(SWITCH_LIKE), [
    "decoder -1 -1 embed 32x16",
    ...self("encoder", 0),
    ...dense("encoder"),
    ...self("encoder", 1),
    ...routed("encoder"),
    "encoder -1 -1 final_norm 16",
    ...self("decoder", 0),
    ...cross(0),
    ...dense("decoder"),
    ...self("decoder", 1),
    ...cross(1),
    ...routed("decoder"),
    "decoder -1 -1 final_norm 16",
  ]);
  const t = expectedTensors(SWITCH_LIKE).find((x) => x.stack === "encoder" && x.expert === 3)!;
  assert.equal(describeKey(t), "encoder layer 1 expert 3 expert_up");
});

Deno.test("expectedTensors: MLA (direct queries and q LoRA), sigmoid router with selection bias", () => {
  assert.deepEqual(listing(MLA_LIKE), [
    "decoder -1 -1 embed 32x16",
    "decoder -1 -1 lm_head 32x16",
    "decoder 0 -1 attn_norm 16",
    "decoder 0 -1 attn_q 24x16", // 2 heads × (8 nope + 4 rope)
    "decoder 0 -1 attn_kv_a 16x16", // 12 latent + 4 rope
    "decoder 0 -1 attn_kv_a_norm 12",
    "decoder 0 -1 attn_kv_b 28x12", // 2 heads × (8 nope + 6 v)
    "decoder 0 -1 attn_o 16x12",
    "decoder 0 -1 ffn_norm 16",
    "decoder 0 -1 dense_gate 40x16",
    "decoder 0 -1 dense_up 40x16",
    "decoder 0 -1 dense_down 16x40",
    "decoder 1 -1 attn_norm 16",
    "decoder 1 -1 attn_q_a 10x16",
    "decoder 1 -1 attn_q_a_norm 10",
    "decoder 1 -1 attn_q_b 24x10",
    "decoder 1 -1 attn_kv_a 16x16",
    "decoder 1 -1 attn_kv_a_norm 12",
    "decoder 1 -1 attn_kv_b 28x12",
    "decoder 1 -1 attn_o 16x12",
    "decoder 1 -1 ffn_norm 16",
    "decoder 1 -1 router 8x16",
    "decoder 1 -1 router_selection_bias 8",
    ...experts("decoder 1", 8, [
      ["expert_gate", "8x16"],
      ["expert_up", "8x16"],
      ["expert_down", "16x8"],
    ]),
    "decoder 1 -1 shared_gate 16x16",
    "decoder 1 -1 shared_up 16x16",
    "decoder 1 -1 shared_down 16x16",
    "decoder -1 -1 final_norm 16",
  ]);
});

Deno.test("expectedTensors: optional tensors (LayerNorm bias, sinks, full q/k norm, biases)", () => {
  const layerNorm = { kind: "layer" as const, eps: 1e-5, bias: true };
  const spec = decoderOnly("test", 8, 32, [[
    attentionBlock(gqa(4, 2, 8, { qkNorm: "full", sinks: true, outBias: true }), layerNorm),
    ffnBlock(
      moe(2, 1, mlp(32, { kind: "swiglu_clamped", limit: 7, alpha: 1.702 }, true), {
        router: {
          kind: "topk",
          scoring: "softmax",
          softmaxAfterTopK: true,
          normTopK: false,
          scale: 1,
          bias: true,
          selectionBias: false,
          groups: null,
        },
      }),
    ),
  ]], { head: { tied: true, scale: 1, bias: true } });
  assert.deepEqual(listing(spec), [
    "decoder -1 -1 embed 8x32",
    "decoder -1 -1 lm_head_bias 8",
    "decoder 0 -1 attn_norm 32",
    "decoder 0 -1 attn_norm_bias 32",
    "decoder 0 -1 attn_q 32x32",
    "decoder 0 -1 attn_k 16x32",
    "decoder 0 -1 attn_v 16x32",
    "decoder 0 -1 attn_o 32x32",
    "decoder 0 -1 attn_o_bias 32",
    "decoder 0 -1 attn_q_norm 32",
    "decoder 0 -1 attn_k_norm 16",
    "decoder 0 -1 attn_sinks 4",
    "decoder 0 -1 ffn_norm 32",
    "decoder 0 -1 router 2x32",
    "decoder 0 -1 router_bias 2",
    ...experts("decoder 0", 2, [
      ["expert_gate", "32x32"],
      ["expert_gate_bias", "32"],
      ["expert_up", "32x32"],
      ["expert_up_bias", "32"],
      ["expert_down", "32x32"],
      ["expert_down_bias", "32"],
    ]),
    "decoder -1 -1 final_norm 32",
  ]);
  const t = expectedTensors(spec);
  assert.ok(t.filter((x) => x.role.endsWith("_bias")).every((x) => x.vector && !x.expertMatrix));
  // Per-head q/k norms are [head dim].
  const perHead = decoderOnly("test", 8, 32, [[attentionBlock(gqa(4, 2, 8, { qkNorm: "head" }))]]);
  assert.deepEqual(
    listing(perHead).filter((l) => /_[qk]_norm /.test(l)),
    ["decoder 0 -1 attn_q_norm 8", "decoder 0 -1 attn_k_norm 8"],
  );
});
