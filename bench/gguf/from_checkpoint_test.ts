import assert from "node:assert/strict";
import { join } from "node:path";
import {
  byteTokens,
  ggufTensors,
  permuteRope,
  readMixtralShape,
  writeCheckpointGguf,
} from "./from_checkpoint.ts";
import { readGgufHeader, tensorBytes } from "./format.ts";
import { decode } from "./quant.ts";
import { openCheckpointStore } from "../../compiler/checkpoint/mod.ts";
import { roundF16 } from "../../schemas/half.ts";
import { mulberry32 } from "../../schemas/prng.ts";

const SHAKESPEARE = new URL("../../testdata/shakespeare-moe", import.meta.url).pathname;

/** Rotate-half RoPE (Hugging Face): pairs (i, i + hd/2) turn by pos·θ^(−2i/hd). */
function ropeHalf(x: Float64Array, pos: number, theta: number): Float64Array {
  const hd = x.length, half = hd / 2, out = new Float64Array(hd);
  for (let i = 0; i < half; i++) {
    const a = pos * theta ** (-2 * i / hd), c = Math.cos(a), s = Math.sin(a);
    out[i] = x[i] * c - x[i + half] * s;
    out[i + half] = x[i + half] * c + x[i] * s;
  }
  return out;
}

/** Interleaved RoPE (llama.cpp's normal mode): pairs (2i, 2i + 1), same angles. */
function ropeInterleaved(x: Float64Array, pos: number, theta: number): Float64Array {
  const hd = x.length, out = new Float64Array(hd);
  for (let i = 0; i < hd / 2; i++) {
    const a = pos * theta ** (-2 * i / hd), c = Math.cos(a), s = Math.sin(a);
    out[2 * i] = x[2 * i] * c - x[2 * i + 1] * s;
    out[2 * i + 1] = x[2 * i + 1] * c + x[2 * i] * s;
  }
  return out;
}

Deno.test("permuted Q/K rows with interleaved RoPE give the rotate-half attention scores", () => {
  const heads = 3, hd = 8, cols = 5, r = mulberry32(4);
  const wq = Float32Array.from({ length: heads * hd * cols }, () => r() - 0.5);
  const wk = Float32Array.from({ length: heads * hd * cols }, () => r() - 0.5);
  const x = Float64Array.from({ length: cols }, () => r() - 0.5);
  const y = Float64Array.from({ length: cols }, () => r() - 0.5);
  const mv = (w: Float32Array, v: Float64Array, h: number) =>
    Float64Array.from({ length: hd }, (_, i) => {
      let s = 0;
      for (let c = 0; c < cols; c++) s += w[(h * hd + i) * cols + c] * v[c];
      return s;
    });
  const pq = permuteRope(wq, heads, cols), pk = permuteRope(wk, heads, cols);
  const dot = (a: Float64Array, b: Float64Array) => a.reduce((s, v, i) => s + v * b[i], 0);
  for (let h = 0; h < heads; h++) {
    const hf = dot(ropeHalf(mv(wq, x, h), 7, 1e4), ropeHalf(mv(wk, y, h), 3, 1e4));
    const gg = dot(ropeInterleaved(mv(pq, x, h), 7, 1e4), ropeInterleaved(mv(pk, y, h), 3, 1e4));
    assert.ok(Math.abs(hf - gg) <= 1e-12 * Math.max(1, Math.abs(hf)), `head ${h}: ${hf} vs ${gg}`);
  }
  assert.notDeepEqual(pq, wq);
});

Deno.test("byte tokens are GPT-2's byte-to-unicode alphabet: 256 distinct one-character texts", () => {
  const t = byteTokens();
  assert.equal(t.length, 256);
  assert.equal(new Set(t).size, 256);
  assert.equal(t[0x41], "A");
  assert.equal(t[0x20], "Ġ");
  assert.equal(t[0x0a], "Ċ");
});

Deno.test("shakespeare-moe as an F16 GGUF: llama metadata, Mixtral expert tensors, same weights", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = join(dir, "s.gguf");
    await writeCheckpointGguf(SHAKESPEARE, path, "f16");
    const bytes = await Deno.readFile(path);
    const h = readGgufHeader(bytes, path);
    const shape = await readMixtralShape(SHAKESPEARE);
    assert.equal(h.metadata.get("general.architecture"), "llama");
    assert.equal(h.metadata.get("llama.expert_count"), shape.experts);
    assert.equal(h.metadata.get("llama.expert_used_count"), shape.topK);
    assert.equal(h.metadata.get("llama.block_count"), shape.layers);
    assert.equal((h.metadata.get("tokenizer.ggml.tokens") as string[]).length, shape.vocab);
    assert.deepEqual(
      h.tensors.map((t) => t.name),
      ggufTensors(shape, "f16").map((s) => s.tensor.name),
    );
    const store = await openCheckpointStore(SHAKESPEARE);
    const read = (name: string) => {
      const t = h.tensors.find((t) => t.name === name)!;
      const start = h.dataOffset + t.offset;
      return {
        t,
        w: decode(t.type, bytes.subarray(start, start + tensorBytes(t)), tensorBytes(t) / 2),
      };
    };
    // Expert 5's down matrix is slice 5 of ffn_down_exps, as f16.
    const { t, w } = read("blk.2.ffn_down_exps.weight");
    assert.deepEqual(t.dims, [shape.intermediate, shape.hidden, shape.experts]);
    const down = await store.readElements(
      "model.layers.2.block_sparse_moe.experts.5.w2.weight",
      0,
      shape.hidden * shape.intermediate,
    );
    const per = shape.hidden * shape.intermediate;
    for (let i = 0; i < per; i++) assert.equal(w[5 * per + i], roundF16(down[i]));
    // K rows are permuted per KV head.
    const k = read("blk.0.attn_k.weight");
    const hfK = await store.readElements("model.layers.0.self_attn.k_proj.weight", 0, k.w.length);
    const hd = shape.headDim, H = shape.hidden;
    for (const [to, from] of [[0, 0], [1, hd / 2], [2, 1], [hd + 3, hd + hd / 2 + 1]]) {
      for (let c = 0; c < H; c++) assert.equal(k.w[to * H + c], roundF16(hfK[from * H + c]));
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("Q4 GGUF: routed experts Q4_0, other matrices Q8_0, norms F32", async () => {
  const shape = await readMixtralShape(SHAKESPEARE);
  const types = new Map(ggufTensors(shape, "q4").map((s) => [s.tensor.name, s.tensor.type]));
  assert.equal(types.get("blk.0.ffn_up_exps.weight"), "Q4_0");
  assert.equal(types.get("blk.0.attn_q.weight"), "Q8_0");
  assert.equal(types.get("output.weight"), "Q8_0");
  assert.equal(types.get("blk.0.ffn_norm.weight"), "F32");
  assert.equal(types.get("blk.0.ffn_gate_inp.weight"), "F32");
});
