import assert from "node:assert/strict";
import { loadCheckpoint } from "./checkpoint/mod.ts";
import { compileModel } from "./compile.ts";
import { moeLayers } from "./ir.ts";
import { maxVariance } from "./passes/mod.ts";

const DIR = new URL("../testdata/shakespeare-moe", import.meta.url).pathname;

Deno.test("compile: MaxVar taken while streaming equals the up-front pass and a direct computation", async () => {
  const ir = await loadCheckpoint(DIR);
  const init = await loadCheckpoint(`${DIR}/init`);
  const dir = await Deno.makeTempDir({ prefix: "moeq-compile-" });
  try {
    const paper = await compileModel(ir, `${dir}/p.moeq`, {
      expertStorage: { kind: "bits", average: 2.5 },
      allocator: "paper",
      init,
    });
    const uniform = await compileModel(ir, `${dir}/u.moeq`, {
      expertStorage: { kind: "bits", average: 3 },
      allocator: "uniform",
    });
    assert.equal(paper.allocation!.achievedAverage, 2.5);
    assert.equal(paper.experts.length, 32);
    const layers = moeLayers(ir);
    for (const [i, row] of paper.experts.entries()) {
      const layer = layers.find((l) => l.stack === row.stack && l.layer === row.layer)!;
      const first = layer.experts[row.expert].matrices[0].weight;
      const want = maxVariance(await first.read(), first.shape[0], first.shape[1]);
      assert.equal(row.scores.maxVar, want, `paper ${row.layer}/${row.expert}`);
      assert.equal(uniform.experts[i].scores.maxVar, want, `uniform ${row.layer}/${row.expert}`);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
