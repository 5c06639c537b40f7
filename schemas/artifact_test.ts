import assert from "node:assert/strict";
import { join } from "node:path";
import {
  decodePreamble,
  decodeTensor,
  encodeHeader,
  encodePreamble,
  FORMAT_VERSION,
  openArtifact,
  openArtifactBytes,
  PREAMBLE_SIZE,
  SEGMENT_ALIGN,
  segmentsOf,
} from "./artifact.ts";
import { fuzzArtifact } from "./artifact_fuzz.ts";
import { crc32c } from "./crc32c.ts";
import { InputError, MoeqError, UnsupportedError } from "./errors.ts";
import { TINY_MODEL } from "./example_specs.ts";
import { keyString } from "./tensors.ts";
import {
  headerOf,
  tinyArtifact,
  tinyContent,
  withHeader,
  withHeaderBytes,
  withPreamble,
} from "./testing.ts";
import { expectedTensors } from "./tensors.ts";
import { dequantize } from "./packing.ts";
import { roundF16 } from "./half.ts";

const dir = await Deno.makeTempDir();
const VALID = tinyArtifact();
await Deno.writeFile(join(dir, "tiny.moeq"), VALID);
globalThis.addEventListener("unload", () => Deno.removeSync(dir, { recursive: true }));
const EXPECTED = expectedTensors(TINY_MODEL);
/** The index of the tensor at this key string in the tiny artifact. */
const at = (key: string) => EXPECTED.findIndex((e) => keyString(e) === key);

/** Opens and fully verifies; the error it throws, or null. */
async function problem(bytes: Uint8Array): Promise<unknown> {
  try {
    const a = await openArtifactBytes(bytes, "t.moeq");
    try {
      await a.verifyAll();
    } finally {
      a.close();
    }
    return null;
  } catch (e) {
    return e;
  }
}

async function assertRejects(
  bytes: Uint8Array,
  pattern: RegExp,
  cls: abstract new (...args: never[]) => MoeqError = InputError,
) {
  const e = await problem(bytes);
  assert.ok(e instanceof cls, `expected ${cls.name} matching ${pattern}, got ${e}`);
  assert.match((e as Error).message, pattern);
  assert.ok(!(e as Error).message.includes("\n"), "message is one line");
}

Deno.test("artifact: the tiny artifact opens, verifies and reads back its values", async () => {
  const a = await openArtifact(join(dir, "tiny.moeq"));
  try {
    await a.verifyAll();
    assert.deepEqual(a.model, TINY_MODEL);
    assert.equal(a.version, 2);
    assert.equal(a.headerOffset, PREAMBLE_SIZE);
    assert.deepEqual(
      a.tensors.map((t) => [t.stack, t.layer, t.expert, t.role, t.shape]),
      EXPECTED.map((e) => [e.stack, e.layer, e.expert, e.role, e.shape]),
    );
    assert.deepEqual(a.options, { bits: "mixed" });
    assert.deepEqual(a.experts[0].scores, { freq: 0.7, sens: 1.5 });
    assert.equal(a.tokenizer.chatTemplate, "{{ messages }}");
    assert.equal(
      new TextDecoder().decode((await a.readTokenizerJson())!),
      '{"model":{"type":"BPE"}}',
    );
    for (const t of a.tensors) {
      for (const s of t.quant ? [t.quant.codes, t.quant.scales, t.quant.zeros] : [t.data!]) {
        assert.equal(s.offset % SEGMENT_ALIGN, 0);
      }
    }
    // Values: f32 and bf16 exact, f16 = round-to-f16 of the source, q = dequantize of the codes.
    let storages = "";
    for (const [i, e] of EXPECTED.entries()) {
      const t = a.tensorAt(e)!;
      assert.equal(t, a.tensors[i]);
      const c = tinyContent(e, i);
      storages += ` ${c.storage}`;
      const got = await a.readF32(t);
      if (c.storage === "q") assert.deepEqual(got, dequantize(c.tensor));
      else if (c.storage === "f16") assert.deepEqual(got, c.values.map(roundF16));
      else assert.deepEqual(got, c.values);
    }
    for (const s of ["f32", "f16", "bf16", "q"]) assert.ok(storages.includes(` ${s}`), s);
    assert.equal(a.summary.numTensors, EXPECTED.length);
    assert.equal(a.summary.avgExpertBits, 3.5);
  } finally {
    a.close();
  }
});

