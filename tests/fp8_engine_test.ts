/**
 * An FP8 checkpoint end to end: deepseek_v3-a re-encoded by the project's helper
 * (compiler/checkpoint/fp8_testing.ts: linear weights F8_E4M3 with 128×128 block scales) compiles
 * to an f32 artifact and to a mixed-precision quantized one, and runs on WebGPU: logits within
 * 1e-4 (f32) / 1e-3 relative (quantized) of the float64 reference on the same weights, greedy
 * ids equal; and the FP8 model stays close to the original (relative logit difference from hf_logits < 0.5: FP8 flips some routes of this random model).
 */
import assert from "node:assert/strict";
import { loadCheckpoint } from "../compiler/checkpoint/mod.ts";
import { writeFp8Fixture } from "../compiler/checkpoint/fp8_testing.ts";
import { artifactToIR } from "../compiler/emit/mod.ts";
import { forward, prepareReference } from "../compiler/reference/mod.ts";
import { createWebGpuEngine, loadModel, openArtifact } from "../runtime/mod.ts";
import {
  collect,
  compileF32,
  emitTemp,
  maxAbsErr,
  referenceGreedy,
  relErr,
} from "./engine_helpers.ts";

Deno.test("FP8 deepseek_v3-a: compiles (f32 and quantized) and runs on WebGPU", async () => {
  const dir = await Deno.makeTempDir();
  const fixture = "testdata/hf-oracle/deepseek_v3-a";
  const hf = JSON.parse(await Deno.readTextFile(`${fixture}/reference.json`));
  try {
    await writeFp8Fixture(fixture, dir);
    const ir = await loadCheckpoint(dir);
    const model = await prepareReference(ir);
    const ids: number[] = hf.input_ids;
    const want = forward(model, ids);
    // FP8 is coarse (3 mantissa bits) and this random model's routers are decisive, so some
    // routes flip: the encoded model is only roughly the original. Recorded, loosely bounded.
    const V = hf.hf_logits.length / ids.length;
    const hfRows = ids.map((_, t) => hf.hf_logits.slice(t * V, (t + 1) * V));
    const drift = relErr(want, hfRows);
    console.log(`FP8 vs original weights: rel logit diff ${drift.toExponential(2)}`);
    assert.ok(drift > 0 && drift < 0.5, `FP8 drift ${drift}`);

    const f32 = await compileF32(dir);
    const engine = await loadModel(f32);
    try {
      const err = maxAbsErr(await engine.logits(ids), want.flatMap((r) => [...r]));
      console.log(`FP8 f32 artifact on WebGPU: max |gpu − reference| ${err.toExponential(2)}`);
      assert.ok(err <= 1e-4, `f32 err ${err}`);
      const g = await collect(engine.generate(ids, { maxTokens: 4, stopIds: [] }));
      assert.deepEqual(g, referenceGreedy(model, ids, 4));
    } finally {
      engine.dispose();
      await Deno.remove(f32);
    }

    const q = await emitTemp(ir, {
      encode: (p) =>
        p.ref.shape.length === 2 && p.role !== "embed" && p.role !== "router"
          ? { storage: "q", bits: p.expert >= 0 ? 3 : 8, groupSize: 32, method: "rtn" }
          : { storage: "f32" },
    });
    const artifact = await openArtifact(q);
    const qEngine = await createWebGpuEngine(artifact);
    try {
      const qModel = await prepareReference(await artifactToIR(artifact));
      const err = relErr(await qEngine.logits(ids), forward(qModel, ids));
      console.log(`FP8 → q3/q8 artifact on WebGPU: rel err ${err.toExponential(2)}`);
      assert.ok(err <= 1e-3, `quantized rel err ${err}`);
    } finally {
      qEngine.dispose();
      artifact.close();
      await Deno.remove(q);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
