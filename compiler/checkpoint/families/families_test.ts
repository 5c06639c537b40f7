// The family adapters and their registry: every family's oracle checkpoint maps onto exactly the
// tensors its description implies, in canonical order; the options each adapter reads (OLMoE
// clip_qkv, windows that cover the context, qkv_bias) and the ones it refuses.

import assert from "node:assert/strict";
import { join } from "node:path";
import { InputError, UnsupportedError } from "../../../schemas/errors.ts";
import type { GqaAttentionSpec, ModelSpec } from "../../../schemas/model.ts";
import { expectedTensors, keyString } from "../../../schemas/tensors.ts";
import { loadCheckpoint, parseConfig } from "../mod.ts";
import { assertFails, writeSafetensors, writeSyntheticCheckpoint } from "../testing.ts";
import { openSafetensors } from "../safetensors.ts";
import { FAMILIES, SUPPORTED_MODEL_TYPES } from "./mod.ts";

const ORACLE = new URL("../../../testdata/hf-oracle/", import.meta.url).pathname;
const FIXTURES = ["mixtral-a", "qwen2_moe-a", "qwen3_moe-a", "olmoe-a"];

async function oracleConfig(name: string): Promise<Record<string, unknown>> {
  return JSON.parse(await Deno.readTextFile(join(ORACLE, name, "config.json")));
}

function attentionOf(spec: ModelSpec, l = 0): GqaAttentionSpec {
  const b = spec.decoder.layers[l].blocks[0];
  assert.ok(b.kind === "attention" && b.attention.kind === "gqa");
  return b.attention;
}

Deno.test("registry: one adapter per model_type, the unsupported message lists them", async () => {
  assert.deepEqual(SUPPORTED_MODEL_TYPES, [
    "mixtral",
    "qwen2_moe",
    "qwen3_moe",
    "olmoe",
    "granitemoe",
    "phimoe",
    "gpt_oss",
    "switch_transformers",
    "glm4_moe",
    "ernie4_5_moe",
    "deepseek_v2",
    "deepseek_v3",
    "kimi_k2",
  ]);
  assert.equal(new Set(FAMILIES.map((f) => f.modelType)).size, FAMILIES.length);
  await assertFails(
    () => parseConfig({ model_type: "gpt2" }, "c/config.json"),
    UnsupportedError,
    'c/config.json: model_type "gpt2" is not supported (supported: mixtral, qwen2_moe, ' +
      "qwen3_moe, olmoe, granitemoe, phimoe, gpt_oss, switch_transformers, glm4_moe, " +
      "ernie4_5_moe, deepseek_v2, deepseek_v3, kimi_k2)",
  );
});

/** Fixtures without a packed twin (their experts are fused in the hub layout already). */
const SINGLE = ["granitemoe-a", "phimoe-a", "gpt_oss-a"];

for (const name of [...FIXTURES, ...SINGLE]) {
  for (const dir of SINGLE.includes(name) ? [name] : [name, `${name}-packed`]) {
    Deno.test(`${dir}: the IR holds exactly expectedTensors(spec), in order, shapes equal`, async () => {
      const ir = await loadCheckpoint(join(ORACLE, dir));
      const want = expectedTensors(ir.spec);
      assert.deepEqual(ir.tensors.map(keyString), want.map(keyString));
      ir.tensors.forEach((t, i) => assert.deepEqual([...t.ref.shape], want[i].shape, keyString(t)));
      assert.equal(ir.spec.family, name.replace(/-a$/, ""));
      // A description is plain data: it survives JSON unchanged (the artifact header stores it).
      assert.deepEqual(JSON.parse(JSON.stringify(ir.spec)), ir.spec);
    });
  }
}

Deno.test("oracle configs: the per-family features land in the description", async () => {
  const mixtral = parseConfig(await oracleConfig("mixtral-a"));
  assert.equal(mixtral.head.tied, true);
  assert.deepEqual(attentionOf(mixtral).position, {
    kind: "rope",
    theta: 1e6,
    rotaryDim: 8,
    pairing: "half",
    scaling: { kind: "none" },
  });
  const qwen2 = attentionOf(parseConfig(await oracleConfig("qwen2_moe-a")));
  assert.deepEqual([qwen2.qkvBias, qwen2.qkNorm], [true, "none"]);
  const qwen3 = attentionOf(parseConfig(await oracleConfig("qwen3_moe-a")));
  assert.deepEqual([qwen3.qkNorm, qwen3.headDim, qwen3.numKvHeads, qwen3.scale], [
    "head",
    16,
    2,
    0.25,
  ]);
  const olmoe = attentionOf(parseConfig(await oracleConfig("olmoe-a")));
  assert.deepEqual([olmoe.qkNorm, olmoe.clipQkv, olmoe.qkNormSpec.eps], ["full", null, 1e-5]);
});

