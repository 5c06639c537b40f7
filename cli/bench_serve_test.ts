import assert from "node:assert/strict";
import type { Engine, GenerateOptions } from "../runtime/api.ts";
import type { ModelSpec } from "../schemas/model.ts";
import { serve } from "../runtime/server.ts";
import { createTokenizer } from "../runtime/tokenizer.ts";
import { loadLevel, percentile } from "./bench_serve.ts";

const MODEL = {
  family: "mixtral",
  vocabSize: 256,
  maxPositions: 4096,
  encoder: null,
  eosTokenIds: [3],
} as unknown as ModelSpec;

/** Yields "a" forever (until maxTokens), 1 ms per id; `short` stops every request after 2. */
function fakeEngine(parallel: number, short = false): Engine {
  return {
    model: MODEL,
    parallel,
    logits: () => Promise.reject(new Error("not used")),
    async *generate(_ids: number[], opts: GenerateOptions = {}) {
      const n = short ? Math.min(2, opts.maxTokens ?? 64) : opts.maxTokens ?? 64;
      for (let i = 0; i < n; i++) {
        await new Promise((r) => setTimeout(r, 1));
        if (opts.signal?.aborted) return;
        yield 97;
      }
    },
    dispose() {},
  };
}

const tokenizer = createTokenizer(null, null, { bos: 2, eos: [3] });

Deno.test("percentile: nearest rank", () => {
  const v = [5, 1, 4, 2, 3, 10, 9, 8, 7, 6];
  assert.equal(percentile(v, 50), 5);
  assert.equal(percentile(v, 99), 10);
  assert.equal(percentile(v, 10), 1);
  assert.equal(percentile([7], 99), 7);
  assert.ok(Number.isNaN(percentile([], 50)));
});

Deno.test("loadLevel: tokens, rates and TTFT from a server; short answers and 429s are errors", async () => {
  const cases = [
    // 8 streams into 4 slots + a queue of 16: all served in full.
    { engine: fakeEngine(4), maxQueue: 16, errors: 0, tokens: 8 * 10 },
    // Answers shorter than max_tokens count as errors.
    { engine: fakeEngine(4, true), maxQueue: 16, errors: 8, tokens: 8 * 2 },
    // 1 slot + a queue of 1: 2 served, 6 refused with 429.
    { engine: fakeEngine(1), maxQueue: 1, errors: 6, tokens: 2 * 10 },
  ];
  for (const c of cases) {
    const server = serve(c.engine, tokenizer, {
      port: 0,
      onListen: () => {},
      maxQueue: c.maxQueue,
    });
    try {
      const r = await loadLevel(server.url, { streams: 8, requestsPerStream: 1, tokens: 10 });
      const what = `parallel ${c.engine.parallel}, queue ${c.maxQueue}`;
      assert.equal(r.streams, 8);
      assert.equal(r.requests, 8);
      assert.equal(r.errors, c.errors, what);
      assert.equal(r.tokens, c.tokens, what);
      assert.ok(Math.abs(r.aggregateTokS - r.tokens / r.wallS) < 1e-9);
      assert.ok(r.perStreamTokS.min <= r.perStreamTokS.mean);
      assert.ok(r.ttftMs.p50 > 0 && r.ttftMs.p50 <= r.ttftMs.p99);
    } finally {
      await server.shutdown();
    }
  }
});

Deno.test("loadLevel: a request that hangs is cut off and counted as an error", async () => {
  const stuck: Engine = {
    ...fakeEngine(1),
    async *generate(_ids: number[], opts: GenerateOptions = {}) {
      await new Promise<void>((resolve) => opts.signal?.addEventListener("abort", () => resolve()));
      yield* [];
    },
  };
  const server = serve(stuck, tokenizer, { port: 0, onListen: () => {} });
  try {
    const t0 = performance.now();
    const r = await loadLevel(server.url, {
      streams: 1,
      requestsPerStream: 1,
      tokens: 4,
      timeoutMs: 300,
    });
    assert.equal(r.errors, 1);
    assert.equal(r.tokens, 0);
    assert.ok(performance.now() - t0 < 5000);
  } finally {
    await server.shutdown();
  }
});
