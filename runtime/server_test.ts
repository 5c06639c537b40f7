import assert from "node:assert/strict";
import OpenAI from "openai";
import type { Engine, EngineStats, GenerateOptions } from "./api.ts";
import type { ModelSpec } from "../schemas/model.ts";
import {
  constantTimeEqual,
  formatRequestLog,
  isLoopbackHost,
  type RequestLog,
  serve,
  type ServeOptions,
  type Server,
} from "./server.ts";
import { createTokenizer } from "./tokenizer.ts";

/** A one-layer description: the server reads only the vocabulary, context and special ids. */
const MODEL: ModelSpec = {
  family: "mixtral",
  vocabSize: 256,
  hiddenSize: 8,
  maxPositions: 4096,
  embedScale: 1,
  encoder: null,
  decoder: {
    layers: [{
      blocks: [{
        kind: "ffn",
        norm: { kind: "rms", eps: 1e-5, bias: false },
        ffn: {
          kind: "dense",
          mlp: { intermediate: 8, activation: { kind: "swiglu" }, bias: false },
        },
      }],
      residualScale: 1,
    }],
    finalNorm: { kind: "rms", eps: 1e-5, bias: false },
  },
  head: { tied: false, scale: 1, bias: false },
  bosTokenId: 2,
  eosTokenIds: [3],
  decoderStartTokenId: null,
};

/**
 * A deterministic byte-level "model": the output is the UTF-8 of a phrase chosen by the seed and
 * the prompt length, repeated. Optional delay per token (or per readback batch of `batch` ids),
 * an optional gate that holds every generation before its first id, and engine slots honouring
 * the {@link Engine.parallel} contract (calls beyond them wait first come first served). Records
 * calls, options, aborts and concurrency.
 */
class FakeEngine implements Engine {
  readonly model = MODEL;
  parallel?: number;
  delayMs = 0;
  /** Ids per readback: with batch > 1, the engine waits batch × delayMs then yields batch ids. */
  batch = 1;
  gate: Promise<void> | null = null;
  calls = 0;
  aborts = 0;
  active = 0;
  maxActive = 0;
  /** Calls that had to wait inside the engine for a slot. */
  waitedInside = 0;
  options: GenerateOptions[] = [];
  #waiting: (() => void)[] = [];

  static phrase(seed: number, promptLength: number): Uint8Array {
    const words = ["héllo wörld", "中文 text", "emoji 😀 ok", "plain ascii"];
    return new TextEncoder().encode(`${words[(seed + promptLength) % 4]} #${seed % 1000} `);
  }

  /** The token ids generate() yields, computed without the server. */
  static expected(seed: number, promptLength: number, maxTokens: number): number[] {
    const phrase = FakeEngine.phrase(seed, promptLength);
    return Array.from({ length: maxTokens }, (_, i) => phrase[i % phrase.length]);
  }

  logits(): Promise<Float32Array[]> {
    return Promise.reject(new Error("not used"));
  }

  async *generate(promptIds: number[], options: GenerateOptions = {}): AsyncGenerator<number> {
    this.calls++;
    this.options.push(options);
    if (this.active >= (this.parallel ?? 1)) {
      this.waitedInside++;
      await new Promise<void>((resolve) => this.#waiting.push(resolve));
    }
    this.active++;
    this.maxActive = Math.max(this.maxActive, this.active);
    let finished = false;
    try {
      if (this.gate) {
        // Held until the gate opens or the request is cancelled (as the real engine would).
        const signal = options.signal;
        await Promise.race([
          this.gate,
          new Promise<void>((resolve) => {
            if (signal?.aborted) resolve();
            signal?.addEventListener("abort", () => resolve(), { once: true });
          }),
        ]);
      }
      const ids = FakeEngine.expected(options.seed ?? 0, promptIds.length, options.maxTokens ?? 64);
      for (const [i, id] of ids.entries()) {
        if (this.delayMs && i % this.batch === 0) {
          await new Promise((r) => setTimeout(r, this.delayMs * this.batch));
        }
        if (options.signal?.aborted) return;
        yield id;
        if (options.stopIds?.includes(id)) {
          finished = true;
          return;
        }
      }
      finished = true;
    } finally {
      // An abort ends the call either here (the signal seen between ids) or through the caller
      // closing the iterator after it saw the signal: both count.
      if (!finished && options.signal?.aborted) this.aborts++;
      this.active--;
      this.#waiting.shift()?.();
    }
  }

  dispose(): void {}
}

const tokenizer = createTokenizer(null, null, { bos: 2, eos: [3] });
const decodeAll = (ids: number[]) => tokenizer.decode(ids);

async function withServer(
  options: ServeOptions,
  body: (url: string, engine: FakeEngine, server: Server) => Promise<void>,
  tok = tokenizer,
  engine = new FakeEngine(),
): Promise<void> {
  const server = serve(engine, tok, { port: 0, onListen: () => {}, ...options });
  try {
    await body(server.url, engine, server);
  } finally {
    await server.shutdown();
    await server.finished;
  }
}

function post(url: string, body: unknown, init: RequestInit = {}): Promise<Response> {
  return fetch(url, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: typeof body === "string" ? body : JSON.stringify(body),
    ...init,
  });
}