Deno.test("granitemoe: the four multipliers and the fused expert slices", async () => {
  const spec = parseConfig(await oracleConfig("granitemoe-a"));
  assert.deepEqual([spec.embedScale, spec.head.scale, spec.decoder.layers[1].residualScale], [
    12,
    1 / 6,
    0.22,
  ]);
  assert.equal(attentionOf(spec).scale, 0.25);
  const ir = await loadCheckpoint(join(ORACLE, "granitemoe-a"));
  const names = ir.tensors.filter((t) => t.layer === 1 && t.expert === 2).map((t) => t.ref.name);
  assert.deepEqual(names, [
    "model.layers.1.block_sparse_moe.input_linear.weight[2, 0:24, :]",
    "model.layers.1.block_sparse_moe.input_linear.weight[2, 24:48, :]",
    "model.layers.1.block_sparse_moe.output_linear.weight[2, 0:32, :]",
  ]);
  const bias = parseConfig({ ...(await oracleConfig("granitemoe-a")), attention_bias: true });
  assert.deepEqual([attentionOf(bias).qkvBias, attentionOf(bias).outBias], [true, true]);
});

Deno.test("phimoe: LayerNorms with bias, attention and head biases, sparsemixer; top-k 2 only", async () => {
  const base = await oracleConfig("phimoe-a");
  const spec = parseConfig(base);
  const layer = { kind: "layer", eps: 1e-5, bias: true };
  assert.deepEqual(spec.decoder.finalNorm, layer);
  for (const b of spec.decoder.layers[0].blocks) assert.deepEqual(b.norm, layer);
  assert.deepEqual([attentionOf(spec).qkvBias, attentionOf(spec).outBias, spec.head.bias], [
    true,
    true,
    true,
  ]);
  const ffn = spec.decoder.layers[0].blocks[1];
  assert.ok(ffn.kind === "ffn" && ffn.ffn.kind === "moe");
  assert.deepEqual(ffn.ffn.router, { kind: "sparsemixer", jitter: 0.3 });
  const zero = parseConfig({ ...base, router_jitter_noise: 0 }).decoder.layers[0].blocks[1];
  assert.ok(zero.kind === "ffn" && zero.ffn.kind === "moe");
  assert.deepEqual(zero.ffn.router, { kind: "sparsemixer", jitter: 0 });
  await assertFails(
    () => parseConfig({ ...base, num_experts_per_tok: 3 }, "p/config.json"),
    UnsupportedError,
    "p/config.json: num_experts_per_tok 3 is not supported (sparsemixer routes to 2)",
  );
});

