import assert from "node:assert/strict";
import { join } from "node:path";
import { InputError, UnsupportedError } from "../../schemas/errors.ts";
import type { GqaAttentionSpec, ModelSpec, MoeFfnSpec, RopeSpec } from "../../schemas/model.ts";
import { type ModelIR, TensorIndex, type TensorRef } from "../ir.ts";
import { loadCheckpoint, openSafetensors, parseConfig } from "./mod.ts";
import {
  assertFails,
  f32ToBf16,
  type TestTensor,
  writeSafetensors,
  writeSyntheticCheckpoint,
} from "./testing.ts";

const HF = new URL("../../testdata/hf-moe/", import.meta.url).pathname;
const SHAKESPEARE = new URL("../../testdata/shakespeare-moe/", import.meta.url).pathname;
const tmp = await Deno.makeTempDir({ prefix: "moeq-ckpt-" });

/**
 * Independent decode of one tensor straight from the file bytes (own header parse, DataView),
 * for comparing against what the reader and the adapters return.
 */
async function directDecode(path: string, name: string): Promise<Float32Array> {
  const bytes = await Deno.readFile(path);
  const view = new DataView(bytes.buffer);
  const n = Number(view.getBigUint64(0, true));
  const header = JSON.parse(new TextDecoder().decode(bytes.subarray(8, 8 + n)));
  const { dtype, data_offsets: [b, e] } = header[name];
  const at = 8 + n + b;
  const size = { F32: 4, BF16: 2, F16: 2 }[dtype as "F32"];
  const out = new Float32Array((e - b) / size);
  const word = new DataView(new ArrayBuffer(4));
  for (let i = 0; i < out.length; i++) {
    if (dtype === "F32") out[i] = view.getFloat32(at + 4 * i, true);
    else if (dtype === "F16") out[i] = view.getFloat16(at + 2 * i, true);
    else {
      word.setUint32(0, view.getUint16(at + 2 * i, true) * 65536);
      out[i] = word.getFloat32(0);
    }
  }
  return out;
}

/** Every tensor of the IR, read. */
async function readAll(ir: ModelIR): Promise<Float32Array[]> {
  const out = [];
  for (const t of ir.tensors) out.push(await t.ref.read());
  return out;
}

/** The decoder tensor of `role` at `layer` (−1: model level), of routed expert `expert`. */
function tensorAt(ir: ModelIR, layer: number, role: string, expert = -1): TensorRef {
  return new TensorIndex(ir.tensors).need({ stack: "decoder", layer, expert, role });
}

/** The attention block of decoder layer `l`. */
function attentionOf(spec: ModelSpec, l: number): GqaAttentionSpec {
  for (const b of spec.decoder.layers[l].blocks) {
    if (b.kind === "attention" && b.attention.kind === "gqa") return b.attention;
  }
  throw new Error(`layer ${l} has no gqa attention`);
}

/** The MoE block of decoder layer `l`. */
function moeOf(spec: ModelSpec, l: number): MoeFfnSpec {
  for (const b of spec.decoder.layers[l].blocks) {
    if (b.kind === "ffn" && b.ffn.kind === "moe") return b.ffn;
  }
  throw new Error(`layer ${l} has no MoE block`);
}

/** "moe" or "dense" per decoder layer. */
function ffnKinds(spec: ModelSpec): string[] {
  return spec.decoder.layers.map((l) =>
    l.blocks.flatMap((b) => (b.kind === "ffn" ? [b.ffn.kind] : [])).join("+")
  );
}

/** The RoPE of decoder layer `l`. */
function ropeOf(spec: ModelSpec, l: number): RopeSpec {
  const p = attentionOf(spec, l).position;
  if (p.kind !== "rope") throw new Error("not rope");
  return p;
}

/** Copies a fixture directory and rewrites its safetensors with `edit` applied to the tensors. */
async function editedFixture(
  name: string,
  edit: (tensors: Record<string, TestTensor>) => void,
): Promise<string> {
  const src = join(HF, name);
  const dir = await Deno.makeTempDir({ dir: tmp });
  await Deno.copyFile(join(src, "config.json"), join(dir, "config.json"));
  const file = await openSafetensors(join(src, "model.safetensors"));
  const tensors: Record<string, TestTensor> = {};
  for (const [n, info] of file.tensors) {
    tensors[n] = { dtype: info.dtype, shape: [...info.shape], data: await file.read(n) };
  }
  edit(tensors);
  await writeSafetensors(join(dir, "model.safetensors"), tensors);
  return dir;
}