/** Parses an SSE body; checks the framing and returns the JSON events (without [DONE]). */
function parseSse(text: string): Record<string, unknown>[] {
  assert.ok(text.endsWith("data: [DONE]\n\n"), "ends with [DONE]");
  const events = text.split("\n\n");
  assert.equal(events.pop(), "", "every event ends with a blank line");
  assert.equal(events.pop(), "data: [DONE]");
  return events.map((e) => {
    assert.ok(e.startsWith("data: ") && !e.includes("\n"), `framing of ${JSON.stringify(e)}`);
    return JSON.parse(e.slice(6));
  });
}

async function errorOf(
  response: Response,
): Promise<{ message: string; type: string; param: string }> {
  assert.match(response.headers.get("content-type") ?? "", /application\/json/);
  const body = await response.json();
  assert.equal(typeof body.error.message, "string");
  assert.equal(typeof body.error.type, "string");
  return body.error;
}

Deno.test("health, models, 404 and 405", async () => {
  await withServer({ modelName: "tiny" }, async (url) => {
    assert.deepEqual(await (await fetch(`${url}/health`)).json(), {
      status: "ok",
      active: 0,
      queued: 0,
      parallel: 1,
      max_queue: 16,
    });
    const models = await (await fetch(`${url}/v1/models`)).json();
    assert.equal(models.data[0].id, "tiny");
    const missing = await fetch(`${url}/v2/nothing`);
    assert.equal(missing.status, 404);
    await errorOf(missing);
    const wrong = await fetch(`${url}/v1/completions`);
    assert.equal(wrong.status, 405);
    assert.equal(wrong.headers.get("allow"), "POST");
    await errorOf(wrong);
  });
});

Deno.test("completion (JSON and SSE stream) returns the engine's text for the seed", async () => {
  await withServer({}, async (url, engine) => {
    const prompt = "To be";
    const expected = decodeAll(FakeEngine.expected(7, prompt.length, 40));
    assert.ok(expected.includes("😀") || expected.includes("é") || expected.includes("中"));

    const res = await post(`${url}/v1/completions`, { prompt, max_tokens: 40, seed: 7 });
    assert.equal(res.status, 200);
    const body = await res.json();
    assert.equal(body.object, "text_completion");
    assert.equal(body.choices[0].text, expected);
    assert.equal(body.choices[0].finish_reason, "length");
    assert.deepEqual(body.usage, { prompt_tokens: 5, completion_tokens: 40, total_tokens: 45 });

    const stream = await post(`${url}/v1/completions`, {
      prompt,
      max_tokens: 40,
      seed: 7,
      stream: true,
      stream_options: { include_usage: true },
    });
    assert.match(stream.headers.get("content-type") ?? "", /text\/event-stream/);
    const events = parseSse(await stream.text());
    type Choice = { text: string; finish_reason: string | null };
    const choices = events.flatMap((e) => e.choices as Choice[]);
    assert.equal(choices.map((c) => c.text).join(""), expected);
    for (const c of choices) assert.ok(!c.text.includes("\uFFFD"));
    assert.ok(choices.length > 5, "streamed in pieces");
    assert.equal(choices.at(-1)!.finish_reason, "length");
    assert.equal((events.at(-1)!.usage as { completion_tokens: number }).completion_tokens, 40);
    assert.equal(engine.calls, 2);
  });
});

Deno.test("chat completion streams deltas after a role chunk", async () => {
  await withServer({}, async (url) => {
    const messages = [{ role: "user", content: "hi" }];
    const promptLength = tokenizer.encode(tokenizer.applyChatTemplate(messages)).length;
    const expected = decodeAll(FakeEngine.expected(3, promptLength, 25));
    const res = await post(`${url}/v1/chat/completions`, {
      messages,
      max_tokens: 25,
      seed: 3,
      stream: true,
    });
    const events = parseSse(await res.text());
    type Choice = { delta: { role?: string; content?: string }; finish_reason: string | null };
    const choices = events.map((e) => (e.choices as Choice[])[0]);
    assert.equal(choices[0].delta.role, "assistant");
    assert.equal(choices.map((c) => c.delta.content ?? "").join(""), expected);
    assert.equal(choices.at(-1)!.finish_reason, "length");
    assert.equal(events[0].object, "chat.completion.chunk");

    const plain = await (await post(`${url}/v1/chat/completions`, {
      messages,
      max_completion_tokens: 25,
      seed: 3,
    })).json();
    assert.equal(plain.choices[0].message.content, expected);
    assert.equal(plain.object, "chat.completion");
  });
});

Deno.test("stop strings and stop ids end generation without leaking the stop text", async () => {
  await withServer({}, async (url) => {
    // seed 0, prompt "ab": phrase index 2 → "emoji 😀 ok #0 ".
    const full = decodeAll(FakeEngine.expected(0, 2, 30));
    assert.ok(full.startsWith("emoji 😀 ok"));
    for (const stream of [false, true]) {
      const res = await post(`${url}/v1/completions`, {
        prompt: "ab",
        max_tokens: 30,
        seed: 0,
        stop: ["xyz", "😀 o"],
        stream,
      });
      let text: string;
      let reason: string;
      if (stream) {
        const choices = parseSse(await res.text()).flatMap((e) =>
          e.choices as { text: string; finish_reason: string }[]
        );
        text = choices.map((c) => c.text).join("");
        reason = choices.at(-1)!.finish_reason;
      } else {
        const body = await res.json();
        [text, reason] = [body.choices[0].text, body.choices[0].finish_reason];
      }
      assert.equal(text, "emoji ");
      assert.equal(reason, "stop");
    }
    const byId = await (await post(`${url}/v1/completions`, {
      prompt: "ab",
      max_tokens: 30,
      seed: 0,
      stop: ["never", "j".charCodeAt(0)],
    })).json();
    assert.equal(byId.choices[0].text, "emo");
    assert.equal(byId.choices[0].finish_reason, "stop");
  });
});

