import assert from "node:assert/strict";
import { join } from "node:path";
import { describeModel, inspectArtifact } from "./inspect_report.ts";
import { MLA_LIKE, QWEN2_MOE_LIKE, SWITCH_LIKE, TINY_MODEL } from "../schemas/example_specs.ts";
import { packedByteSizes } from "../schemas/packing.ts";
import { tinyArtifact } from "../schemas/testing.ts";

Deno.test("inspect: JSON has the model and expert rows matching the tensors and the report; text has the tables", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = join(dir, "t.moeq");
    await Deno.writeFile(path, tinyArtifact());
    const j = JSON.parse(await inspectArtifact(path, { json: true }));
    // Expert 0: three 32x32 matrices at 4 bits, f16 scales; expert 1: at 3 bits, f32 scales.
    const b0 = packedByteSizes({ rows: 32, cols: 32, bits: 4, groupSize: 32, scaleType: "f16" });
    const b1 = packedByteSizes({ rows: 32, cols: 32, bits: 3, groupSize: 32, scaleType: "f32" });
    assert.deepEqual(j.experts, [
      {
        stack: "decoder",
        layer: 0,
        expert: 0,
        bits: 4,
        format: "q4",
        bytes: 3 * b0.total,
        scores: { freq: 0.7, sens: 1.5 },
        rank: 0,
        rel_error: 0.05,
      },
      {
        stack: "decoder",
        layer: 0,
        expert: 1,
        bits: 3,
        format: "q3",
        bytes: 3 * b1.total,
        scores: { freq: 0.3, sens: 0.5 },
        rank: 1,
        rel_error: 0.1,
      },
    ]);
    assert.deepEqual(j.model, TINY_MODEL);
    assert.equal(j.formatVersion, 2);
    assert.equal(j.tensors.length, 15);
    assert.equal(j.summary.expertBytes, 3 * (b0.total + b1.total));
    assert.deepEqual(j.layers.map((l: { stack: string; ffn: string }) => [l.stack, l.ffn]), [
      ["decoder", "moe"],
    ]);
    const text = await inspectArtifact(path, { tensors: true });
    assert.match(
      text,
      /^model: mixtral, vocab 8, hidden 32, max positions 64, tied head; bos 1, eos 2$/m,
    );
    assert.match(text, /^decoder: 1 layer$/m);
    assert.match(
      text,
      /^ {2}0 {5}attn gqa 2\/1×16 rope θ1e4 · moe 2 top-1 softmax norm swiglu 32$/m,
    );
    assert.match(text, /layer\s+expert\s+bits\s+format\s+bytes\s+rank\s+rel_error\s+freq\s+sens/);
    assert.match(text, /0\s+1\s+3\.00\s+q3\s+\d+\s+1\s+0\.1000\s+0\.3000\s+0\.5000/);
    assert.match(
      text,
      /decoder\/0\/0\/expert_gate\s+decoder\s+expert_gate\s+0\s+0\s+32x32\s+q4 rtn\s+32/,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("inspect: MXFP4 experts show as mxfp4 at 4.25 bits", async () => {
  const { buildArtifact, randomQuantized } = await import("../schemas/testing.ts");
  const mx = { bits: 4 as const, groupSize: 32, scaleType: "e8m0" as const };
  const dir = await Deno.makeTempDir();
  try {
    const path = join(dir, "mx.moeq");
    await Deno.writeFile(
      path,
      buildArtifact(TINY_MODEL, {
        content: (t, i) =>
          t.expertMatrix
            ? {
              storage: "q",
              tensor: randomQuantized(t.shape[0], t.shape[1], mx, i + 1),
              quantizer: "mxfp4-release",
            }
            : { storage: "f32", values: new Float32Array(t.shape.reduce((a, b) => a * b, 1)) },
      }),
    );
    const j = JSON.parse(await inspectArtifact(path, { json: true }));
    assert.deepEqual(j.experts.map((e: { bits: number; format: string }) => [e.bits, e.format]), [
      [4.25, "mxfp4"],
      [4.25, "mxfp4"],
    ]);
    const text = await inspectArtifact(path, { tensors: true });
    assert.match(text, /0\s+0\s+4\.25\s+mxfp4\s+\d+/);
    assert.match(text, /expert_gate\s+0\s+0\s+32x32\s+mxfp4 mxfp4-release\s+32/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("inspect: the description is compact — runs of identical layers, short block names", () => {
  assert.deepEqual(describeModel(QWEN2_MOE_LIKE).slice(1), [
    "decoder: 2 layers",
    "  0     attn gqa 4/2×4 rope θ1e4 qkv-bias · mlp swiglu 40",
    "  1     attn gqa 4/2×4 rope θ1e4 qkv-bias · moe 4 top-2 softmax swiglu 8 + shared swiglu 24 gated",
  ]);
  assert.deepEqual(describeModel(SWITCH_LIKE), [
    "model: switch_transformers, vocab 32, hidden 16, max positions 64, tied head ×0.25; " +
    "bos none, eos 1, decoder start 0",
    "encoder: 2 layers",
    "  0     attn gqa 2/2×8 relbias 8 bidir from 0 scale 1 · mlp relu 32",
    "  1     attn gqa 2/2×8 relbias 8 bidir from 0 scale 1 · moe 4 top-1 capacity 3 relu 32",
    "decoder: 2 layers",
    "  0     attn gqa 2/2×8 relbias 8 from 0 scale 1 · cross gqa 2/2×8 scale 1 · mlp relu 32",
    "  1     attn gqa 2/2×8 relbias 8 from 0 scale 1 · cross gqa 2/2×8 scale 1 · " +
    "moe 4 top-1 capacity 3 relu 32",
  ]);
  assert.deepEqual(describeModel(MLA_LIKE).slice(2), [
    "  0     attn mla 2 q kv-lora 12 nope/rope/v 8/4/6 rope θ1e4 interleaved · mlp swiglu 40",
    "  1     attn mla 2 q-lora 10 kv-lora 12 nope/rope/v 8/4/6 rope θ1e4 interleaved · " +
    "moe 8 top-2 sigmoid norm groups 2/4 top2sum sel-bias ×2.5 swiglu 8 + shared swiglu 16",
  ]);
  // Two identical layers print as one run.
  assert.equal(
    describeModel({
      ...TINY_MODEL,
      decoder: {
        ...TINY_MODEL.decoder,
        layers: [TINY_MODEL.decoder.layers[0], TINY_MODEL.decoder.layers[0]],
      },
    })[2].slice(0, 8),
    "  0-1   ",
  );
});
