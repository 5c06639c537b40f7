import assert from "node:assert/strict";
import type { MlaAttentionSpec, ModelSpec, MoeFfnSpec } from "../../../schemas/model.ts";
import { UnsupportedError } from "../../../schemas/errors.ts";
import { parseConfig } from "../config.ts";
import { loadCheckpoint } from "../mod.ts";
import { prepareReference } from "../../reference/model.ts";
import { forward } from "../../reference/session.ts";
import { ropeFrequencies } from "../../../schemas/rope_frequencies.ts";

const ORACLE = new URL("../../../testdata/hf-oracle/", import.meta.url).pathname;

function mlaOf(spec: ModelSpec): MlaAttentionSpec {
  const b = spec.decoder.layers[0].blocks[0];
  assert.ok(b.kind === "attention" && b.attention.kind === "mla");
  return b.attention;
}

function moeOf(spec: ModelSpec): MoeFfnSpec {
  const b = spec.decoder.layers.at(-1)!.blocks[1];
  assert.ok(b.kind === "ffn" && b.ffn.kind === "moe");
  return b.ffn;
}

/** DeepSeek-V2-Lite's shape (its config.json, sizes shrunk), YaRN factor 40, mscale 0.707. */
const V2_LITE = {
  model_type: "deepseek_v2",
  vocab_size: 64,
  hidden_size: 32,
  num_hidden_layers: 2,
  num_attention_heads: 4,
  num_key_value_heads: 4,
  intermediate_size: 48,
  moe_intermediate_size: 16,
  n_routed_experts: 8,
  n_shared_experts: 2,
  num_experts_per_tok: 2,
  first_k_dense_replace: 1,
  kv_lora_rank: 16,
  q_lora_rank: null,
  qk_nope_head_dim: 12,
  qk_rope_head_dim: 8,
  v_head_dim: 16,
  topk_method: "greedy",
  n_group: 1,
  topk_group: 1,
  routed_scaling_factor: 1.0,
  norm_topk_prob: false,
  rope_theta: 10000,
  rope_scaling: {
    type: "yarn",
    factor: 40,
    original_max_position_embeddings: 4096,
    beta_fast: 32,
    beta_slow: 1,
    mscale: 0.707,
    mscale_all_dim: 0.707,
  },
};

Deno.test("deepseek_v2 with YaRN: scale × mscale(factor, mscale_all_dim)², cos/sin factor 1", () => {
  const spec = parseConfig(V2_LITE);
  const a = mlaOf(spec);
  const m = 0.1 * 0.707 * Math.log(40) + 1;
  assert.ok(Math.abs(a.scale - 20 ** -0.5 * m * m) < 1e-15);
  assert.deepEqual(a.position, {
    kind: "rope",
    theta: 10000,
    rotaryDim: 8,
    pairing: "interleaved",
    scaling: {
      kind: "yarn",
      factor: 40,
      originalMaxPositions: 4096,
      betaFast: 32,
      betaSlow: 1,
      attentionFactor: 1,
      truncate: true,
    },
  });
  assert.equal(a.qLoraRank, null);
  const moe = moeOf(spec);
  assert.deepEqual(moe.router, {
    kind: "topk",
    scoring: "softmax",
    softmaxAfterTopK: false,
    normTopK: false,
    scale: 1,
    bias: false,
    selectionBias: false,
    groups: null,
  });
  assert.equal(moe.shared?.mlp.intermediate, 32, "2 shared experts fused");
  assert.equal(
    spec.decoder.layers[0].blocks[1].kind === "ffn" &&
      spec.decoder.layers[0].blocks[1].ffn.kind,
    "dense",
  );
});

