import assert from "node:assert/strict";
import { generateLong } from "./demo.ts";
import type { Engine, GenerateOptions } from "../runtime/api.ts";
import type { ModelConfig } from "../schemas/model.ts";

/**
 * A fake engine with a context of `context` tokens: like the WebGPU engine without context
 * shifting, it generates at most context − prompt tokens. Token i of a call is
 * (sum of the prompt + i) mod 251, or `eos` once `eosAfter` tokens have been generated in all.
 */
function fakeEngine(context: number, eos = 255, eosAfter = Infinity) {
  const calls: { prompt: number[]; opts: GenerateOptions }[] = [];
  let total = 0;
  const engine = {
    config: { maxPositions: context, eosTokenIds: [eos], vocabSize: 256 } as unknown as ModelConfig,
    logits: () => Promise.reject(new Error("unused")),
    async *generate(prompt: number[], opts: GenerateOptions = {}) {
      calls.push({ prompt: [...prompt], opts });
      const n = Math.min(opts.maxTokens ?? 64, context - prompt.length);
      const base = prompt.reduce((a, b) => a + b, 0);
      for (let i = 0; i < n; i++) {
        total++;
        yield total >= eosAfter ? eos : (base + i) % 251;
        if (total >= eosAfter) return;
        await Promise.resolve();
      }
    },
    dispose() {},
  } satisfies Engine;
  return { engine, calls };
}

async function collect(it: AsyncGenerator<number>): Promise<number[]> {
  const out: number[] = [];
  for await (const id of it) out.push(id);
  return out;
}

Deno.test("generateLong continues past the context with a half-context window", async () => {
  const { engine, calls } = fakeEngine(16);
  const prompt = [1, 2, 3, 4];
  const out = await collect(generateLong(engine, prompt, { maxTokens: 40, seed: 5 }));
  assert.equal(out.length, 40);
  // First call: 16 − 4 = 12 tokens; then windows of 8 tokens give 8 more each: 12 + 8·3 + 4.
  assert.deepEqual(calls.map((c) => c.prompt.length), [4, 8, 8, 8, 8]);
  assert.deepEqual(calls.map((c) => c.opts.seed), [5, 6, 7, 8, 9]);
  assert.deepEqual(calls.map((c) => c.opts.maxTokens), [40, 28, 20, 12, 4]);
  // Each window is the last 8 tokens of prompt + output so far.
  const all = [...prompt, ...out];
  let produced = 12;
  for (const c of calls.slice(1)) {
    assert.deepEqual(c.prompt, all.slice(prompt.length + produced - 8, prompt.length + produced));
    produced += 8;
  }
});

Deno.test("generateLong stops at EOS and does not restart", async () => {
  const { engine, calls } = fakeEngine(16, 255, 20);
  const out = await collect(generateLong(engine, [1, 2], { maxTokens: 100 }));
  assert.equal(out.length, 20);
  assert.equal(out[19], 255);
  assert.equal(calls.length, 2);
});

Deno.test("generateLong passes through when the engine needs no window", async () => {
  const { engine, calls } = fakeEngine(1000);
  const out = await collect(generateLong(engine, [7], { maxTokens: 50 }));
  assert.equal(out.length, 50);
  assert.equal(calls.length, 1);
});