Deno.test("artifact: decodeTensor turns segment bytes into the same values as readF32", async () => {
  const a = await openArtifactBytes(VALID);
  for (const t of a.tensors) {
    const parts = await Promise.all(segmentsOf(t).map((s) => a.read(s)));
    assert.deepEqual(decodeTensor(t, parts), await a.readF32(t), t.name);
    const short = parts.map((p, i) => (i === 0 ? p.subarray(4) : p));
    assert.throws(() => decodeTensor(t, short), InputError);
  }
});

Deno.test("artifact: wrong magic", async () => {
  const b = VALID.slice();
  b.set(new TextEncoder().encode("GGUF"), 0);
  await assertRejects(b, /not a moeq artifact: magic is "GGUF"/);
});

Deno.test("artifact: newer format version; version 1 says to recompile", async () => {
  await assertRejects(withPreamble(VALID, { version: 3 }), /unsupported artifact format version 3/);
  await assertRejects(
    withPreamble(VALID, { version: 1 }),
    /format version 1 is no longer read .*: recompile the checkpoint with this moeq/,
  );
});

Deno.test("artifact: header CRC mismatch", async () => {
  const pre = decodePreamble(VALID, "t");
  const b = VALID.slice();
  b[pre.headerOffset + 100] ^= 0x10;
  await assertRejects(b, /header CRC32C mismatch/);
});

Deno.test("artifact: every single-byte flip anywhere in the file is detected", async () => {
  let detected = 0;
  for (let at = 0; at < VALID.length; at++) {
    for (const mask of [0x01, 0x80]) {
      const b = VALID.slice();
      b[at] ^= mask;
      const e = await problem(b);
      assert.ok(
        e instanceof MoeqError,
        `flip 0x${mask.toString(16)} at byte ${at} went unnoticed (${e})`,
      );
      detected++;
    }
  }
  assert.equal(detected, 2 * VALID.length);
});

Deno.test("artifact: segment CRC mismatch is reported by read() naming the tensor", async () => {
  const a0 = await openArtifactBytes(VALID);
  const t = a0.tensors[at("decoder/0/0/expert_gate")];
  const b = VALID.slice();
  b[t.quant!.scales.offset + 1] ^= 0x04;
  const a = await openArtifactBytes(b, "t.moeq"); // the header is intact: open succeeds
  await assert.rejects(
    () => a.readF32(t),
    /"decoder\/0\/0\/expert_gate" scales: CRC32C mismatch/,
  );
  await assert.rejects(() => a.verifyAll(), InputError);
  assert.ok((await a.readF32(a.tensors[0])).length === 256, "others still read");
});

Deno.test("artifact: truncated at several points", async () => {
  const pre = decodePreamble(VALID, "t");
  for (const n of [0, 3, 10, 63]) await assertRejects(VALID.slice(0, n), /truncated artifact/);
  for (const n of [64, 100, pre.headerOffset + pre.headerLength, VALID.length - 1]) {
    await assertRejects(VALID.slice(0, n), /truncated artifact: \d+ bytes, the preamble says/);
  }
});

Deno.test("artifact: trailing bytes beyond the recorded length", async () => {
  const b = new Uint8Array(VALID.length + 5);
  b.set(VALID);
  await assertRejects(b, /5 trailing bytes/);
});