Deno.test("mixtral-classic fixture: config, tensor count, every value vs direct decode", async () => {
  const dir = join(HF, "mixtral-classic");
  const ir = await loadCheckpoint(dir);
  const c = ir.spec;
  const a = attentionOf(c, 0);
  assert.equal(c.family, "mixtral");
  assert.deepEqual(
    [c.vocabSize, c.hiddenSize, c.decoder.layers.length, a.numHeads, a.numKvHeads, a.headDim],
    [48, 32, 2, 4, 4, 8],
  );
  const moe = moeOf(c, 1);
  assert.equal(moe.expert.intermediate, 64);
  assert.deepEqual([moe.numExperts, moe.topK], [4, 2]);
  assert.deepEqual(moe.router, {
    kind: "topk",
    scoring: "softmax",
    softmaxAfterTopK: false,
    normTopK: true,
    scale: 1,
    bias: false,
    selectionBias: false,
    groups: null,
  });
  assert.equal(ropeOf(c, 0).theta, 10000);
  assert.equal(c.decoder.finalNorm.eps, 1e-5);
  assert.deepEqual(c.eosTokenIds, [20]);
  assert.equal(c.bosTokenId, null);
  assert.deepEqual(ffnKinds(c), ["moe", "moe"]);
  assert.equal(ir.tokenizer.tokenizerJson, null);
  assert.equal(ir.tokenizer.chatTemplate, null);
  const placed = ir.tensors;
  assert.equal(placed.length, 41); // embed, lm_head, norm + 2 × (2 norms + 4 attn + router + 12)
  const path = join(dir, "model.safetensors");
  for (const t of placed) {
    assert.deepEqual(await t.ref.read(), await directDecode(path, t.ref.name), t.ref.name);
  }
  assert.equal(
    tensorAt(ir, 1, "expert_gate", 3).name,
    "model.layers.1.block_sparse_moe.experts.3.w1.weight",
  );
});

Deno.test("mixtral-packed fixture: expert slices equal direct decode of the packed rows", async () => {
  const dir = join(HF, "mixtral-packed");
  const ir = await loadCheckpoint(dir);
  const path = join(dir, "model.safetensors");
  const I = 64, H = 32;
  assert.deepEqual(ffnKinds(ir.spec), ["moe", "moe"]);
  for (let l = 0; l < 2; l++) {
    const p = `model.layers.${l}.mlp.experts`;
    const gateUp = await directDecode(path, `${p}.gate_up_proj`); // [E, 2I, H]
    const down = await directDecode(path, `${p}.down_proj`); // [E, H, I]
    for (let e = 0; e < moeOf(ir.spec, l).numExperts; e++) {
      const gate = tensorAt(ir, l, "expert_gate", e);
      const expertDown = tensorAt(ir, l, "expert_down", e);
      assert.deepEqual(gate.shape, [I, H]);
      assert.deepEqual(expertDown.shape, [H, I]);
      const base = e * 2 * I * H;
      assert.deepEqual(await gate.read(), gateUp.slice(base, base + I * H));
      assert.deepEqual(
        await tensorAt(ir, l, "expert_up", e).read(),
        gateUp.slice(base + I * H, base + 2 * I * H),
      );
      assert.deepEqual(await expertDown.read(), down.slice(e * H * I, (e + 1) * H * I));
    }
  }
});

Deno.test("mixtral packed and classic layouts give identical IR tensors", async () => {
  const packed = await loadCheckpoint(join(HF, "mixtral-packed"));
  const classic = await loadCheckpoint(join(HF, "mixtral-classic"));
  assert.deepEqual(packed.spec, classic.spec);
  const a = packed.tensors, b = classic.tensors;
  assert.equal(a.length, b.length);
  for (let i = 0; i < a.length; i++) {
    assert.deepEqual([a[i].role, a[i].layer, a[i].expert], [b[i].role, b[i].layer, b[i].expert]);
    assert.deepEqual(a[i].ref.shape, b[i].ref.shape);
    assert.deepEqual(await a[i].ref.read(), await b[i].ref.read(), `${a[i].ref.name}`);
  }
});