Deno.test("malformed JSON, wrong types and bad values give 400 JSON errors", async () => {
  await withServer({ maxTokensLimit: 100 }, async (url) => {
    const completions = `${url}/v1/completions`;
    const malformed = await post(completions, '{"prompt": "hi",');
    assert.equal(malformed.status, 400);
    assert.match((await errorOf(malformed)).message, /JSON/);

    const cases: [unknown, string][] = [
      [[1, 2], "body"],
      [{ prompt: 5 }, "prompt"],
      [{ prompt: "hi", max_tokens: "10" }, "max_tokens"],
      [{ prompt: "hi", max_tokens: -1 }, "max_tokens"],
      [{ prompt: "hi", max_tokens: 101 }, "max_tokens"],
      [{ prompt: "hi", max_tokens: 1.5 }, "max_tokens"],
      [{ prompt: "hi", temperature: "hot" }, "temperature"],
      [{ prompt: "hi", top_p: 2 }, "top_p"],
      [{ prompt: "hi", top_k: -3 }, "top_k"],
      [{ prompt: "hi", seed: "x" }, "seed"],
      [{ prompt: "hi", stream: "yes" }, "stream"],
      [{ prompt: "hi", stop: 5 }, "stop"],
      [{ prompt: "hi", stop: [{}] }, "stop"],
      [{ prompt: [1, 999] }, "prompt"],
      [{ prompt: "hi", n: 3 }, "n"],
      [{ prompt: "hi", model: 4 }, "model"],
      [{ prompt: "hi", messages: [] }, "messages"],
    ];
    for (const [body, param] of cases) {
      const res = await post(completions, body);
      assert.equal(res.status, 400, JSON.stringify(body));
      const error = await errorOf(res);
      assert.equal(error.type, "invalid_request_error");
      if (param !== "body") assert.equal(error.param, param, JSON.stringify(body));
    }
    for (const messages of ["hi", [], [{ role: 1, content: "x" }], [{ role: "user" }]]) {
      const res = await post(`${url}/v1/chat/completions`, { messages });
      assert.equal(res.status, 400);
      assert.equal((await errorOf(res)).param, "messages");
    }
    // Unknown fields are ignored; token-id prompts work.
    const ok = await post(completions, { prompt: [104, 105], max_tokens: 3, foo: { bar: 1 } });
    assert.equal(ok.status, 200);
    assert.equal((await ok.json()).choices[0].text.length > 0, true);
    // An empty prompt starts from BOS when the model has one...
    const empty = await post(completions, { prompt: "", max_tokens: 2 });
    assert.equal((await empty.json()).usage.prompt_tokens, 1);
  });
  // ...and is an error when it has none.
  const noBos = createTokenizer(null, null, { bos: null, eos: [] });
  await withServer({}, async (url) => {
    const res = await post(`${url}/v1/completions`, { prompt: "" });
    assert.equal(res.status, 400);
    assert.equal((await errorOf(res)).param, "prompt");
  }, noBos);
});

Deno.test("a 10 MB prompt is rejected quickly; a long prompt over the token limit gets 400", async () => {
  await withServer({ maxPromptTokens: 100, maxBodyBytes: 1 << 20 }, async (url, engine) => {
    const t0 = performance.now();
    const big = await post(`${url}/v1/completions`, { prompt: "x".repeat(10 << 20) }).catch(
      (e) => e as Error,
    );
    const ms = performance.now() - t0;
    console.log(
      `  10 MB prompt: ${big instanceof Response ? big.status : big} in ${ms.toFixed(0)} ms`,
    );
    if (big instanceof Response) {
      assert.equal(big.status, 413);
      await errorOf(big);
    } // else: the server closed the upload early, which is also a quick rejection.
    assert.ok(ms < 5000, `took ${ms} ms`);

    // Chunked upload (no content-length) of 10 MB.
    const chunk = new TextEncoder().encode("y".repeat(1 << 20));
    let sent = 0;
    const stream = new ReadableStream<Uint8Array>({
      pull(controller) {
        if (sent++ < 10) controller.enqueue(chunk);
        else controller.close();
      },
    });
    const chunked = await post(`${url}/v1/completions`, "", { body: stream }).catch(
      (e) => e as Error,
    );
    if (chunked instanceof Response) {
      assert.equal(chunked.status, 413);
      await chunked.body?.cancel();
    }

    const long = await post(`${url}/v1/completions`, { prompt: "z".repeat(500) });
    assert.equal(long.status, 400);
    assert.match((await errorOf(long)).message, /500 tokens, the limit is 100/);
    assert.equal(engine.calls, 0);
    // Still serving.
    const ok = await post(`${url}/v1/completions`, { prompt: "hi", max_tokens: 2 });
    assert.equal(ok.status, 200);
    await ok.body?.cancel();
  });
});

