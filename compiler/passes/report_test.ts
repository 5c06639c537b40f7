import assert from "node:assert/strict";
import { allocatePaper } from "./order_allocators.ts";
import { expertReport } from "./report.ts";

// An encoder MoE layer (stack layer 1) of 4 experts and a decoder MoE layer (stack layer 3) of 2.
const layers = [
  { stack: "encoder" as const, layer: 1, numExperts: 4 },
  { stack: "decoder" as const, layer: 3, numExperts: 2 },
];
const lambda = [[0.5, 0.1, 0.3, 0.2], [0.7, 0.6]];
const maxVar = [[1, 1, 1, 1], [1, 2]];

Deno.test("expertReport: one row per expert, named by stack and stack layer", () => {
  const a = allocatePaper({ lambda, maxVar }, 2.5);
  const rows = expertReport({
    layers,
    allocation: a,
    bytes: (m, e, bits) => 1000 * m + 100 * bits + e,
    scores: { lambda, maxVar },
    relError: [[0.1, 0.2, -1, 0.4], [0.5]],
  });
  assert.equal(rows.length, 6);
  assert.deepEqual(rows[1], {
    stack: "encoder",
    layer: 1,
    expert: 1,
    bits: 3,
    bytes: 301,
    rank: 0,
    relError: 0.2,
    scores: { lambda: 0.1, maxVar: 1 },
  });
  assert.deepEqual(
    rows.map((r) => [r.stack, r.layer, r.expert, r.bits, r.bytes]),
    [0, 1, 2, 3].map((e) => ["encoder", 1, e, a.bits[0][e], 100 * a.bits[0][e] + e]).concat(
      [0, 1].map((e) => ["decoder", 3, e, a.bits[1][e], 1000 + 100 * a.bits[1][e] + e]),
    ),
  );
  // Score columns keep their order; a missing relError entry is −1.
  assert.deepEqual(Object.keys(rows[4].scores), ["lambda", "maxVar"]);
  assert.equal(rows[4].relError, 0.5);
  assert.equal(rows[5].relError, -1);
  assert.equal(rows[2].relError, -1);
});

Deno.test("expertReport: float experts have no bits, rank or bytes", () => {
  const rows = expertReport({
    layers,
    allocation: null,
    bytes: () => {
      throw new Error("not called for float experts");
    },
    scores: { lambda },
  });
  assert.equal(rows.length, 6);
  for (const r of rows) {
    assert.deepEqual([r.bits, r.bytes, r.rank, r.relError], [0, 0, -1, -1]);
  }
  assert.equal(rows[5].scores.lambda, 0.6);
});