Deno.test("artifact: header outside the file", async () => {
  const pre = decodePreamble(VALID, "t");
  await assertRejects(
    withPreamble(VALID, { headerLength: pre.fileLength }),
    /header \[64, \d+\) is not inside/,
  );
  await assertRejects(withPreamble(VALID, { headerOffset: 2 ** 40 }), /is not inside/);
});

Deno.test("artifact: segment offset past EOF", async () => {
  const b = withHeader(VALID, (h) => {
    h.tensors[0].data!.offset = 2 ** 33; // > 4 GiB, past the few-KiB file
  });
  await assertRejects(
    b,
    /tensor "decoder\/-1\/-1\/embed" data: segment \[8589934592, \d+\) is outside the \d+-byte/,
  );
  const c = withHeader(VALID, (h) => {
    h.tensors[1].data!.offset = VALID.length - (VALID.length % 256); // starts in, ends past EOF
  });
  await assertRejects(c, /tensor "decoder\/0\/-1\/attn_norm" data: segment .* is outside/);
});

Deno.test("artifact: overlapping segments", async () => {
  const h0 = headerOf(VALID);
  const b = withHeader(VALID, (h) => {
    h.tensors[2].data!.offset = h0.tensors[0].data!.offset; // attn_q onto embed
  });
  await assertRejects(b, /overlaps tensor "decoder\/(-1\/-1\/embed|0\/-1\/attn_q)" data/);
});

Deno.test("artifact: segment overlapping the header", async () => {
  const b = withHeader(VALID, (h) => {
    h.tensors[1].data!.offset = 256; // inside the 4 KiB header region
  });
  await assertRejects(
    b,
    /tensor "decoder\/0\/-1\/attn_norm" data: segment at 256 overlaps the header/,
  );
});

Deno.test("artifact: misaligned segment", async () => {
  const b = withHeader(VALID, (h) => {
    h.tensors[1].data!.offset += 8;
  });
  await assertRejects(
    b,
    /"decoder\/0\/-1\/attn_norm" data: segment offset \d+ is not 256-byte aligned/,
  );
});

Deno.test("artifact: segment size vs shape mismatch (float and quantized)", async () => {
  await assertRejects(
    withHeader(VALID, (h) => {
      h.tensors[0].data!.length = 8 * 33 * 2;
    }),
    /\(embed\): data segment is 528 bytes, shape \[8,32\] as f16 needs 512/,
  );
  const gate = at("decoder/0/0/expert_gate");
  await assertRejects(
    withHeader(VALID, (h) => {
      h.tensors[gate].quant!.bits = 8;
    }),
    /\(layer 0 expert 0 expert_gate\): codes segment is 512 bytes, shape \[32,32\] at 8 bits needs 1024/,
  );
  await assertRejects(
    withHeader(VALID, (h) => {
      h.tensors[gate].quant!.groupSize = 48;
    }),
    /group size 48 is not a multiple of 32/,
  );
});

Deno.test("artifact: header verifier rejects corrupted offsets (with valid checksums)", async () => {
  const pre = decodePreamble(VALID, "t");
  const header = VALID.slice(pre.headerOffset, pre.headerOffset + pre.headerLength);
  const dv = new DataView(header.buffer);
  const root = dv.getUint32(0, true);
  const vtable = root - dv.getInt32(root, true);
  const edits: [string, (d: DataView) => void][] = [
    ["root offset past the end", (d) => d.setUint32(0, header.length + 4, true)],
    ["root offset misaligned", (d) => d.setUint32(0, root + 1, true)],
    ["vtable pointer out of bounds", (d) => d.setInt32(root, -1_000_000, true)],
    ["vtable size odd", (d) => d.setUint16(vtable, 7, true)],
    ["vtable size huge", (d) => d.setUint16(vtable, 0xfffe, true)],
    ["table size too small for fields", (d) => d.setUint16(vtable + 2, 4, true)],
    ["field offset out of the table", (d) => d.setUint16(vtable + 4 + 2 * 2, 0xfff0, true)],
    ["file identifier", (d) => d.setUint32(4, 0x12345678, true)],
  ];
  // A string: the generator string's length set huge.
  const genField = dv.getUint16(vtable + 4, true);
  const genStr = root + genField + dv.getUint32(root + genField, true);
  edits.push(["string length huge", (d) => d.setUint32(genStr, 0x7fffffff, true)]);
  edits.push([
    "string terminator missing",
    (d) => d.setUint8(genStr + 4 + d.getUint32(genStr, true), 65),
  ]);
  for (const [what, edit] of edits) {
    const h = header.slice();
    edit(new DataView(h.buffer));
    await assertRejects(withHeaderBytes(VALID, h), /corrupt artifact header|file identifier/)
      .catch((e) => {
        throw new Error(`${what}: ${e.message}`);
      });
  }
});