Deno.test("deepseek_v2 group_limited_greedy, deepseek_v3 groups and q LoRA, rope_interleave false", () => {
  const v2 = parseConfig({
    ...V2_LITE,
    rope_scaling: null,
    topk_method: "group_limited_greedy",
    n_group: 4,
    topk_group: 2,
  });
  const v2r = moeOf(v2).router;
  assert.ok(v2r.kind === "topk");
  assert.deepEqual(v2r.groups, { count: 4, keep: 2, score: "max" });
  const v3 = parseConfig({
    ...V2_LITE,
    model_type: "deepseek_v3",
    rope_scaling: null,
    q_lora_rank: 24,
    n_group: 4,
    topk_group: 2,
    norm_topk_prob: true,
    routed_scaling_factor: 2.5,
    rope_interleave: false,
  });
  const r = moeOf(v3).router;
  assert.ok(r.kind === "topk");
  assert.equal(r.scoring, "sigmoid");
  assert.equal(r.selectionBias, true);
  assert.equal(r.scale, 2.5);
  assert.deepEqual(r.groups, { count: 4, keep: 2, score: "top2sum" });
  assert.equal(mlaOf(v3).qLoraRank, 24);
  assert.equal(mlaOf(v3).position.pairing, "half");
  assert.equal(mlaOf(v3).scale, 20 ** -0.5);
  // Kimi K2 names the same layout kimi_k2.
  const kimi = parseConfig({
    ...V2_LITE,
    model_type: "kimi_k2",
    rope_scaling: null,
    n_group: 4,
    topk_group: 2,
  });
  assert.equal(kimi.family, "kimi_k2");
  assert.deepEqual(moeOf(kimi).router, {
    ...moeOf(
      parseConfig({
        ...V2_LITE,
        model_type: "deepseek_v3",
        rope_scaling: null,
        n_group: 4,
        topk_group: 2,
      }),
    ).router,
  });
});

Deno.test("deepseek YaRN: the reference applies schemas/rope_frequencies.ts (not unscaled)", async () => {
  const ir = await loadCheckpoint(ORACLE + "deepseek_v2-a");
  const position = mlaOf(parseConfig(V2_LITE)).position;
  assert.equal(position.scaling.kind, "yarn");
  const yarn = structuredClone(ir.spec);
  for (const l of yarn.decoder.layers) {
    const b = l.blocks[0];
    if (b.kind === "attention" && b.attention.kind === "mla") b.attention.position = position;
  }
  const scaled = await prepareReference({ ...ir, spec: yarn });
  const b = scaled.layers[0].blocks[0];
  assert.ok(b.kind === "attention" && "kvB" in b.attention);
  const want = ropeFrequencies(position);
  assert.deepEqual([...b.attention.rope.invFreq], [...want.invFreq]);
  assert.equal(b.attention.rope.mscale, want.mscale); // 1 here: mscale = mscale_all_dim
  // The scaling reaches the logits.
  const ids = [3, 9, 27, 5, 41, 2];
  const plain = forward(await prepareReference(ir), ids);
  const rows = forward(scaled, ids);
  const diff = Math.max(...rows.flatMap((r, t) => [...r].map((v, i) => Math.abs(v - plain[t][i]))));
  assert.ok(diff > 1e-6, `YaRN changes nothing (${diff})`);
  // Other scalings stay refused by name.
  for (const l of yarn.decoder.layers) {
    const a = l.blocks[0];
    if (a.kind === "attention" && a.attention.kind === "mla") {
      a.attention.position = { ...position, scaling: { kind: "linear", factor: 2 } };
    }
  }
  await assert.rejects(
    () => prepareReference({ ...ir, spec: yarn }),
    (e) => e instanceof UnsupportedError && /linear/.test(e.message),
  );
});

Deno.test("glm4_moe-a and ernie4_5_moe-a descriptions: partial half RoPE, interleaved RoPE, routers", async () => {
  const glm = (await loadCheckpoint(ORACLE + "glm4_moe-a")).spec;
  const ga = glm.decoder.layers[0].blocks[0];
  assert.ok(ga.kind === "attention" && ga.attention.kind === "gqa");
  assert.equal(ga.attention.position.kind === "rope" && ga.attention.position.rotaryDim, 8);
  assert.equal(ga.attention.qkNorm, "head");
  assert.equal(ga.attention.qkvBias, true);
  const gr = moeOf(glm).router;
  assert.ok(gr.kind === "topk" && gr.scoring === "sigmoid" && gr.selectionBias && gr.normTopK);
  assert.equal(gr.scale, 2.5);
  assert.equal(gr.groups, null, "1 group of 8: no restriction");
  const ernie = (await loadCheckpoint(ORACLE + "ernie4_5_moe-a")).spec;
  const ea = ernie.decoder.layers[0].blocks[0];
  assert.ok(ea.kind === "attention" && ea.attention.kind === "gqa");
  assert.equal(
    ea.attention.position.kind === "rope" && ea.attention.position.pairing,
    "interleaved",
  );
  const er = moeOf(ernie).router;
  assert.ok(er.kind === "topk" && er.scoring === "softmax" && er.selectionBias && er.normTopK);
  assert.equal(ernie.head.tied, true);
  assert.equal(
    ernie.decoder.layers[0].blocks[1].kind === "ffn" &&
      ernie.decoder.layers[0].blocks[1].ffn.kind,
    "dense",
  );
});
