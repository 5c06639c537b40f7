import assert from "node:assert/strict";
import { MLA_LIKE, SWITCH_LIKE } from "./example_specs.ts";
import { decodeHeader, encodeHeader } from "./header.ts";
import { buildArtifact, headerOf, tinyArtifact } from "./testing.ts";

Deno.test("header: encoded size ignores segment values (placeholder sizing is exact)", () => {
  const h = headerOf(tinyArtifact());
  const size = encodeHeader(h).length;
  for (const t of h.tensors) {
    for (const s of t.quant ? [t.quant.codes, t.quant.scales, t.quant.zeros] : [t.data!]) {
      s.offset = 0;
      s.length = 0;
      s.crc32c = 0;
    }
  }
  h.tokenizer.json = { offset: 0, length: 0, crc32c: 0 };
  h.summary = { ...h.summary, totalBytes: 0, expertBytes: 0, avgExpertBits: 0 };
  assert.equal(encodeHeader(h).length, size);
});

Deno.test("header: encode → decode is the identity (encoder stack, report rows with stack)", () => {
  for (const spec of [SWITCH_LIKE, MLA_LIKE]) {
    const h = headerOf(buildArtifact(spec, {
      experts: [{
        stack: spec.encoder ? "encoder" : "decoder",
        layer: 1,
        expert: 3,
        bits: 2.5,
        bytes: 1234,
        rank: 0,
        relError: 0.25,
        scores: { lambda: -1.5, maxvar: 3 },
      }],
      chatTemplate: "{{x}}",
      options: { a: 1 },
    }));
    assert.deepEqual(decodeHeader(encodeHeader(h), "t"), h);
    assert.ok(h.tensors.some((t) => t.stack === (spec.encoder ? "encoder" : "decoder")));
  }
});

Deno.test("header: MXFP4 records (e8m0 scales, no zeros) round trip; bad layouts are refused", async () => {
  const { TINY_MODEL } = await import("./example_specs.ts");
  const { randomQuantized } = await import("./testing.ts");
  const { openArtifactBytes } = await import("./artifact.ts");
  const { dequantize, E2M1_VALUES, codeAt } = await import("./packing.ts");
  const mx = { bits: 4 as const, groupSize: 32, scaleType: "e8m0" as const };
  const bytes = buildArtifact(TINY_MODEL, {
    content: (t, i) =>
      t.expertMatrix
        ? {
          storage: "q",
          tensor: randomQuantized(t.shape[0], t.shape[1], mx, i + 1),
          quantizer: "x",
        }
        : { storage: "f32", values: new Float32Array(t.shape.reduce((a, b) => a * b, 1)) },
  });
  const a = await openArtifactBytes(bytes, "mx.moeq");
  const h = headerOf(bytes);
  assert.deepEqual(decodeHeader(encodeHeader(h), "t"), h);
  const t = a.tensors.find((r) => r.quant)!;
  assert.equal(t.quant!.zeros.length, 0);
  assert.equal(t.quant!.scales.length, t.shape[0] * Math.ceil(t.shape[1] / 32));
  assert.equal(h.summary.avgExpertBits, 4.25);
  const q = await a.readQuantized(t);
  const v = dequantize(q);
  const cols = t.shape[1];
  for (const [r, c] of [[0, 0], [1, 33], [t.shape[0] - 1, cols - 1]]) {
    const s = q.scales[r * Math.ceil(cols / 32) + (c >> 5)];
    assert.equal(v[r * cols + c], E2M1_VALUES[codeAt(q.codes, r, c, cols, 4)] * 2 ** (s - 127));
  }
  assert.deepEqual(await a.readF32(t), v);
  await a.verifyAll();
  for (
    const [field, value, msg] of [
      ["groupSize", 64, /MXFP4\) need 4 bits and group size 32/],
      ["bits", 3, /MXFP4\) need 4 bits and group size 32/],
    ] as const
  ) {
    const bad = headerOf(bytes);
    const r = bad.tensors.find((x) => x.quant)!;
    (r.quant as unknown as Record<string, number>)[field] = value;
    assert.throws(() => decodeHeader(encodeHeader(bad), "bad.moeq"), msg);
  }
  const bad = headerOf(bytes);
  bad.tensors.find((x) => x.quant)!.quant!.zeros.length = 8;
  assert.throws(() => decodeHeader(encodeHeader(bad), "bad.moeq"), /zeros segment is 8 bytes/);
});
