/**
 * The WebGPU engine against Hugging Face transformers: f32 artifacts of the oracle checkpoints
 * (testdata/hf-oracle: mixtral, qwen2_moe, qwen3_moe, olmoe and their packed-expert twins,
 * granitemoe, phimoe, gpt_oss, glm4_moe, ernie4_5_moe, deepseek_v2/v3 with their packed twins
 * (MLA over the latent cache); the older testdata/hf-moe fixtures) give logits within 1e-4 of
 * `hf_logits` and, decoding through `generate` (KV cache, GPU sampler, greedy), the reference's
 * greedy ids. Then the decode loop's contract: chunked prefill, one readback per `readbackEvery` tokens, stop ids, abort.
 */
import assert from "node:assert/strict";
import { loadModel, readbackCount } from "../runtime/mod.ts";
import { collect, compileF32, maxAbsErr } from "./engine_helpers.ts";

const ORACLE = [
  "mixtral-a",
  "mixtral-a-packed",
  "qwen2_moe-a",
  "qwen2_moe-a-packed",
  "qwen3_moe-a",
  "qwen3_moe-a-packed",
  "olmoe-a",
  "olmoe-a-packed",
  "granitemoe-a",
  "phimoe-a",
  "gpt_oss-a",
  "glm4_moe-a",
  "ernie4_5_moe-a",
  "deepseek_v2-a",
  "deepseek_v2-a-packed",
  "deepseek_v3-a",
  "deepseek_v3-a-packed",
].map((n) => `testdata/hf-oracle/${n}`);
const OLDER = ["mixtral-packed", "mixtral-classic", "qwen2-moe"].map((n) => `testdata/hf-moe/${n}`);

for (const dir of [...ORACLE, ...OLDER]) {
  Deno.test(`engine f32 ${dir}: logits within 1e-4 of hf_logits, greedy ids through generate`, async () => {
    const ref = JSON.parse(await Deno.readTextFile(`${dir}/reference.json`));
    const path = await compileF32(dir);
    const engine = await loadModel(path);
    try {
      const err = maxAbsErr(await engine.logits(ref.input_ids), ref.hf_logits);
      console.log(`${dir} (${engine.kernels}): max |gpu − hf| = ${err.toExponential(2)}`);
      assert.ok(err <= 1e-4, `max abs error ${err}`);
      const g = ref.greedy_decode;
      const prompt: number[] = g ? g.prompt_ids : ref.input_ids;
      const want: number[] = g ? g.generated_ids : ref.greedy_ids;
      const got = await collect(engine.generate(prompt, { maxTokens: want.length, stopIds: [] }));
      assert.deepEqual(got, want);
    } finally {
      engine.dispose();
      await Deno.remove(path);
    }
  });
}

Deno.test("engine decode loop: chunked prefill, one readback per readbackEvery tokens, stop ids, abort", async () => {
  const dir = "testdata/hf-moe/mixtral-packed";
  const path = await compileF32(dir);
  const engine = await loadModel(path, { prefillChunk: 2 });
  try {
    // A long prompt in chunks of 2 still matches the fixture's full logits.
    const ref = JSON.parse(await Deno.readTextFile(`${dir}/reference.json`));
    const err = maxAbsErr(await engine.logits(ref.input_ids), ref.hf_logits);
    assert.ok(err <= 1e-4, `chunked prefill max abs error ${err}`);

    const before = readbackCount();
    const all = await collect(
      engine.generate([1, 2, 3], { maxTokens: 24, readbackEvery: 8, stopIds: [] }),
    );
    assert.equal(all.length, 24);
    assert.equal(
      readbackCount() - before,
      4,
      "24 tokens at readbackEvery 8: the first id alone, then 7 + 8 + 8",
    );

    // Stop on a token: the stop id is yielded, overshoot discarded.
    const stopAt = all.findIndex((id, i) => all.indexOf(id) === i && i > 0);
    const stopId = all[stopAt];
    const stopped = await collect(engine.generate([1, 2, 3], { maxTokens: 24, stopIds: [stopId] }));
    assert.deepEqual(stopped, all.slice(0, all.indexOf(stopId) + 1));

    const ac = new AbortController();
    const some: number[] = [];
    for await (
      const id of engine.generate([1, 2, 3], { maxTokens: 24, signal: ac.signal, stopIds: [] })
    ) {
      some.push(id);
      if (some.length === 2) ac.abort();
    }
    assert.equal(some.length, 2);
  } finally {
    engine.dispose();
    await Deno.remove(path);
  }
});
