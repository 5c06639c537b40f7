/**
 * The passes and allocators on the DeepSeek-style routers (sigmoid + selection bias + groups,
 * ERNIE's biased softmax, V2 softmax) and with shared experts and dense layers: Λ is the router
 * row norm (no init: the final norm), MaxVar reads the first expert matrix, frequency counts
 * every (token, slot) route of the calibration run, and `budget` meets its average.
 */
import assert from "node:assert/strict";
import { loadCheckpoint } from "./checkpoint/mod.ts";
import { compileModel } from "./compile.ts";
import { moeLayers } from "./ir.ts";

const ORACLE = new URL("../testdata/hf-oracle/", import.meta.url).pathname;
const IDS = Array.from({ length: 40 }, (_, i) => (i * 13 + 5) % 64);

for (const fixture of ["deepseek_v3-a", "glm4_moe-a", "ernie4_5_moe-a", "deepseek_v2-a"]) {
  Deno.test(`compile ${fixture}: Λ, MaxVar, frequency and budget on its router`, async () => {
    const ir = await loadCheckpoint(ORACLE + fixture);
    const dir = await Deno.makeTempDir({ prefix: "moeq-ds-" });
    try {
      const freq = await compileModel(ir, `${dir}/f.moeq`, {
        expertStorage: { kind: "bits", average: 3 },
        allocator: "frequency",
        calibrationIds: IDS,
      });
      const budget = await compileModel(ir, `${dir}/b.moeq`, {
        expertStorage: { kind: "bits", average: 2.5 },
        allocator: "budget",
        calibrationIds: IDS,
      });
      assert.equal(budget.allocation!.achievedAverage, 2.5);
      const layers = moeLayers(ir);
      for (const [m, layer] of layers.entries()) {
        const router = await layer.router.read();
        const E = layer.experts.length;
        const H = router.length / E;
        const rows = freq.experts.filter((r) => r.layer === layer.layer);
        assert.equal(rows.length, E);
        let routes = 0;
        for (const r of rows) {
          let norm = 0;
          for (let c = 0; c < H; c++) norm += router[r.expert * H + c] ** 2;
          assert.ok(Math.abs(r.scores.lambda - Math.sqrt(norm)) < 1e-9, `Λ ${m}/${r.expert}`);
          assert.ok(r.scores.maxVar > 0, "MaxVar");
          routes += r.scores.frequency;
        }
        assert.ok(Math.abs(routes - 1) < 1e-9, `layer ${layer.layer}: frequencies sum ${routes}`);
      }
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  });
}
