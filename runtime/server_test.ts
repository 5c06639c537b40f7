import assert from "node:assert/strict";
import type { Engine, GenerateOptions } from "./api.ts";
import type { ModelSpec } from "../schemas/model.ts";
import { serve, type ServeOptions } from "./server.ts";
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
 * the prompt length, repeated. Optional delay per token; records calls, aborts and concurrency.
 */
class FakeEngine implements Engine {
  readonly model = MODEL;
  delayMs = 0;
  calls = 0;
  aborts = 0;
  active = 0;
  maxActive = 0;

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
    this.active++;
    this.maxActive = Math.max(this.maxActive, this.active);
    try {
      const ids = FakeEngine.expected(options.seed ?? 0, promptIds.length, options.maxTokens ?? 64);
      for (const id of ids) {
        if (this.delayMs) await new Promise((r) => setTimeout(r, this.delayMs));
        if (options.signal?.aborted) {
          this.aborts++;
          return;
        }
        yield id;
        if (options.stopIds?.includes(id)) return;
      }
    } finally {
      this.active--;
    }
  }

  dispose(): void {}
}

const tokenizer = createTokenizer(null, null, { bos: 2, eos: [3] });
const decodeAll = (ids: number[]) => tokenizer.decode(ids);

async function withServer(
  options: ServeOptions,
  body: (url: string, engine: FakeEngine) => Promise<void>,
  tok = tokenizer,
): Promise<void> {
  const engine = new FakeEngine();
  const server = serve(engine, tok, { port: 0, onListen: () => {}, ...options });
  try {
    await body(server.url, engine);
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
    assert.deepEqual(await (await fetch(`${url}/health`)).json(), { status: "ok" });
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
