import assert from "node:assert/strict";
import { join } from "node:path";
import { inspectArtifact } from "./inspect.ts";
import { writeTinyArtifact } from "../compiler/emit/testing.ts";
import { packedByteSizes } from "../schemas/packing.ts";

Deno.test("inspect: JSON experts rows match the tensors and the report; text has the tables", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = join(dir, "t.moeq");
    await writeTinyArtifact(path);
    const j = JSON.parse(await inspectArtifact(path, { json: true }));
    // Expert 0: one 16x32 matrix at 4 bits, f16 scales; expert 1: 16x32 at 3 bits, f32 scales.
    const b0 = packedByteSizes({ rows: 16, cols: 32, bits: 4, groupSize: 32, scaleType: "f16" });
    const b1 = packedByteSizes({ rows: 16, cols: 32, bits: 3, groupSize: 32, scaleType: "f32" });
    assert.deepEqual(j.experts, [
      {
        layer: 0,
        expert: 0,
        bits: 4,
        bytes: b0.total,
        scores: { freq: 0.7, sens: 1.5 },
        rank: 0,
        rel_error: 0.05,
      },
      {
        layer: 0,
        expert: 1,
        bits: 3,
        bytes: b1.total,
        scores: { freq: 0.3, sens: 0.5 },
        rank: 1,
        rel_error: 0.1,
      },
    ]);
    assert.equal(j.config.family, "mixtral");
    assert.equal(j.tensors.length, 5);
    assert.equal(j.summary.expertBytes, b0.total + b1.total);
    const text = await inspectArtifact(path, { tensors: true });
    assert.match(text, /architecture: mixtral, 1 layers, hidden 32/);
    assert.match(text, /layer\s+expert\s+bits\s+bytes\s+rank\s+rel_error\s+freq\s+sens/);
    assert.match(text, /0\s+1\s+3\.00\s+\d+\s+1\s+0\.1000\s+0\.3000\s+0\.5000/);
    assert.match(text, /experts\.0\.gate\s+expert_gate\s+0\s+0\s+16x32\s+q4 rtn\s+32/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