Deno.test("qwen2-moe fixture: GQA, biases, shared expert and its gate", async () => {
  const dir = join(HF, "qwen2-moe");
  const ir = await loadCheckpoint(dir);
  const c = ir.spec;
  const a = attentionOf(c, 0);
  const moe = moeOf(c, 0);
  assert.equal(c.family, "qwen2_moe");
  assert.deepEqual([a.numHeads, a.numKvHeads, a.headDim], [4, 2, 8]);
  assert.deepEqual([moe.expert.intermediate, moe.shared?.mlp.intermediate], [16, 24]);
  assert.equal(moe.shared?.gated, true);
  assert.equal(a.qkvBias, true);
  assert.equal(moe.router.kind === "topk" && moe.router.normTopK, false);
  assert.equal(c.maxPositions, 64);
  assert.equal(ir.tensors.length, 55);
  assert.deepEqual(tensorAt(ir, 0, "attn_k_bias").shape, [16]);
  const sharedGate = tensorAt(ir, 0, "shared_expert_gate");
  assert.deepEqual(sharedGate.shape, [1, 32]);
  assert.deepEqual(tensorAt(ir, 0, "shared_down").shape, [32, 24]);
  const path = join(dir, "model.safetensors");
  assert.deepEqual(
    await sharedGate.read(),
    await directDecode(path, "model.layers.0.mlp.shared_expert_gate.weight"),
  );
  const gateUp = await directDecode(path, "model.layers.0.mlp.experts.gate_up_proj"); // [4, 32, 32]
  assert.deepEqual(
    await tensorAt(ir, 0, "expert_up", 2).read(),
    gateUp.slice(2 * 1024 + 512, 3 * 1024),
  );
  assert.deepEqual(
    await tensorAt(ir, 0, "attn_q_bias").read(),
    await directDecode(path, "model.layers.0.self_attn.q_proj.bias"),
  );
});

Deno.test("shakespeare BF16 checkpoint and its init/ load; values match a byte-level decode", async () => {
  for (const dir of [SHAKESPEARE, join(SHAKESPEARE, "init")]) {
    const ir = await loadCheckpoint(dir);
    const c = ir.spec;
    const kv = attentionOf(c, 0).numKvHeads;
    assert.deepEqual([c.vocabSize, c.hiddenSize, c.decoder.layers.length, kv], [256, 128, 4, 2]);
    const moe = moeOf(c, 3);
    assert.deepEqual([moe.numExperts, moe.topK, c.maxPositions], [8, 2, 128]);
    assert.deepEqual([c.bosTokenId, c.eosTokenIds], [2, [3]]);
    const placed = ir.tensors;
    assert.equal(placed.length, 3 + 4 * (2 + 4 + 1 + 8 * 3));
    assert.ok(placed.every((t) => t.ref.dtype === "BF16"));
    const path = join(dir, "model.safetensors");
    for (const i of [0, 5, 40, 77, 126]) {
      const ref = placed[i].ref;
      const got = await ref.read();
      assert.deepEqual(got, await directDecode(path, ref.name), ref.name);
      assert.ok(got.some((v) => v !== 0), `${ref.name} is not all zeros`);
    }
  }
});

Deno.test("reads are lazy: the IR reads the file at read() time", async () => {
  const dir = await editedFixture("mixtral-classic", () => {});
  const ir = await loadCheckpoint(dir);
  const path = join(dir, "model.safetensors");
  const info = (await openSafetensors(path)).info("model.norm.weight");
  const f = await Deno.open(path, { write: true });
  await f.seek(info.begin, Deno.SeekMode.Start);
  await f.write(new Uint8Array(new Float32Array([42.5]).buffer));
  f.close();
  assert.equal((await tensorAt(ir, -1, "final_norm").read())[0], 42.5);
});

// ---- synthetic checkpoints of the other families / options ----

const qwen3 = {
  model_type: "qwen3_moe",
  vocab_size: 40,
  hidden_size: 16,
  num_hidden_layers: 3,
  num_attention_heads: 4,
  num_key_value_heads: 2,
  head_dim: 6,
  moe_intermediate_size: 8,
  intermediate_size: 12,
  num_experts: 4,
  num_experts_per_tok: 2,
  norm_topk_prob: true,
  mlp_only_layers: [1],
  rope_parameters: { rope_type: "default", rope_theta: 1000000 },
  eos_token_id: [5, 7],
  bos_token_id: 1,
};