Deno.test("50 concurrent requests: one at a time, bounded queue answers 429, then keeps serving", async () => {
  await withServer({ maxQueue: 4 }, async (url, engine) => {
    engine.delayMs = 2;
    const responses = await Promise.all(
      Array.from(
        { length: 50 },
        (_, i) =>
          post(`${url}/v1/completions`, {
            prompt: "p",
            max_tokens: 8,
            seed: i,
            stream: i % 2 === 0,
          }),
      ),
    );
    const statuses = responses.map((r) => r.status);
    for (const r of responses) {
      if (r.status === 200) {
        const text = await r.text();
        assert.ok(text.length > 0);
      } else await errorOf(r);
    }
    const ok = statuses.filter((s) => s === 200).length;
    const busy = statuses.filter((s) => s === 429).length;
    assert.equal(ok + busy, 50, `statuses ${statuses}`);
    assert.ok(busy > 0, "some requests were refused");
    assert.ok(ok >= 5, `${ok} served (1 running + 4 queued at least)`);
    assert.equal(engine.maxActive, 1, "the engine ran one request at a time");
    console.log(`  50 concurrent, queue 4: ${ok} served, ${busy} got 429`);

    const after = await post(`${url}/v1/completions`, { prompt: "p", max_tokens: 4, seed: 1 });
    assert.equal(after.status, 200);
    await after.body?.cancel();
  });
});

Deno.test("client disconnect cancels generation (streaming and queued)", async () => {
  await withServer({}, async (url, engine) => {
    engine.delayMs = 10;
    const controller = new AbortController();
    const res = await post(
      `${url}/v1/completions`,
      { prompt: "p", max_tokens: 1000, seed: 1, stream: true },
      { signal: controller.signal },
    );
    const reader = res.body!.getReader();
    await reader.read(); // first chunk arrived: generation is running
    // A second request waits in the queue behind it; its client gives up too.
    const queuedAbort = new AbortController();
    const queued = post(`${url}/v1/completions`, { prompt: "q", max_tokens: 5 }, {
      signal: queuedAbort.signal,
    }).catch((e) => e);
    await new Promise((r) => setTimeout(r, 50));
    queuedAbort.abort();
    assert.ok((await queued) instanceof Error);
    controller.abort();
    await reader.cancel().catch(() => {});
    const t0 = performance.now();
    while (engine.active > 0 && performance.now() - t0 < 3000) {
      await new Promise((r) => setTimeout(r, 10));
    }
    assert.equal(engine.active, 0, "generation stopped");
    assert.equal(engine.aborts, 1, "the engine saw the abort");
    assert.equal(engine.calls, 1, "the queued request never reached the engine");
    // A non-streaming request whose client leaves mid-generation.
    const plainAbort = new AbortController();
    const plain = post(`${url}/v1/completions`, { prompt: "p", max_tokens: 1000 }, {
      signal: plainAbort.signal,
    }).catch((e) => e);
    while (engine.calls < 2) await new Promise((r) => setTimeout(r, 5));
    plainAbort.abort();
    assert.ok((await plain) instanceof Error);
    while (engine.active > 0 && performance.now() - t0 < 3000) {
      await new Promise((r) => setTimeout(r, 10));
    }
    assert.equal(engine.aborts, 2, "the engine saw the second abort");
    engine.delayMs = 0;
    const ok = await post(`${url}/v1/completions`, { prompt: "p", max_tokens: 3 });
    assert.equal(ok.status, 200);
    await ok.body?.cancel();
  });
});

Deno.test("the options signal shuts the server down", async () => {
  const controller = new AbortController();
  const server = serve(new FakeEngine(), tokenizer, {
    port: 0,
    signal: controller.signal,
    onListen: () => {},
  });
  const res = await fetch(`${server.url}/health`);
  assert.equal(res.status, 200);
  await res.body?.cancel();
  controller.abort();
  await server.finished;
});

