/**
 * Continuous batching of MLA models (engine option `parallel` on deepseek_v2/v3, whose slots
 * each own a region of every block's latent cache): on the hf-oracle fixtures, every stream of
 * a parallel-4 engine yields exactly the ids a one-slot engine yields for the same prompt and
 * options — concurrent calls (more than the slots), staggered arrivals, a cancellation, a
 * sampled stream beside greedy ones — and a stream whose context shifts (twice) while other
 * slots decode gives the float64 reference's ids under the engine's shift rule. The classic
 * (GPU-style) kernels batch too, on a synthetic DeepSeek-V3-like model with a q LoRA and
 * interleaved RoPE (no fixture has a q LoRA).
 */
import assert from "node:assert/strict";
import { loadCheckpoint } from "../compiler/checkpoint/mod.ts";
import { prepareReference } from "../compiler/reference/mod.ts";
import { MLA_LIKE } from "../schemas/example_specs.ts";
import { loadModel, type WebGpuEngine } from "../runtime/mod.ts";
import type { GenerateOptions } from "../runtime/api.ts";
import {
  collect,
  emitTemp,
  referenceShiftGreedy,
  relErr,
  seededSynthetic,
} from "./engine_helpers.ts";

const MAX_CONTEXT = 24; // small: long generations shift their context (keep 12)
const CHUNK = 4; // prompts take several prefill chunks, interleaved with the others' steps
const FIXTURES = ["deepseek_v2-a", "deepseek_v3-a"];

interface Case {
  prompt: number[];
  options: GenerateOptions;
}

/** Prompts over the fixtures' 64-id vocabulary (bos 1), of several lengths. */
const CASES: Case[] = [
  { prompt: [1, 5, 9, 13, 17, 21], options: { maxTokens: 30, stopIds: [] } }, // shifts twice
  { prompt: [1, 40, 33], options: { maxTokens: 9, stopIds: [], readbackEvery: 4 } },
  // 11-token prompt + 14: shifts once.
  { prompt: [1, 7, 7, 8, 50, 61, 12, 3, 44, 19, 27], options: { maxTokens: 14, stopIds: [] } },
  { prompt: [1, 60], options: { maxTokens: 17, temperature: 0.8, topK: 20, seed: 7 } },
  { prompt: [1, 25, 36, 47, 58, 11], options: { maxTokens: 12, stopIds: [], readbackEvery: 3 } },
];

for (const fixture of FIXTURES) {
  const dir = `testdata/hf-oracle/${fixture}`;
  const ir = await loadCheckpoint(dir);
  const path = await emitTemp(ir);
  const opts = { maxContext: MAX_CONTEXT, prefillChunk: CHUNK };
  let single: WebGpuEngine | undefined, multi: WebGpuEngine | undefined;
  /** The one-slot engine's ids per case (computed once). */
  const expected: number[][] = [];

  const engines = async (): Promise<{ single: WebGpuEngine; multi: WebGpuEngine }> => {
    single ??= await loadModel(path, opts);
    multi ??= await loadModel(path, { ...opts, parallel: 4 });
    if (expected.length === 0) {
      for (const c of CASES) expected.push(await collect(single.generate(c.prompt, c.options)));
    }
    return { single, multi };
  };

  Deno.test(`MLA batch (${fixture}): concurrent streams, more calls than slots, equal the one-slot engine`, async () => {
    const { multi } = await engines();
    assert.equal(multi.parallel, 4);
    const got = await Promise.all(CASES.map((c) => collect(multi.generate(c.prompt, c.options))));
    got.forEach((ids, i) => assert.deepEqual(ids, expected[i], `case ${i}`));
    assert.ok(expected[0].length === 30 && expected[2].length === 14, "the shift cases ran long");
  });

  Deno.test(`MLA batch (${fixture}): staggered arrivals and a cancellation mid-stream`, async () => {
    const { multi } = await engines();
    // Stream 0 runs alone for a while; the others arrive while it decodes.
    const first = multi.generate(CASES[0].prompt, CASES[0].options);
    const head: number[] = [];
    for (let i = 0; i < 8; i++) head.push((await first.next()).value as number);
    const results = [collect(first).then((rest) => [...head, ...rest])];
    // A stream cancelled by its signal after 4 ids: its ids so far are a prefix.
    const abort = new AbortController();
    const cancelled = (async () => {
      const ids: number[] = [];
      const options = { ...CASES[2].options, signal: abort.signal };
      for await (const id of multi.generate(CASES[2].prompt, options)) {
        ids.push(id);
        if (ids.length === 4) abort.abort();
      }
      return ids;
    })();
    results.push(collect(multi.generate(CASES[1].prompt, CASES[1].options)));
    // Later arrivals take the freed slot.
    await cancelled;
    results.push(collect(multi.generate(CASES[3].prompt, CASES[3].options)));
    results.push(collect(multi.generate(CASES[4].prompt, CASES[4].options)));
    const [a, b, c, d] = await Promise.all(results);
    assert.deepEqual(a, expected[0]);
    assert.deepEqual(b, expected[1]);
    assert.deepEqual(c, expected[3]);
    assert.deepEqual(d, expected[4]);
    assert.deepEqual(await cancelled, expected[2].slice(0, 4));
    // The cancelled stream's slot serves a new stream from scratch.
    assert.deepEqual(await collect(multi.generate(CASES[2].prompt, CASES[2].options)), expected[2]);
  });

  Deno.test(`MLA batch (${fixture}): a context shift in one slot beside running streams equals the reference`, async () => {
    const { single, multi } = await engines();
    try {
      const c = CASES[0];
      const want = referenceShiftGreedy(
        await prepareReference(ir),
        c.prompt,
        c.options.maxTokens!,
        MAX_CONTEXT,
      );
      assert.deepEqual(expected[0], want, "the one-slot engine's shifted stream");
      // The shifting stream arrives last, beside two streams that do not shift.
      const others = [1, 4].map((i) => collect(multi.generate(CASES[i].prompt, CASES[i].options)));
      const shifted = await collect(multi.generate(c.prompt, c.options));
      assert.deepEqual(shifted, want);
      assert.deepEqual(await Promise.all(others), [expected[1], expected[4]]);
      // Logits on the multi-slot engine (its Step-slot plans) equal the one-slot engine's.
      const ids = CASES[2].prompt;
      assert.equal(relErr(await multi.logits(ids), await single.logits(ids)), 0);
    } finally {
      single?.dispose();
      multi?.dispose();
      await Deno.remove(path);
    }
  });
}

Deno.test("MLA batch, classic kernels (synthetic q LoRA, interleaved RoPE): streams equal the one-slot engine", async () => {
  const path = await emitTemp(seededSynthetic(MLA_LIKE, 5));
  const opts = { maxContext: MAX_CONTEXT, prefillChunk: CHUNK, kernels: "classic" as const };
  const single = await loadModel(path, opts);
  const multi = await loadModel(path, { ...opts, parallel: 4 });
  try {
    // Ids over the 32-id vocabulary; the first stream shifts its context.
    const cases = CASES.slice(0, 4).map((c) => ({ ...c, prompt: c.prompt.map((id) => id % 32) }));
    const want = [];
    for (const c of cases) want.push(await collect(single.generate(c.prompt, c.options)));
    const got = await Promise.all(cases.map((c) => collect(multi.generate(c.prompt, c.options))));
    assert.deepEqual(got, want);
    assert.ok(new Set(want.flat()).size > 4, "the streams are not one repeated id");
  } finally {
    single.dispose();
    multi.dispose();
    await Deno.remove(path);
  }
});