/**
 * Asserts that every IR tensor equals what the generator wrote (rounded to `dtype`); returns the
 * number of written tensors the IR covers.
 */
async function assertMatchesWritten(
  ir: ModelIR,
  written: Map<string, { values: Float32Array }>,
  dtype = "F32",
) {
  const covered = new Set<string>();
  for (const t of ir.tensors) {
    const m = /^(.*?)(?:\[(\d+), (\d+):(\d+), :\])?$/.exec(t.ref.name)!;
    const src = written.get(m[1]);
    assert.ok(src, `IR tensor ${t.ref.name} not written`);
    let want = src.values;
    if (m[2] !== undefined) {
      const cols = t.ref.shape[1];
      const rows = Number(m[4]) - Number(m[3]);
      const perBlock = src.values.length / moeOf(ir.spec, t.layer).numExperts;
      const start = Number(m[2]) * perBlock + Number(m[3]) * cols;
      want = src.values.slice(start, start + rows * cols);
    }
    if (dtype === "BF16") {
      want = want.map((v) => new Float32Array(new Uint32Array([f32ToBf16(v) << 16]).buffer)[0]);
    }
    assert.deepEqual(await t.ref.read(), want, t.ref.name);
    covered.add(m[1]);
  }
  return covered.size;
}

Deno.test("qwen3_moe: per-head q/k norms, dense mlp_only layer, packed and classic", async () => {
  for (const packed of [false, true]) {
    const dir = join(tmp, `qwen3-${packed}`);
    const written = await writeSyntheticCheckpoint(dir, qwen3, { packed, seed: 11 });
    const ir = await loadCheckpoint(dir);
    const c = ir.spec;
    const a = attentionOf(c, 0);
    assert.deepEqual(ffnKinds(c), ["moe", "dense", "moe"]);
    assert.deepEqual([a.qkNorm, a.qkvBias, a.headDim, ropeOf(c, 0).theta], ["head", false, 6, 1e6]);
    const dense = c.decoder.layers[1].blocks[1];
    assert.ok(dense.kind === "ffn" && dense.ffn.kind === "dense");
    assert.deepEqual([dense.ffn.mlp.intermediate, moeOf(c, 0).shared], [12, null]);
    const router = moeOf(c, 2).router;
    assert.equal(router.kind === "topk" && router.normTopK, true);
    assert.deepEqual([c.bosTokenId, c.eosTokenIds], [1, [5, 7]]);
    assert.deepEqual(tensorAt(ir, 0, "attn_q_norm").shape, [6]);
    assert.deepEqual(tensorAt(ir, 0, "attn_q").shape, [24, 16]);
    assert.equal(await assertMatchesWritten(ir, written), written.size);
  }
});

Deno.test("olmoe: full-width q/k norms, BF16, sharded over 3 files", async () => {
  const cfg = {
    model_type: "olmoe",
    vocab_size: 30,
    hidden_size: 16,
    num_hidden_layers: 2,
    num_attention_heads: 4,
    num_key_value_heads: 2,
    intermediate_size: 8,
    num_experts: 4,
    num_experts_per_tok: 2,
    eos_token_id: 3,
  };
  const dir = join(tmp, "olmoe");
  const written = await writeSyntheticCheckpoint(dir, cfg, { dtype: "BF16", shards: 3, seed: 5 });
  const ir = await loadCheckpoint(dir);
  const a = attentionOf(ir.spec, 1);
  const router = moeOf(ir.spec, 1).router;
  assert.deepEqual([a.qkNorm, router.kind === "topk" && router.normTopK], ["full", false]);
  assert.equal(a.headDim, 4);
  assert.equal(a.clipQkv, null);
  assert.deepEqual(tensorAt(ir, 1, "attn_k_norm").shape, [8]);
  assert.deepEqual(tensorAt(ir, 1, "attn_q_norm").shape, [16]);
  assert.equal(await assertMatchesWritten(ir, written, "BF16"), written.size);
});

