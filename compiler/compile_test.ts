import assert from "node:assert/strict";
import { loadCheckpoint } from "./checkpoint/mod.ts";
import { compileModel } from "./compile.ts";
import { maxVariance } from "./passes/mod.ts";

const DIR = new URL("../testdata/shakespeare-moe", import.meta.url).pathname;

Deno.test("compile: MaxVar taken while streaming equals the up-front pass and a direct computation", async () => {
  const ir = await loadCheckpoint(DIR);
  const init = await loadCheckpoint(`${DIR}/init`);
  const dir = await Deno.makeTempDir({ prefix: "moeq-compile-" });
  try {
    const paper = await compileModel(ir, `${dir}/p.moeq`, {
      expertBits: 2.5,
      allocator: "paper",
      init,
    });
    const uniform = await compileModel(ir, `${dir}/u.moeq`, {
      expertBits: 3,
      allocator: "uniform",
    });
    assert.equal(paper.allocation!.achievedAverage, 2.5);
    assert.equal(paper.experts.length, 32);
    for (const [i, row] of paper.experts.entries()) {
      const e = ir.layers[row.layer].ffn;
      assert.ok(e.kind === "moe");
      const gate = e.experts[row.expert].gate;
      const want = maxVariance(await gate.read(), gate.shape[0], gate.shape[1]);
      assert.equal(row.scores.maxVar, want, `paper ${row.layer}/${row.expert}`);
      assert.equal(uniform.experts[i].scores.maxVar, want, `uniform ${row.layer}/${row.expert}`);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