Deno.test("artifact: non-zero padding between segments is detected by verifyAll", async () => {
  const h = headerOf(VALID);
  const d = h.tensors[1].data!; // attn_norm: 128 bytes, then padding to 256
  const b = VALID.slice();
  b[d.offset + d.length + 3] = 1;
  const a = await openArtifactBytes(b);
  await assert.rejects(() => a.verifyAll(), /non-zero padding byte at offset/);
});

Deno.test("artifact: the records must be exactly the tensors the model description implies", async () => {
  await assertRejects(
    withHeader(VALID, (h) => {
      h.tensors[0].shape = [8, 16];
      h.tensors[0].data!.length = 8 * 16 * 2;
    }),
    /"decoder\/-1\/-1\/embed" \(embed\): shape \[8,16\], the model description implies \[8,32\]/,
  );
  await assertRejects(
    withHeader(VALID, (h) => {
      h.tensors.splice(at("decoder/0/-1/router"), 1);
      h.summary.numTensors--;
      h.summary.totalBytes -= 2 * 32 * 2;
    }),
    /the model description implies layer 0 router \[2,32\], which the header lacks/,
  );
  await assertRejects(
    withHeader(VALID, (h) => {
      h.tensors[1].role = "attn_sinks";
    }),
    /\(layer 0 attn_sinks\) is not part of the model description/,
  );
  await assertRejects(
    withHeader(VALID, (h) => {
      h.tensors[1].stack = "encoder";
    }),
    /\(encoder layer 0 attn_norm\) is not part of the model description/,
  );
  await assertRejects(
    withHeader(VALID, (h) => {
      h.tensors[3].role = "attn_q";
    }),
    /"decoder\/0\/-1\/attn_k" \(layer 0 attn_q\) appears twice/,
  );
  await assertRejects(
    withHeader(VALID, (h) => {
      h.tensors[3].name = h.tensors[2].name;
    }),
    /\(layer 0 attn_k\): the name appears twice/,
  );
  await assertRejects(
    withHeader(VALID, (h) => {
      h.tensors[1] = {
        ...h.tensors[1],
        storage: "q",
        data: null,
        quant: { ...h.tensors[at("decoder/0/0/expert_gate")].quant! },
      };
    }),
    /\(layer 0 attn_norm\): a vector cannot be quantized/,
  );
});