Deno.test("qwen2_moe: decoder_sparse_step, tied embeddings, inv_freq ignored, tokenizer", async () => {
  const cfg = {
    model_type: "qwen2_moe",
    vocab_size: 24,
    hidden_size: 8,
    num_hidden_layers: 4,
    num_attention_heads: 2,
    moe_intermediate_size: 4,
    shared_expert_intermediate_size: 6,
    intermediate_size: 10,
    num_experts: 3,
    num_experts_per_tok: 1,
    decoder_sparse_step: 2,
    tie_word_embeddings: true,
  };
  const dir = join(tmp, "qwen2-synth");
  const written = await writeSyntheticCheckpoint(dir, cfg, { seed: 9 });
  await Deno.writeTextFile(join(dir, "tokenizer.json"), '{"model":{}}');
  await Deno.writeTextFile(
    join(dir, "tokenizer_config.json"),
    JSON.stringify({ chat_template: "{{ messages }}" }),
  );
  const ir = await loadCheckpoint(dir);
  assert.deepEqual(ffnKinds(ir.spec), ["dense", "moe", "dense", "moe"]);
  assert.equal(ir.spec.head.tied, true);
  assert.ok(!ir.tensors.some((t) => t.role === "lm_head"), "a tied model has no lm_head tensor");
  assert.equal(await assertMatchesWritten(ir, written), written.size);
  assert.equal(new TextDecoder().decode(ir.tokenizer.tokenizerJson!), '{"model":{}}');
  assert.equal(ir.tokenizer.chatTemplate, "{{ messages }}");

  // A saved rotary inv_freq buffer is tolerated; a tied lm_head copy is ignored.
  const dir2 = await editedFixture("qwen2-moe", (t) => {
    t["model.layers.0.self_attn.rotary_emb.inv_freq"] = { shape: [4], data: [1, 0.1, 0.01, 1e-3] };
  });
  const ir2 = await loadCheckpoint(dir2);
  assert.equal(ir2.tensors.length, 55);
});

// ---- config.json errors ----

Deno.test("config errors: missing/invalid fields name the field", async () => {
  const base = JSON.parse(await Deno.readTextFile(join(HF, "qwen2-moe", "config.json")));
  const cases: [Record<string, unknown>, RegExp][] = [
    [{ hidden_size: undefined }, /field "hidden_size" missing/],
    [{ hidden_size: 0 }, /field "hidden_size" must be a positive integer/],
    [{ num_hidden_layers: 2.5 }, /field "num_hidden_layers" must be a positive integer/],
    [{ num_experts_per_tok: 9 }, /"num_experts_per_tok" \(9\) exceeds/],
    [{ num_key_value_heads: 3 }, /"num_key_value_heads" \(3\) must divide/],
    [{ norm_topk_prob: "yes" }, /field "norm_topk_prob" must be true or false/],
    [{ eos_token_id: 48 }, /field "eos_token_id" must be a token id/],
    [{ rms_norm_eps: -1 }, /field "rms_norm_eps" must be a positive number/],
    [{ moe_intermediate_size: undefined }, /field "moe_intermediate_size" missing/],
    [{ model_type: undefined }, /field "model_type" missing/],
  ];
  for (const [edit, pattern] of cases) {
    const cfg = { ...base, ...edit };
    for (const k of Object.keys(edit)) if (edit[k] === undefined) delete cfg[k];
    await assertFails(
      () => parseConfig(cfg, "x/config.json"),
      InputError,
      /^x\/config.json: /,
      pattern,
    );
  }
  await assertFails(
    () => parseConfig([1], "c.json"),
    InputError,
    "c.json",
    /not a JSON object/,
  );
});

Deno.test("config errors: unknown architecture and unsupported features", async () => {
  const base = JSON.parse(await Deno.readTextFile(join(HF, "mixtral-classic", "config.json")));
  await assertFails(
    () => parseConfig({ ...base, model_type: "llama" }, "config.json"),
    UnsupportedError,
    /model_type "llama" is not supported/,
  );
  await assertFails(
    () => parseConfig({ ...base, hidden_act: "gelu" }, "config.json"),
    UnsupportedError,
    /hidden_act "gelu"/,
  );
  await assertFails(
    () => parseConfig({ ...base, rope_scaling: { rope_type: "yarn", factor: 4 } }),
    UnsupportedError,
    /RoPE type "yarn"/,
  );
  await assertFails(
    () => parseConfig({ ...base, sliding_window: 16 }),
    UnsupportedError,
    /sliding_window 16/,
  );
});

