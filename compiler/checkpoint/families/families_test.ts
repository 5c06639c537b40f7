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
  for (
    const t of [
      "mixtral",
      "qwen2_moe",
      "qwen3_moe",
      "olmoe",
      "glm4_moe",
      "ernie4_5_moe",
      "deepseek_v2",
      "deepseek_v3",
    ]
  ) {
    assert.ok(SUPPORTED_MODEL_TYPES.includes(t), t);
  }
  assert.equal(new Set(FAMILIES.map((f) => f.modelType)).size, FAMILIES.length);
  await assertFails(
    () => parseConfig({ model_type: "gpt2" }, "c/config.json"),
    UnsupportedError,
    `c/config.json: model_type "gpt2" is not supported (supported: ${
      SUPPORTED_MODEL_TYPES.join(", ")
    })`,
  );
});

for (const name of FIXTURES) {
  for (const dir of [name, `${name}-packed`]) {
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