Deno.test("artifact: the model description is checked; an unknown variant is UnsupportedError", async () => {
  const editModel = (edit: (m: Record<string, unknown>) => void) =>
    withHeader(VALID, (h) => {
      const m = structuredClone(h.model) as unknown as Record<string, unknown>;
      edit(m);
      h.model = m as never;
    });
  await assertRejects(
    editModel((m) => {
      (m.decoder as { layers: { blocks: { kind: string }[] }[] }).layers[0].blocks[1].kind =
        "mamba";
    }),
    /model\.decoder\.layers\[0\]\.blocks\[1\]\.kind is "mamba", a variant this moeq does not know/,
    UnsupportedError,
  );
  await assertRejects(
    editModel((m) => {
      (m.decoder as { layers: { blocks: { ffn: { topK: number } }[] }[] }).layers[0].blocks[1]
        .ffn.topK = 0;
    }),
    /model\.decoder\.layers\[0\]\.blocks\[1\]\.ffn\.topK is 0, must be an integer in 1\.\.2/,
  );
  await assertRejects(
    editModel((m) => {
      m.hiddenSize = 64;
    }),
    /shape \[8,32\], the model description implies \[8,64\]/,
  );
  await assertRejects(
    withHeader(VALID, (h) => {
      h.experts[1].expert = 2;
    }),
    /experts\[1\] \(decoder layer 0, expert 2\): the layer has 2 experts/,
  );
  await assertRejects(
    withHeader(VALID, (h) => {
      h.experts[1].layer = 1;
    }),
    /experts\[1\] \(decoder layer 1, expert 1\): that layer has no MoE block/,
  );
  await assertRejects(
    withHeader(VALID, (h) => {
      h.experts[1].expert = 0;
    }),
    /experts\[1\] .*: a second row for the same expert/,
  );
});

Deno.test("artifact: summary that disagrees with the tensors", async () => {
  await assertRejects(
    withHeader(VALID, (h) => {
      h.summary.totalBytes += 1;
    }),
    /summary.totalBytes is \d+, the tensors give \d+/,
  );
});

Deno.test("artifact: segment offsets beyond 4 GiB read back exactly (sparse file)", async () => {
  // The tiny artifact's segments moved 4.75 GiB further into a sparse file.
  const shift = 2 ** 32 + 3 * 2 ** 28;
  const h = headerOf(VALID);
  const moves: [number, number, number][] = []; // [old offset, new offset, length]
  const move = (s: { offset: number; length: number }) => {
    moves.push([s.offset, s.offset + shift, s.length]);
    s.offset += shift;
  };
  for (const t of h.tensors) segmentsOf(t).forEach(move);
  move(h.tokenizer.json!);
  const header = encodeHeader(h);
  const last = moves.at(-1)!;
  const fileLength = last[1] + last[2];
  const path = join(dir, "big.moeq");
  const f = await Deno.open(path, { write: true, create: true, truncate: true });
  try {
    await f.write(encodePreamble({
      version: FORMAT_VERSION,
      headerOffset: PREAMBLE_SIZE,
      headerLength: header.length,
      fileLength,
      headerCrc32c: crc32c(header),
    }));
    await f.write(header);
    for (const [from, to, length] of moves) {
      await f.seek(to, Deno.SeekMode.Start);
      await f.write(VALID.subarray(from, from + length));
    }
  } finally {
    f.close();
  }
  const small = await openArtifactBytes(VALID);
  const a = await openArtifact(path);
  try {
    assert.equal(a.fileLength, fileLength);
    assert.equal(a.tensors[0].data!.offset, small.tensors[0].data!.offset + shift);
    for (const [i, t] of a.tensors.entries()) {
      assert.deepEqual(await a.readF32(t), await small.readF32(small.tensors[i]));
    }
  } finally {
    a.close();
    await Deno.remove(path);
  }
});

Deno.test("artifact: missing file is an InputError naming it", async () => {
  await assert.rejects(
    () => openArtifact(join(dir, "nope.moeq")),
    /nope.moeq: no such artifact file/,
  );
});

Deno.test("artifact: fuzz 2000 seeded mutations: only MoeqErrors, bounded time", async () => {
  const t0 = performance.now();
  const r = await fuzzArtifact(VALID, { iterations: 2000, seed: 7, maxMsPerCase: 1000 });
  const total = Object.values(r.rejected).reduce((a, b) => a + b, 0);
  console.log(
    `fuzz: ${r.iterations} cases, rejected ${
      JSON.stringify(r.rejected)
    }, accepted ${r.accepted}, ` +
      `slowest ${r.maxMs.toFixed(1)} ms, total ${(performance.now() - t0).toFixed(0)} ms`,
  );
  assert.equal(total + r.accepted, 2000);
  assert.ok(total > 1500, "most mutations must be rejected");
});
