/**
 * gpt-oss's sliding window and sinks on WebGPU against the float64 reference (gpt_oss-a: layer 0
 * has a window of 4, layer 1 full attention, both with sinks): prefill in chunks that cut
 * across windows, a KV-cached greedy decode running 7× past the window, and decoding across
 * context shifts, token for token, in both kernel styles.
 */
import assert from "node:assert/strict";
import { loadCheckpoint } from "../compiler/checkpoint/mod.ts";
import { forward, prepareReference } from "../compiler/reference/mod.ts";
import { loadModel } from "../runtime/mod.ts";
import {
  collect,
  emitTemp,
  referenceGreedy,
  referenceShiftGreedy,
  relErr,
} from "./engine_helpers.ts";

const DIR = "testdata/hf-oracle/gpt_oss-a";
const ir = await loadCheckpoint(DIR);
const model = await prepareReference(ir);
const prompt: number[] = JSON.parse(await Deno.readTextFile(`${DIR}/reference.json`))
  .greedy_decode.prompt_ids;

for (const kernels of ["tiled", "classic"] as const) {
  Deno.test(`engine gpt_oss (${kernels}): windowed prefill in chunks, decode 7× past the window, context shifts`, async () => {
    const path = await emitTemp(ir);
    const engine = await loadModel(path, { kernels, prefillChunk: 4 });
    const shifting = await loadModel(path, { kernels, maxContext: 12, prefillChunk: 4 });
    try {
      // 22 positions in chunks of 4: most windows begin in an earlier chunk.
      const ids = [...prompt, 3, 60, 7, 21, 44, 9, 30, 12, 50, 1, 2, 33, 15, 27];
      const err = relErr(await engine.logits(ids), forward(model, ids));
      console.log(`  ${kernels}: prefill rel err ${err.toExponential(2)}`);
      assert.ok(err <= 1e-5, `prefill rel err ${err}`);

      const count = 20; // 8 + 20 positions: 7× the window of 4
      const want = referenceGreedy(model, prompt, count);
      const got = await collect(engine.generate(prompt, { maxTokens: count, stopIds: [] }));
      assert.deepEqual(got, want);

      const shifted = referenceShiftGreedy(model, prompt, count, 12);
      assert.notDeepEqual(shifted, want, "the shifts change the ids");
      const gotShifted = await collect(
        shifting.generate(prompt, { maxTokens: count, stopIds: [] }),
      );
      assert.deepEqual(gotShifted, shifted);
    } finally {
      engine.dispose();
      shifting.dispose();
      await Deno.remove(path);
    }
  });
}