Deno.test("gpt_oss: windows per layer_types, sinks, YaRN, biased router; MXFP4 named", async () => {
  const base = await oracleConfig("gpt_oss-a");
  const spec = parseConfig(base);
  assert.deepEqual([attentionOf(spec, 0).slidingWindow, attentionOf(spec, 1).slidingWindow], [
    4,
    null,
  ]);
  const a = attentionOf(spec);
  assert.deepEqual([a.sinks, a.qkvBias, a.outBias, a.position.kind], [true, true, true, "rope"]);
  assert.ok(a.position.kind === "rope" && a.position.scaling.kind === "yarn");
  assert.equal(a.position.scaling.attentionFactor, 0.1 * Math.log(32) + 1);
  const ir = await loadCheckpoint(join(ORACLE, "gpt_oss-a"));
  const names = ir.tensors.filter((t) => t.layer === 1 && t.expert === 3).map((t) => t.ref.name);
  assert.deepEqual(names, [
    "model.layers.1.mlp.experts.gate_up_proj[3, :, 0::2]ᵀ",
    "model.layers.1.mlp.experts.gate_up_proj_bias[3, 0::2]ᵀ",
    "model.layers.1.mlp.experts.gate_up_proj[3, :, 1::2]ᵀ",
    "model.layers.1.mlp.experts.gate_up_proj_bias[3, 1::2]ᵀ",
    "model.layers.1.mlp.experts.down_proj[3, :, 0::1]ᵀ",
    "model.layers.1.mlp.experts.down_proj_bias[3, 0::1]ᵀ",
  ]);
  // Column 2j of expert 3's [H, 2I] block is row j of its gate matrix.
  const file = await openSafetensors(join(ORACLE, "gpt_oss-a", "model.safetensors"));
  const fused = await file.read("model.layers.1.mlp.experts.gate_up_proj"); // [4, 32, 48]
  const gate = await ir.tensors.find((t) => t.layer === 1 && t.expert === 3)!.ref.read();
  assert.equal(gate[5 * 32 + 7], fused[3 * 32 * 48 + 7 * 48 + 10]);
  const types = { ...base, layer_types: ["full_attention", "sliding_attention"] };
  assert.equal(attentionOf(parseConfig(types), 1).slidingWindow, 4);
  await assertFails(
    () => parseConfig({ ...base, quantization_config: { quant_method: "awq" } }, "g/config.json"),
    UnsupportedError,
    'g/config.json: quantization_config (quant_method "awq") is not read yet',
  );
});

Deno.test("olmoe clip_qkv: read as the attention clamp; a bad value names the field", async () => {
  const base = await oracleConfig("olmoe-a");
  assert.equal(attentionOf(parseConfig({ ...base, clip_qkv: 0.75 })).clipQkv, 0.75);
  await assertFails(
    () => parseConfig({ ...base, clip_qkv: -1 }, "o/config.json"),
    InputError,
    /^o\/config.json: field "clip_qkv" must be a positive number/,
  );
});

Deno.test("qwen2_moe qkv_bias false: no q/k/v bias tensors are expected", async () => {
  const config = { ...(await oracleConfig("qwen2_moe-a")), qkv_bias: false };
  const spec = parseConfig(config);
  assert.equal(attentionOf(spec).qkvBias, false);
  assert.ok(!expectedTensors(spec).some((t) => t.role.endsWith("_bias")));
  const dir = await Deno.makeTempDir({ prefix: "moeq-qkv-" });
  try {
    const written = await writeSyntheticCheckpoint(dir, config, { seed: 3 });
    assert.ok(![...written.keys()].some((n) => n.endsWith("_proj.bias")));
    assert.equal((await loadCheckpoint(dir)).tensors.length, written.size);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("sliding windows: refused when shorter than the context, accepted when not", async () => {
  const mixtral = await oracleConfig("mixtral-a"); // max_position_embeddings 64
  assert.equal(attentionOf(parseConfig({ ...mixtral, sliding_window: 64 })).slidingWindow, null);
  await assertFails(
    () => parseConfig({ ...mixtral, sliding_window: 63 }),
    UnsupportedError,
    /sliding_window 63 is not supported/,
  );
  const qwen3 = { ...(await oracleConfig("qwen3_moe-a")), use_sliding_window: true };
  assert.equal(attentionOf(parseConfig({ ...qwen3, sliding_window: 4096 })).slidingWindow, null);
  await assertFails(
    () => parseConfig({ ...qwen3, sliding_window: 16 }),
    UnsupportedError,
    /use_sliding_window is not supported/,
  );
});

Deno.test("tied embeddings: a saved lm_head copy is accepted and not used", async () => {
  const dir = await Deno.makeTempDir({ prefix: "moeq-tied-" });
  try {
    const src = join(ORACLE, "mixtral-a");
    await Deno.copyFile(join(src, "config.json"), join(dir, "config.json"));
    const file = await openSafetensors(join(src, "model.safetensors"));
    const tensors: Record<string, { shape: number[]; data: Float32Array }> = {};
    for (const [n, info] of file.tensors) {
      tensors[n] = { shape: [...info.shape], data: await file.read(n) };
    }
    tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"];
    await writeSafetensors(join(dir, "model.safetensors"), tensors);
    const ir = await loadCheckpoint(dir);
    assert.ok(!ir.tensors.some((t) => t.ref.name === "lm_head.weight"));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
