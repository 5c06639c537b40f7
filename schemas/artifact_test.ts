import assert from "node:assert/strict";
import { join } from "node:path";
import {
  decodePreamble,
  decodeTensor,
  openArtifact,
  openArtifactBytes,
  PREAMBLE_SIZE,
  SEGMENT_ALIGN,
  segmentsOf,
} from "./artifact.ts";
import { fuzzArtifact } from "./artifact_fuzz.ts";
import { InputError, MoeqError, UnsupportedError } from "./errors.ts";
import {
  headerOf,
  seededValues,
  TINY_CONFIG,
  withHeader,
  withHeaderBytes,
  withPreamble,
  writeTinyArtifact,
} from "../compiler/emit/testing.ts";
import { quantizeMatrix } from "../compiler/quantize/mod.ts";
import { dequantize } from "./packing.ts";
import { roundF16 } from "./half.ts";

const dir = await Deno.makeTempDir();
const VALID = await writeTinyArtifact(join(dir, "tiny.moeq"));
globalThis.addEventListener("unload", () => Deno.removeSync(dir, { recursive: true }));

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
    assert.deepEqual(a.config, TINY_CONFIG);
    assert.equal(a.headerOffset, PREAMBLE_SIZE);
    assert.equal(a.tensors.length, 5);
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
    // Values: f32 exact, f16 = round-to-f16 of the source, q = dequantize of the same quantizer.
    assert.deepEqual(await a.readF32(a.tensorsByName.get("final_norm")!), seededValues(32, 2));
    const embed = await a.readF32(a.tensorsByName.get("embed")!);
    const src = seededValues(8 * 32, 1);
    for (let i = 0; i < src.length; i++) assert.equal(embed[i], roundF16(src[i]));
    const up = quantizeMatrix(seededValues(16 * 32, 5), 16, 32, {
      bits: 3,
      groupSize: 32,
      method: "rtn",
      scaleType: "f32",
    });
    assert.deepEqual(await a.readF32(a.tensorsByName.get("experts.1.up")!), dequantize(up));
    assert.equal(a.summary.numTensors, 5);
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

Deno.test("artifact: newer format version", async () => {
  await assertRejects(withPreamble(VALID, { version: 2 }), /unsupported artifact format version 2/);
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
  const t = a0.tensorsByName.get("experts.0.gate")!;
  const b = VALID.slice();
  b[t.quant!.scales.offset + 1] ^= 0x04;
  const a = await openArtifactBytes(b, "t.moeq"); // the header is intact: open succeeds
  await assert.rejects(() => a.readF32(t), /"experts.0.gate" scales: CRC32C mismatch/);
  await assert.rejects(() => a.verifyAll(), InputError);
  assert.ok((await a.readF32(a.tensorsByName.get("embed")!)).length === 256, "others still read");
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
    /tensor "embed" data: segment \[8589934592, \d+\) is outside the \d+-byte file/,
  );
  const c = withHeader(VALID, (h) => {
    h.tensors[1].data!.offset = VALID.length - (VALID.length % 256); // starts in, ends past EOF
  });
  await assertRejects(c, /tensor "final_norm" data: segment .* is outside/);
});

Deno.test("artifact: overlapping segments", async () => {
  const h0 = headerOf(VALID);
  const b = withHeader(VALID, (h) => {
    h.tensors[2].data!.offset = h0.tensors[0].data!.offset; // router onto embed
  });
  await assertRejects(b, /overlaps tensor "(embed|router)" data/);
});

Deno.test("artifact: segment overlapping the header", async () => {
  const b = withHeader(VALID, (h) => {
    h.tensors[1].data!.offset = 256; // inside the 4 KiB header region
  });
  await assertRejects(b, /tensor "final_norm" data: segment at 256 overlaps the header/);
});

Deno.test("artifact: misaligned segment", async () => {
  const b = withHeader(VALID, (h) => {
    h.tensors[1].data!.offset += 8;
  });
  await assertRejects(b, /tensor "final_norm" data: segment offset \d+ is not 256-byte aligned/);
});

Deno.test("artifact: segment size vs shape mismatch (float and quantized)", async () => {
  await assertRejects(
    withHeader(VALID, (h) => {
      h.tensors[0].shape = [8, 33];
    }),
    /tensor "embed": data segment is 512 bytes, shape \[8,33\] as f16 needs 528/,
  );
  await assertRejects(
    withHeader(VALID, (h) => {
      h.tensors[3].quant!.bits = 8;
    }),
    /tensor "experts.0.gate": codes segment is 256 bytes, shape \[16,32\] at 8 bits needs 512/,
  );
  await assertRejects(
    withHeader(VALID, (h) => {
      h.tensors[3].quant!.groupSize = 48;
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
  const d = h.tensors[1].data!; // final_norm: 128 bytes, then padding to 256
  const b = VALID.slice();
  b[d.offset + d.length + 3] = 1;
  const a = await openArtifactBytes(b);
  await assert.rejects(() => a.verifyAll(), /non-zero padding byte at offset/);
});

Deno.test("artifact: unknown family is UnsupportedError, bad layer kinds InputError", async () => {
  await assertRejects(
    withHeader(VALID, (h) => {
      h.config.family = "switch" as never;
    }),
    /unsupported model family "switch"/,
    UnsupportedError,
  );
  await assertRejects(
    withHeader(VALID, (h) => {
      h.config.layerKinds = ["moe", "moe"];
    }),
    /config.layer_kinds has 2 entries for 1 layers/,
  );
  await assertRejects(
    withHeader(VALID, (h) => {
      h.config.numKvHeads = 3;
    }),
    /numHeads 2 is not a multiple of numKvHeads 3/,
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
