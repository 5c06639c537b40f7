// The switch_transformers adapter: the oracle checkpoint maps onto exactly the tensors its
// description implies; the description has the T5 encoder–decoder features; transformers' sparse
// layer rule; refused options.

import assert from "node:assert/strict";
import { join } from "node:path";
import { UnsupportedError } from "../../../schemas/errors.ts";
import { parseModelSpec } from "../../../schemas/model_parse.ts";
import { expectedTensors, keyString } from "../../../schemas/tensors.ts";
import { loadCheckpoint, parseConfig } from "../mod.ts";
import { assertFails } from "../testing.ts";
import { switchSparseLayers } from "./switch_transformers.ts";

const DIR = new URL("../../../testdata/hf-oracle/switch_transformers-a/", import.meta.url).pathname;

async function config(): Promise<Record<string, unknown>> {
  return JSON.parse(await Deno.readTextFile(join(DIR, "config.json")));
}

Deno.test("switch_transformers-a: the IR holds exactly expectedTensors(spec), in order", async () => {
  const ir = await loadCheckpoint(DIR);
  const want = expectedTensors(ir.spec);
  assert.deepEqual(ir.tensors.map(keyString), want.map(keyString));
  ir.tensors.forEach((t, i) => assert.deepEqual([...t.ref.shape], want[i].shape, keyString(t)));
  assert.deepEqual(parseModelSpec(JSON.parse(JSON.stringify(ir.spec)), "header"), ir.spec);
  const names = new Map(ir.tensors.map((t) => [keyString(t), t.ref.name]));
  assert.equal(names.get("decoder/-1/-1/embed"), "shared.weight");
  assert.equal(
    names.get("encoder/0/-1/attn_relative_bias"),
    "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
  );
  assert.equal(
    names.get("decoder/1/-1/cross_k"),
    "decoder.block.1.layer.1.EncDecAttention.k.weight",
  );
  assert.equal(
    names.get("decoder/1/3/expert_up"),
    "decoder.block.1.layer.2.mlp.experts.expert_3.wi.weight",
  );
  assert.equal(
    names.get("encoder/1/-1/router"),
    "encoder.block.1.layer.1.mlp.router.classifier.weight",
  );
});

Deno.test("switch_transformers-a: encoder–decoder description with T5 features", async () => {
  const spec = parseConfig(await config());
  assert.equal(spec.encoder?.layers.length, 2);
  assert.deepEqual(spec.decoder.layers.map((l) => l.blocks.map((b) => b.kind)), [
    ["attention", "cross_attention", "ffn"],
    ["attention", "cross_attention", "ffn"],
  ]);
  const self = spec.encoder!.layers[1].blocks[0];
  assert.ok(self.kind === "attention" && self.attention.kind === "gqa");
  assert.deepEqual(self.attention.position, {
    kind: "relative_bias",
    buckets: 8,
    maxDistance: 16,
    bidirectional: true,
    ownerLayer: 0,
  });
  assert.equal(self.attention.scale, 1);
  const ffns = spec.decoder.layers.map((l) => l.blocks[2]);
  assert.ok(ffns[0].kind === "ffn" && ffns[0].ffn.kind === "dense");
  assert.ok(ffns[1].kind === "ffn" && ffns[1].ffn.kind === "moe");
  assert.deepEqual(ffns[1].ffn.router, { kind: "capacity", capacity: 16 });
  assert.deepEqual(ffns[1].ffn.expert.activation, { kind: "relu" });
  assert.deepEqual(spec.head, { tied: true, scale: 32 ** -0.5, bias: false });
  assert.deepEqual([spec.decoderStartTokenId, spec.eosTokenIds], [0, [1]]);
  const untied = parseConfig({ ...(await config()), tie_word_embeddings: false });
  assert.deepEqual(untied.head, { tied: false, scale: 1, bias: false });
});

Deno.test("switch sparse layers follow transformers' config rule", () => {
  const sparse = (n: number, k: number) => switchSparseLayers(n, k).flatMap((s, i) => s ? [i] : []);
  assert.deepEqual(sparse(12, 3), [1, 5, 9]);
  assert.deepEqual(sparse(4, 2), [1, 3]);
  assert.deepEqual(sparse(2, 1), [1]);
  assert.deepEqual(sparse(3, 3), [0, 1, 2]); // step 1: every layer
  assert.deepEqual(sparse(6, 0), [1]); // transformers' "0 sparse layers" hack: step = layers
});

Deno.test("switch_transformers: router_bias and non-ReLU experts are refused", async () => {
  const base = await config();
  await assertFails(
    () => parseConfig({ ...base, router_bias: true }, "s/config.json"),
    UnsupportedError,
    "s/config.json: router_bias is not supported for switch_transformers",
  );
  await assertFails(
    () => parseConfig({ ...base, dense_act_fn: "gelu" }, "s/config.json"),
    UnsupportedError,
    's/config.json: dense_act_fn "gelu" is not supported',
  );
});