Deno.test("config errors: config.json missing or not JSON", async () => {
  const dir = await editedFixture("mixtral-classic", () => {});
  await Deno.writeTextFile(join(dir, "config.json"), "{ model_type: mixtral");
  await assertFails(() => loadCheckpoint(dir), InputError, "config.json", /not valid JSON/);
  await Deno.remove(join(dir, "config.json"));
  await assertFails(() => loadCheckpoint(dir), InputError, "config.json", /not found/);
});

Deno.test("generation_config.json: its EOS ids join config.json's; a bad one names the file", async () => {
  const dir = await editedFixture("mixtral-classic", () => {});
  const spec = (await loadCheckpoint(dir)).spec;
  await Deno.writeTextFile(
    join(dir, "generation_config.json"),
    JSON.stringify({ eos_token_id: [5, ...spec.eosTokenIds, 5] }),
  );
  assert.deepEqual((await loadCheckpoint(dir)).spec.eosTokenIds, [...spec.eosTokenIds, 5]);
  await Deno.writeTextFile(join(dir, "generation_config.json"), '{"eos_token_id": 100000}');
  await assertFails(
    () => loadCheckpoint(dir),
    InputError,
    "generation_config.json",
    /field "eos_token_id" must be a token id below vocab_size/,
  );
});

// ---- tensor set errors ----

Deno.test("tensor errors: missing tensor", async () => {
  const dir = await editedFixture("mixtral-classic", (t) => {
    delete t["model.layers.1.block_sparse_moe.experts.2.w3.weight"];
  });
  await assertFails(
    () => loadCheckpoint(dir),
    InputError,
    '"model.layers.1.block_sparse_moe.experts.2.w3.weight" missing',
    /expected shape \[64, 32\]/,
  );
});

Deno.test("tensor errors: mis-shaped tensor, and a packed tensor of the wrong size", async () => {
  let dir = await editedFixture("qwen2-moe", (t) => {
    t["model.layers.0.self_attn.k_proj.weight"] = { shape: [32, 16], data: new Float32Array(512) };
  });
  await assertFails(
    () => loadCheckpoint(dir),
    InputError,
    '"model.layers.0.self_attn.k_proj.weight" has shape [32, 16], expected [16, 32]',
  );
  dir = await editedFixture("mixtral-packed", (t) => {
    t["model.layers.1.mlp.experts.gate_up_proj"] = {
      shape: [4, 64, 32],
      data: new Float32Array(4 * 64 * 32),
    };
  });
  await assertFails(() => loadCheckpoint(dir), InputError, /gate_up_proj" has shape \[4, 64, 32\]/);
});

Deno.test("tensor errors: unexpected extra tensor", async () => {
  const dir = await editedFixture("mixtral-packed", (t) => {
    t["model.layers.0.mlp.experts.gate_proj_extra"] = { shape: [2], data: [1, 2] };
  });
  await assertFails(
    () => loadCheckpoint(dir),
    InputError,
    "model.safetensors",
    /unexpected tensor "model.layers.0.mlp.experts.gate_proj_extra"/,
  );
});

Deno.test("tensor errors: integer dtype where a weight is expected", async () => {
  const dir = await editedFixture("mixtral-classic", (t) => {
    t["model.norm.weight"] = { dtype: "I32", shape: [32], data: new Array(32).fill(1) };
  });
  await assertFails(() => loadCheckpoint(dir), UnsupportedError, '"model.norm.weight"', /I32/);
});

Deno.test("tensor errors: NaN weight fails on read unless allowNonFinite (then reads as 0)", async () => {
  const dir = await editedFixture("mixtral-classic", (t) => {
    const v = Float32Array.from(t["model.layers.0.self_attn.o_proj.weight"].data);
    v[100] = NaN;
    t["model.layers.0.self_attn.o_proj.weight"].data = v;
  });
  const ir = await loadCheckpoint(dir);
  await assertFails(
    () => readAll(ir),
    InputError,
    '"model.layers.0.self_attn.o_proj.weight"',
    /non-finite value \(NaN\) at element 100/,
  );
  const lenient = await loadCheckpoint(dir, { allowNonFinite: true });
  const o = await tensorAt(lenient, 0, "attn_o").read();
  assert.equal(o[100], 0);
  assert.ok(o.every(Number.isFinite));
});

Deno.test("cleanup", async () => {
  await Deno.remove(tmp, { recursive: true });
});
