import assert from "node:assert/strict";
import { join } from "node:path";
import {
  type GgufTensor,
  type GgufValue,
  readGgufHeader,
  tensorBytes,
  writeGguf,
} from "./format.ts";
import { decode, encode } from "./quant.ts";
import { mulberry32 } from "../../schemas/prng.ts";

Deno.test("a written GGUF header parses back: metadata, tensor infos, aligned offsets, data", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const metadata: [string, GgufValue][] = [
      ["general.architecture", { kind: "string", value: "llama" }],
      ["llama.block_count", { kind: "u32", value: 4 }],
      ["llama.rope.freq_base", { kind: "f32", value: 10000 }],
      ["tokenizer.ggml.add_bos_token", { kind: "bool", value: false }],
      ["big", { kind: "u64", value: 2 ** 40 + 3 }],
      ["neg", { kind: "i32", value: -7 }],
      ["tokenizer.ggml.tokens", { kind: "array", of: "string", values: ["a", "Ġb", "ü", ""] }],
      ["tokenizer.ggml.token_type", { kind: "array", of: "i32", values: [1, 3, 6, 1] }],
      ["tokenizer.ggml.merges", { kind: "array", of: "string", values: [] }],
    ];
    const tensors: GgufTensor[] = [
      { name: "a.norm", dims: [40], type: "F32" },
      { name: "b.f16", dims: [64, 3], type: "F16" },
      { name: "c.q8", dims: [96, 5], type: "Q8_0" },
      { name: "d.q4.exps", dims: [64, 3, 2], type: "Q4_0" },
    ];
    const r = mulberry32(9);
    const values = tensors.map((t) =>
      Float32Array.from({ length: t.dims.reduce((a, b) => a * b, 1) }, () => r() - 0.5)
    );
    const path = join(dir, "x.gguf");
    const size = await writeGguf(path, metadata, tensors, (t, i) => {
      return Promise.resolve(encode(t.type, values[i]));
    });
    const bytes = await Deno.readFile(path);
    assert.equal(bytes.length, size);
    const h = readGgufHeader(bytes, path);
    assert.equal(h.version, 3);
    assert.equal(h.alignment, 32);
    assert.equal(h.dataOffset % 32, 0);
    for (const [key, v] of metadata) {
      const want = v.kind === "array" ? v.values : v.value;
      assert.deepEqual(h.metadata.get(key), want, key);
    }
    assert.equal(h.tensors.length, tensors.length);
    for (const [i, t] of h.tensors.entries()) {
      assert.equal(t.name, tensors[i].name);
      assert.deepEqual(t.dims, tensors[i].dims);
      assert.equal(t.type, tensors[i].type);
      assert.equal(t.offset % 32, 0, `${t.name} offset aligned`);
      const n = values[i].length, start = h.dataOffset + t.offset;
      const got = decode(t.type, bytes.subarray(start, start + tensorBytes(t)), n);
      const want = decode(t.type, encode(t.type, values[i]), n);
      assert.deepEqual(got, want, t.name);
    }
    const last = h.tensors.at(-1)!;
    assert.equal(size, h.dataOffset + last.offset + tensorBytes(last));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("the GGUF reader names what is wrong with a bad file", () => {
  assert.throws(
    () => readGgufHeader(new Uint8Array(16), "x.gguf"),
    /x\.gguf.*bad magic|bad magic.*x\.gguf/,
  );
  const v2 = new Uint8Array([0x47, 0x47, 0x55, 0x46, 2, 0, 0, 0]);
  assert.throws(() => readGgufHeader(v2, "x.gguf"), /version 2/);
  const cut = new Uint8Array([0x47, 0x47, 0x55, 0x46, 3, 0, 0, 0, 1]);
  assert.throws(() => readGgufHeader(cut, "x.gguf"), /truncated/);
});

Deno.test("writeGguf rejects tensor data of the wrong size", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await assert.rejects(
      writeGguf(
        join(dir, "y.gguf"),
        [],
        [{ name: "t", dims: [32], type: "Q8_0" }],
        () => Promise.resolve(new Uint8Array(33)),
      ),
      /t: 33 bytes, expected 34/,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
