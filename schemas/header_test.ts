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