/** Polls `condition` every 5 ms until it holds (fails after 5 s). */
async function until(condition: () => boolean, what: string): Promise<void> {
  const t0 = performance.now();
  while (!condition()) {
    if (performance.now() - t0 > 5000) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

/** A promise with its resolver, for gating the fake engine. */
function gate(): { promise: Promise<void>; open: () => void } {
  let open!: () => void;
  const promise = new Promise<void>((resolve) => (open = resolve));
  return { promise, open };
}

async function health(url: string): Promise<{ active: number; queued: number; parallel: number }> {
  return await (await fetch(`${url}/health`)).json();
}

/** A fake engine with {@link Engine.stats}: its own counts, plus scripted waiting/prefilling. */
class StatsEngine extends FakeEngine {
  extraWaiting = 0;
  prefilling = 0;
  stats(): EngineStats {
    return {
      slots: this.parallel ?? 1,
      active: this.active,
      waiting: this.extraWaiting,
      prefilling: this.prefilling,
    };
  }
}

Deno.test("health: active and queued come from the engine's stats when it has them", async () => {
  const engine = new StatsEngine();
  engine.parallel = 2;
  const held = gate();
  engine.gate = held.promise;
  await withServer(
    { parallel: 2, maxQueue: 4 },
    async (url, _engine, server) => {
      const empty = await (await fetch(`${url}/health`)).json();
      assert.deepEqual(empty, {
        status: "ok",
        active: 0,
        queued: 0,
        parallel: 2,
        max_queue: 4,
        engine: { slots: 2, active: 0, waiting: 0, prefilling: 0 },
      });
      const pending = Array.from(
        { length: 3 },
        (_, i) => post(`${url}/v1/completions`, { prompt: "p", max_tokens: 3, seed: i }),
      );
      await until(() => engine.active === 2 && server.load().queued === 1, "2 active, 1 queued");
      // The engine says one of its slots is still prefilling and that one call (say a library
      // caller beside the server) waits inside it: /health reports the engine's numbers.
      engine.prefilling = 1;
      engine.extraWaiting = 1;
      const busy = await (await fetch(`${url}/health`)).json();
      assert.equal(busy.active, 2);
      assert.equal(busy.queued, 2, "the server's queue plus the calls waiting in the engine");
      assert.deepEqual(busy.engine, { slots: 2, active: 2, waiting: 1, prefilling: 1 });
      engine.extraWaiting = 0;
      engine.prefilling = 0;
      held.open();
      for (const r of await Promise.all(pending)) assert.equal(r.status, 200);
      const idle = await (await fetch(`${url}/health`)).json();
      assert.deepEqual([idle.active, idle.queued], [0, 0]);
    },
    tokenizer,
    engine,
  );
});

Deno.test("parallel: N generate at once, the queue holds maxQueue more, 429 beyond; all finish", async () => {
  const engine = new FakeEngine();
  engine.parallel = 4;
  const held = gate();
  engine.gate = held.promise;
  await withServer(
    { parallel: 4, maxQueue: 3 },
    async (url, engine, server) => {
      assert.equal(server.parallel, 4);
      const pending = Array.from({ length: 7 }, (_, i) =>
        post(`${url}/v1/completions`, {
          prompt: "p",
          max_tokens: 12,
          seed: i,
          stream: i % 2 === 1,
        }));
      await until(() => server.load().queued === 3, "3 queued requests");
      assert.deepEqual(server.load(), { active: 4, queued: 3 });
      const h = await health(url);
      assert.equal(h.active, 4);
      assert.equal(h.queued, 3);
      assert.equal(h.parallel, 4);
      assert.equal(engine.calls, 4, "queued requests have not reached the engine");
      // Full: the next two are refused at once, with an OpenAI-style body.
      for (let i = 0; i < 2; i++) {
        const busy = await post(`${url}/v1/completions`, { prompt: "p", max_tokens: 2 });
        assert.equal(busy.status, 429);
        assert.equal((await errorOf(busy)).type, "rate_limit_error");
      }
      held.open();
      const responses = await Promise.all(pending);
      for (const [i, r] of responses.entries()) {
        assert.equal(r.status, 200);
        const expected = decodeAll(FakeEngine.expected(i, 1, 12));
        if (i % 2 === 1) {
          const events = parseSse(await r.text());
          const text = events.flatMap((e) => e.choices as { text: string }[]).map((c) => c.text);
          assert.equal(text.join(""), expected);
        } else assert.equal((await r.json()).choices[0].text, expected);
      }
      assert.equal(engine.maxActive, 4);
      assert.equal(engine.waitedInside, 0, "the server never over-admits into the engine");
      assert.deepEqual(server.load(), { active: 0, queued: 0 });
    },
    tokenizer,
    engine,
  );
});

Deno.test("parallel is capped at the engine's slots; the default is the engine's", async () => {
  const two = new FakeEngine();
  two.parallel = 2;
  await withServer(
    { parallel: 8 },
    (_url, _engine, server) => {
      assert.equal(server.parallel, 2);
      return Promise.resolve();
    },
    tokenizer,
    two,
  );
  await withServer(
    {},
    (_url, _engine, server) => {
      assert.equal(server.parallel, 2);
      return Promise.resolve();
    },
    tokenizer,
    two,
  );
  await withServer({ parallel: 8 }, (_url, _engine, server) => {
    assert.equal(server.parallel, 1, "an engine without `parallel` runs one at a time");
    return Promise.resolve();
  });
});

Deno.test("parallel: a disconnect frees its slot for the queue; a queued disconnect leaves it", async () => {
  const engine = new FakeEngine();
  engine.parallel = 2;
  engine.delayMs = 5;
  await withServer(
    { parallel: 2, maxQueue: 4 },
    async (url, engine, server) => {
      const streams = [0, 1].map(async (i) => {
        const controller = new AbortController();
        const res = await post(
          `${url}/v1/completions`,
          { prompt: "p", max_tokens: 4000, seed: i, stream: true },
          { signal: controller.signal },
        );
        const reader = res.body!.getReader();
        await reader.read();
        return { controller, reader };
      });
      const [a, b] = await Promise.all(streams);
      // Two more wait; the client of the first gives up while queued.
      const leaving = new AbortController();
      const leaver = post(`${url}/v1/completions`, { prompt: "q", max_tokens: 3 }, {
        signal: leaving.signal,
      }).catch((e) => e);
      await until(() => server.load().queued === 1, "one queued");
      const stayer = post(`${url}/v1/completions`, { prompt: "r", max_tokens: 3, seed: 5 });
      await until(() => server.load().queued === 2, "two queued");
      leaving.abort();
      assert.ok((await leaver) instanceof Error);
      await until(() => server.load().queued === 1, "the leaver to leave the queue");
      assert.equal((await health(url)).queued, 1);
      assert.equal(engine.calls, 2);
      // The first stream's client disconnects: its slot goes to the queued request.
      a.controller.abort();
      await a.reader.cancel().catch(() => {});
      const res = await stayer;
      assert.equal(res.status, 200);
      assert.equal((await res.json()).choices[0].text, decodeAll(FakeEngine.expected(5, 1, 3)));
      assert.equal(engine.calls, 3, "the leaver never reached the engine");
      assert.equal(engine.aborts, 1);
      assert.deepEqual(server.load(), { active: 1, queued: 0 });
      b.controller.abort();
      await b.reader.cancel().catch(() => {});
      await until(() => engine.active === 0, "the second stream to stop");
      assert.deepEqual(server.load(), { active: 0, queued: 0 });
      assert.equal(engine.aborts, 2);
    },
    tokenizer,
    engine,
  );
});

Deno.test("parallel: each request gets its own sampling parameters and stop ids", async () => {
  const engine = new FakeEngine();
  engine.parallel = 3;
  engine.delayMs = 2;
  await withServer(
    { parallel: 3 },
    async (url, engine) => {
      const requests = [
        { prompt: "a", max_tokens: 5, temperature: 0, seed: 1 },
        {
          prompt: "b",
          max_tokens: 6,
          temperature: 0.7,
          top_k: 40,
          top_p: 0.9,
          seed: 2,
          stop: [65],
        },
        { prompt: "c", max_tokens: 7, temperature: 1.3, top_p: 0.5, seed: 3, ignore_eos: true },
      ];
      const responses = await Promise.all(requests.map((r) => post(`${url}/v1/completions`, r)));
      for (const r of responses) assert.equal(r.status, 200);
      await Promise.all(responses.map((r) => r.json()));
      assert.equal(engine.maxActive, 3);
      const bySeed = new Map(engine.options.map((o) => [o.seed, o]));
      const expectations = [
        { maxTokens: 5, temperature: 0, topK: 0, topP: 1, stopIds: [3] },
        { maxTokens: 6, temperature: 0.7, topK: 40, topP: 0.9, stopIds: [3, 65] },
        { maxTokens: 7, temperature: 1.3, topK: 0, topP: 0.5, stopIds: [] },
      ];
      for (const [i, want] of expectations.entries()) {
        const got = bySeed.get(i + 1)!;
        assert.ok(got, `request ${i} reached the engine`);
        for (const [key, value] of Object.entries(want)) {
          assert.deepEqual(got[key as keyof GenerateOptions], value, `request ${i}: ${key}`);
        }
      }
      const bad = await post(`${url}/v1/completions`, { prompt: "a", ignore_eos: "yes" });
      assert.equal(bad.status, 400);
      assert.equal((await errorOf(bad)).param, "ignore_eos");
    },
    tokenizer,
    engine,
  );
});

Deno.test("parallel: SSE streams are interleaved, each complete and in order", async () => {
  const engine = new FakeEngine();
  engine.parallel = 4;
  engine.delayMs = 8; // 40 ids: each stream lasts ≥ 320 ms, so the overlap check has slack
  await withServer(
    { parallel: 4 },
    async (url) => {
      const read = async (seed: number) => {
        const res = await post(`${url}/v1/chat/completions`, {
          messages: [{ role: "user", content: "x" }],
          max_tokens: 40,
          seed,
          stream: true,
        });
        const reader = res.body!.pipeThrough(new TextDecoderStream()).getReader();
        const arrivals: number[] = [];
        let text = "";
        while (true) {
          const { done, value } = await reader.read();
          if (done) break;
          arrivals.push(performance.now());
          text += value;
        }
        const events = parseSse(text);
        type Choice = { delta: { content?: string } };
        const content = events.map((e) => (e.choices as Choice[])[0]?.delta.content ?? "").join("");
        return { arrivals, content, id: events[0].id };
      };
      const streams = await Promise.all([10, 11, 12, 13].map(read));
      const promptLength = tokenizer.encode(
        tokenizer.applyChatTemplate([{ role: "user", content: "x" }]),
      ).length;
      for (const [i, s] of streams.entries()) {
        assert.equal(s.content, decodeAll(FakeEngine.expected(10 + i, promptLength, 40)));
        assert.ok(s.arrivals.length > 5, "the stream came in pieces");
      }
      assert.equal(new Set(streams.map((s) => s.id)).size, 4, "one id per stream");
      // Interleaved: every stream had received data before any stream ended.
      const lastFirst = Math.max(...streams.map((s) => s.arrivals[0]));
      const firstEnd = Math.min(...streams.map((s) => s.arrivals.at(-1)!));
      assert.ok(lastFirst < firstEnd, `streams overlapped (${lastFirst} < ${firstEnd})`);
    },
    tokenizer,
    engine,
  );
});

Deno.test("api key: missing or wrong → 401 OpenAI-style body; right → 200; /health stays open", async () => {
  const key = "sk-test-Ünïcode-1234567890";
  await withServer({ apiKey: key }, async (url) => {
    const health = await fetch(`${url}/health`);
    assert.equal(health.status, 200);
    await health.body?.cancel();
    const cases: [string, Record<string, string>][] = [
      ["none", {}],
      ["wrong", { authorization: "Bearer sk-test-Ünïcode-1234567891" }],
      ["prefix", { authorization: `Bearer ${key.slice(0, -1)}` }],
      ["longer", { authorization: `Bearer ${key}0` }],
      ["not bearer", { authorization: `Basic ${key}` }],
      ["bare", { authorization: key }],
    ];
    for (const [what, headers] of cases) {
      for (const [method, path] of [["POST", "/v1/completions"], ["GET", "/v1/models"]]) {
        const res = await fetch(`${url}${path}`, {
          method,
          headers: { "content-type": "application/json", ...headers },
          body: method === "POST" ? JSON.stringify({ prompt: "p", max_tokens: 2 }) : undefined,
        });
        assert.equal(res.status, 401, `${what} ${path}`);
        assert.equal(res.headers.get("www-authenticate"), "Bearer");
        const body = await res.json();
        assert.deepEqual(Object.keys(body.error).sort(), ["code", "message", "param", "type"]);
        assert.equal(body.error.type, "invalid_request_error");
        assert.equal(body.error.code, "invalid_api_key");
        assert.match(body.error.message, /API key/);
      }
    }
    // Unknown /v1 paths are not revealed without the key.
    const hidden = await fetch(`${url}/v1/nothing`);
    assert.equal(hidden.status, 401);
    await hidden.body?.cancel();
    for (const scheme of ["Bearer", "bearer"]) {
      const ok = await post(`${url}/v1/completions`, { prompt: "p", max_tokens: 3, seed: 4 }, {
        headers: { "content-type": "application/json", authorization: `${scheme} ${key}` },
      });
      assert.equal(ok.status, 200);
      assert.equal((await ok.json()).choices[0].text, decodeAll(FakeEngine.expected(4, 1, 3)));
    }
  });
  assert.throws(() => serve(new FakeEngine(), tokenizer, { apiKey: "", port: 0 }), /API key/);
});

Deno.test("constantTimeEqual: equal only for identical strings, whatever the lengths", () => {
  const secret = "sk-abcdef0123456789";
  assert.equal(constantTimeEqual(secret, secret), true);
  assert.equal(constantTimeEqual(String(secret), "sk-" + "abcdef0123456789"), true);
  for (
    const other of [
      "",
      "s",
      secret.slice(0, -1),
      secret + "x",
      secret + secret,
      "Sk-abcdef0123456789",
      "sk-abcdef0123456788",
      "sk-abcdef01234567\u00e9",
      secret.repeat(3).slice(0, secret.length * 2), // the secret repeated: caught by the length
    ]
  ) {
    assert.equal(constantTimeEqual(other, secret), false, JSON.stringify(other));
  }
  assert.equal(constantTimeEqual("", ""), true);
  assert.equal(constantTimeEqual("x", ""), false);
  assert.equal(constantTimeEqual("ключ", "ключ"), true);
  assert.equal(constantTimeEqual("ключ", "ключь"), false);
});

Deno.test("isLoopbackHost: loopback names and addresses only", () => {
  for (const h of ["127.0.0.1", "127.1.2.3", "localhost", "LOCALHOST", "::1", "[::1]"]) {
    assert.equal(isLoopbackHost(h), true, h);
  }
  for (const h of ["0.0.0.0", "::", "192.168.1.4", "10.0.0.1", "example.com", "128.0.0.1"]) {
    assert.equal(isLoopbackHost(h), false, h);
  }
});

Deno.test("request log: tokens per second over the whole generation, TTFT separately", async () => {
  // Ids arrive in readback batches of 8 after 8 × 10 ms: a rate taken between the first and
  // the last arrival would count 16 ids over one batch interval (about twice too fast).
  const engine = new FakeEngine();
  engine.delayMs = 10;
  engine.batch = 8;
  const logs: RequestLog[] = [];
  await withServer(
    { onRequestLog: (e) => logs.push(e) },
    async (url) => {
      for (const stream of [false, true]) {
        const t0 = performance.now();
        const res = await post(`${url}/v1/completions`, {
          prompt: "p",
          max_tokens: 16,
          seed: 1,
          stream,
        });
        await res.text();
        const wall = performance.now() - t0;
        const e = logs.at(-1)!;
        assert.equal(e.status, 200);
        assert.equal(e.stream, stream);
        assert.equal(e.completionTokens, 16);
        assert.equal(e.promptTokens, 1);
        assert.ok(e.ttftMs! >= 75, `TTFT ${e.ttftMs} ms covers the first batch`);
        assert.ok(e.generationMs >= 150 && e.generationMs <= wall, `generation ${e.generationMs}`);
        assert.ok(Math.abs(e.tokensPerSecond - 16 / (e.generationMs / 1000)) < 1e-9);
        // 16 ids need two 80 ms batches: at most 100 tok/s, whatever the machine's noise.
        assert.ok(e.tokensPerSecond <= 16 / 0.16 + 1e-9, `${e.tokensPerSecond} tok/s`);
        const line = formatRequestLog(e);
        assert.match(line, /^moeq: 200 \/v1\/completions cmpl-/);
        assert.match(line, new RegExp(`${e.tokensPerSecond.toFixed(1)} tok/s`));
        assert.match(line, /TTFT \d+ ms/);
        assert.ok(!line.includes("\n"));
      }
    },
    tokenizer,
    engine,
  );
});

Deno.test("request log: a 429 and a cancelled stream are logged with their status", async () => {
  const engine = new FakeEngine();
  const held = gate();
  engine.gate = held.promise;
  engine.delayMs = 5;
  const logs: RequestLog[] = [];
  await withServer(
    { maxQueue: 0, onRequestLog: (e) => logs.push(e) },
    async (url, _e, server) => {
      const controller = new AbortController();
      const running = post(`${url}/v1/completions`, {
        prompt: "p",
        max_tokens: 4000,
        stream: true,
      }, { signal: controller.signal });
      await until(() => server.load().active === 1, "one active");
      const busy = await post(`${url}/v1/completions`, { prompt: "p" });
      assert.equal(busy.status, 429);
      await busy.body?.cancel();
      assert.equal(logs.length, 1);
      assert.equal(logs[0].status, 429);
      assert.match(formatRequestLog(logs[0]), /^moeq: 429 .*; the server is busy/);
      const res = await running;
      held.open();
      const reader = res.body!.getReader();
      await reader.read(); // tokens are flowing
      controller.abort();
      await reader.cancel().catch(() => {});
      await until(() => logs.length === 2, "the cancelled stream's log");
      assert.equal(logs[1].status, 499);
      assert.ok(logs[1].completionTokens > 0 && logs[1].completionTokens < 4000);
      assert.match(logs[1].error ?? "", /cancelled/);
    },
    tokenizer,
    engine,
  );
});

Deno.test("the openai npm client works with the right key (completions, chat, streaming)", async () => {
  const key = "sk-moeq-test";
  const engine = new FakeEngine();
  engine.parallel = 2;
  await withServer(
    { apiKey: key, parallel: 2 },
    async (url) => {
      const client = new OpenAI({ baseURL: `${url}/v1`, apiKey: key, maxRetries: 0 });
      const completion = await client.completions.create({
        model: "moeq",
        prompt: "To be",
        max_tokens: 20,
        seed: 9,
      });
      assert.equal(completion.choices[0].text, decodeAll(FakeEngine.expected(9, 5, 20)));
      assert.equal(completion.usage?.completion_tokens, 20);

      const messages = [{ role: "user" as const, content: "hi" }];
      const promptLength = tokenizer.encode(tokenizer.applyChatTemplate(messages)).length;
      const chat = await client.chat.completions.create({
        model: "moeq",
        messages,
        max_tokens: 15,
        seed: 2,
      });
      assert.equal(
        chat.choices[0].message.content,
        decodeAll(FakeEngine.expected(2, promptLength, 15)),
      );

      const stream = await client.chat.completions.create({
        model: "moeq",
        messages,
        max_tokens: 15,
        seed: 2,
        stream: true,
      });
      let streamed = "";
      for await (const part of stream) streamed += part.choices[0]?.delta.content ?? "";
      assert.equal(streamed, chat.choices[0].message.content);

      const wrong = new OpenAI({ baseURL: `${url}/v1`, apiKey: "sk-wrong", maxRetries: 0 });
      await assert.rejects(
        wrong.models.list(),
        (e: unknown) => e instanceof OpenAI.AuthenticationError && e.status === 401,
      );
    },
    tokenizer,
    engine,
  );
});

Deno.test("load: 64 requests, 8 parallel, queue 16: each gets its full answer or a 429, then serving goes on", async () => {
  const engine = new FakeEngine();
  engine.parallel = 8;
  engine.delayMs = 1;
  await withServer(
    { parallel: 8, maxQueue: 16 },
    async (url, engine, server) => {
      const one = async (i: number) => {
        const res = await post(`${url}/v1/completions`, {
          prompt: "load",
          max_tokens: 24,
          seed: i,
          stream: i % 2 === 0,
        });
        const expected = decodeAll(FakeEngine.expected(i, 4, 24));
        if (res.status === 429) {
          assert.equal((await errorOf(res)).type, "rate_limit_error");
          return 429;
        }
        assert.equal(res.status, 200, `request ${i}`);
        if (i % 2 === 0) {
          const events = parseSse(await res.text());
          const choices = events.flatMap((e) =>
            e.choices as { text: string; finish_reason: string }[]
          );
          assert.equal(choices.map((c) => c.text).join(""), expected, `request ${i}`);
          assert.equal(choices.at(-1)!.finish_reason, "length");
        } else {
          const body = await res.json();
          assert.equal(body.choices[0].text, expected, `request ${i}`);
          assert.equal(body.usage.completion_tokens, 24);
        }
        return 200;
      };
      const statuses = await Promise.all(Array.from({ length: 64 }, (_, i) => one(i)));
      const served = statuses.filter((s) => s === 200).length;
      const refused = statuses.length - served;
      console.log(`  64 requests, parallel 8, queue 16: ${served} served, ${refused} got 429`);
      assert.ok(served >= 24, `${served} served (8 running + 16 queued at least)`);
      assert.equal(engine.maxActive, 8);
      assert.equal(engine.waitedInside, 0);
      assert.deepEqual(server.load(), { active: 0, queued: 0 });
      const after = await Promise.all(Array.from({ length: 8 }, (_, i) => one(100 + i)));
      assert.deepEqual(after, Array(8).fill(200), "serving goes on");
    },
    tokenizer,
    engine,
  );
});

Deno.test("request log: one line per request, bad requests and engine errors included", async () => {
  const engine = new FakeEngine();
  const logs: RequestLog[] = [];
  engine.generate = async function* () {
    yield 104;
    throw new Error("device lost");
  };
  await withServer(
    { onRequestLog: (e) => logs.push(e) },
    async (url) => {
      const bad = await post(`${url}/v1/completions`, { prompt: 5 });
      assert.equal(bad.status, 400);
      await bad.body?.cancel();
      const failed = await post(`${url}/v1/completions`, { prompt: "p", max_tokens: 4 });
      assert.equal(failed.status, 500);
      await failed.body?.cancel();
      assert.deepEqual(logs.map((e) => e.status), [400, 500]);
      assert.equal(logs[1].completionTokens, 1);
      assert.match(
        formatRequestLog(logs[0]),
        /^moeq: 400 \/v1\/completions -, prompt 0 tok.*; 'prompt'/,
      );
    },
    tokenizer,
    engine,
  );
});
