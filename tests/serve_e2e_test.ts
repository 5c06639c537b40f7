/**
 * `cli.ts serve` as a real subprocess: parses the listening URL from stderr, streams a completion
 * over SSE and checks it equals what the library API (`loadModel` + the artifact's tokenizer)
 * generates for the same seed and temperature, checks /health and /v1/models, that malformed
 * JSON is a 400 after which the server keeps serving, and that SIGTERM stops it cleanly. Then
 * `serve --parallel 2` with the API key from `MOEQ_API_KEY`: 401s, the official `openai` client
 * with the right key (completions, chat, streaming, concurrent streams equal to the library's
 * greedy output), a short `bench serve` load level, and the request log lines; and the warning
 * for a non-loopback host without a key.
 *
 * @module
 */

import assert from "node:assert/strict";
import OpenAI from "openai";
import { isOneLineError, runCli } from "./cli_helpers.ts";
import { loadModel, openArtifact } from "../runtime/mod.ts";
import { tokenizerFromArtifact } from "../runtime/tokenizer.ts";
import { loadLevel } from "../cli/bench_serve.ts";

const CLI = new URL("../cli.ts", import.meta.url).pathname;
const MODEL = new URL("../testdata/shakespeare-moe", import.meta.url).pathname;

/** Reads stderr lines until `moeq: serving on <url>`; returns the URL and the rest of stderr. */
async function waitForUrl(
  stderr: ReadableStream<Uint8Array>,
): Promise<{ url: string; rest: Promise<string> }> {
  const reader = stderr.pipeThrough(new TextDecoderStream()).getReader();
  let seen = "";
  const deadline = Date.now() + 60_000;
  while (Date.now() < deadline) {
    const { done, value } = await reader.read();
    if (done) throw new Error(`serve exited before listening; stderr: ${seen}`);
    seen += value;
    const m = seen.match(/moeq: serving on (http:\/\/\S+)\n/);
    if (m) {
      const rest = (async () => {
        let tail = seen.slice(seen.indexOf(m[0]) + m[0].length);
        while (true) {
          const r = await reader.read();
          if (r.done) return tail;
          tail += r.value;
        }
      })();
      return { url: m[1], rest };
    }
  }
  throw new Error(`serve did not report its URL; stderr: ${seen}`);
}

/** Splits an SSE body into its `data:` payloads, checking the framing strictly. */
function sseEvents(body: string): string[] {
  assert.ok(body.endsWith("\n\n"), "stream must end with a blank line");
  const events = body.slice(0, -2).split("\n\n");
  return events.map((e) => {
    assert.ok(e.startsWith("data: "), `event without "data: ": ${JSON.stringify(e)}`);
    assert.ok(!e.includes("\n"), `multi-line event: ${JSON.stringify(e)}`);
    return e.slice(6);
  });
}

/** The 2.5-bit shakespeare artifact, compiled once for every test here (removed at unload). */
let compiled: Promise<string> | null = null;
function artifact(): Promise<string> {
  compiled ??= (async () => {
    const dir = await Deno.makeTempDir({ prefix: "moeq_serve_e2e_" });
    globalThis.addEventListener("unload", () => Deno.removeSync(dir, { recursive: true }));
    const art = `${dir}/shakespeare-2.5.moeq`;
    const c = await runCli([
      "compile",
      MODEL,
      "--init",
      `${MODEL}/init`,
      "--expert-bits",
      "2.5",
      "-o",
      art,
      "--quiet",
    ]);
    assert.equal(c.code, 0, c.stderr);
    return art;
  })();
  return compiled;
}

/** Starts `cli.ts serve ...args` with extra environment variables. */
function spawnServe(args: string[], env: Record<string, string> = {}): Deno.ChildProcess {
  return new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", CLI, "serve", ...args],
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1", XDG_RUNTIME_DIR: Deno.env.get("XDG_RUNTIME_DIR") ?? "/tmp", ...env },
  }).spawn();
}

/** Kills a server left running by a failed test. */
async function killServe(child: Deno.ChildProcess | null): Promise<void> {
  if (!child) return;
  try {
    child.kill("SIGKILL");
  } catch {
    // already gone
  }
  await child.status;
  await child.stdout.cancel().catch(() => {});
  await child.stderr.cancel().catch(() => {});
}

Deno.test("serve e2e: SSE completion equals the library API; health, models, 400, SIGTERM", async () => {
  const art = await artifact();
  let child: Deno.ChildProcess | null = null;
  try {
    child = spawnServe([art, "--port", "0"]);
    const stdoutText = new Response(child.stdout).text();
    const { url, rest } = await waitForUrl(child.stderr);
    assert.match(url, /^http:\/\/127\.0\.0\.1:\d+$/);

    // Health and models.
    const health = await fetch(`${url}/health`);
    assert.equal(health.status, 200);
    const healthBody = await health.json();
    assert.equal(healthBody.status, "ok");
    assert.equal(healthBody.active, 0);
    assert.equal(healthBody.queued, 0);
    const models = await (await fetch(`${url}/v1/models`)).json();
    assert.equal(models.object, "list");
    assert.equal(models.data[0].id, "moeq");

    // Malformed JSON → 400 with a JSON error; the server keeps serving.
    const bad = await fetch(`${url}/v1/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: '{"prompt": "ROMEO:", "max_tokens": ',
    });
    assert.equal(bad.status, 400);
    const badBody = await bad.json();
    assert.equal(badBody.error.type, "invalid_request_error");
    assert.match(badBody.error.message, /malformed JSON/);

    // A streamed completion.
    const request = { prompt: "ROMEO:", max_tokens: 40, temperature: 0.8, seed: 11 };
    const res = await fetch(`${url}/v1/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ ...request, stream: true }),
    });
    assert.equal(res.status, 200);
    assert.match(res.headers.get("content-type") ?? "", /^text\/event-stream/);
    const events = sseEvents(await res.text());
    assert.equal(events[events.length - 1], "[DONE]");
    const chunks = events.slice(0, -1).map((e) => JSON.parse(e));
    assert.ok(chunks.length >= 2, "at least one text chunk and the finish chunk");
    let streamed = "";
    for (const [i, ch] of chunks.entries()) {
      assert.equal(ch.object, "text_completion");
      assert.equal(ch.id, chunks[0].id);
      assert.equal(ch.choices.length, 1);
      streamed += ch.choices[0].text;
      if (i < chunks.length - 1) assert.equal(ch.choices[0].finish_reason, null);
    }
    const finish = chunks[chunks.length - 1].choices[0].finish_reason;
    assert.ok(finish === "length" || finish === "stop");

    // The same request through the library API in this process.
    const artifact = await openArtifact(art);
    const tokenizer = await tokenizerFromArtifact(artifact);
    artifact.close();
    const engine = await loadModel(art);
    const ids: number[] = [];
    try {
      const stop = new Set(tokenizer.eos);
      for await (
        const id of engine.generate(tokenizer.encode(request.prompt), {
          maxTokens: request.max_tokens,
          temperature: request.temperature,
          seed: request.seed,
        })
      ) {
        if (stop.has(id)) break;
        ids.push(id);
      }
    } finally {
      engine.dispose();
    }
    const expected = tokenizer.decode(ids);
    assert.equal(streamed, expected);
    assert.equal(finish, ids.length === request.max_tokens ? "length" : "stop");
    assert.ok(expected.length > 0);

    // Non-streamed: the same seed gives the same text again (the server is still healthy).
    const again = await (await fetch(`${url}/v1/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(request),
    })).json();
    assert.equal(again.choices[0].text, expected);
    assert.equal(again.usage.prompt_tokens, request.prompt.length);

    // SIGTERM: a clean exit.
    child.kill("SIGTERM");
    const status = await child.status;
    const stderrRest = await rest;
    await stdoutText;
    child = null;
    assert.equal(status.code, 0, `serve exit code ${status.code}; stderr: ${stderrRest}`);
    assert.equal(status.signal, null);
    // Only the request log: one line per completion request, with its rate.
    const lines = stderrRest.trim().split("\n");
    assert.equal(lines.length, 3, stderrRest);
    assert.match(lines[0], /^moeq: 400 /);
    for (const line of lines.slice(1)) {
      assert.match(line, /^moeq: 200 \/v1\/completions cmpl-.* TTFT \d+ ms, \d+ tok in .* tok\/s$/);
    }
  } finally {
    await killServe(child);
  }
});

/** Greedy ids of the library API for `promptIds`, up to the first EOS (excluded). */
async function libraryGreedy(art: string, prompts: number[][], maxTokens: number) {
  const engine = await loadModel(art);
  try {
    const out: number[][] = [];
    for (const ids of prompts) {
      const got: number[] = [];
      for await (const id of engine.generate(ids, { maxTokens, temperature: 0 })) {
        if (engine.model.eosTokenIds.includes(id)) break;
        got.push(id);
      }
      out.push(got);
    }
    return out;
  } finally {
    engine.dispose();
  }
}

Deno.test("serve --parallel 2 with MOEQ_API_KEY: 401s, openai client, concurrent streams, bench level, log", async () => {
  const art = await artifact();
  const key = `sk-e2e-${crypto.randomUUID()}`;
  let child: Deno.ChildProcess | null = null;
  try {
    child = spawnServe([art, "--port", "0", "--parallel", "2"], { MOEQ_API_KEY: key });
    const stdoutText = new Response(child.stdout).text();
    const { url, rest } = await waitForUrl(child.stderr);

    // /health is open and reports the slots; /v1/* needs the key.
    const health = await (await fetch(`${url}/health`)).json();
    assert.equal(health.status, "ok");
    assert.deepEqual([health.active, health.queued], [0, 0]);
    assert.ok(health.parallel === 1 || health.parallel === 2, `parallel ${health.parallel}`);
    for (const headers of [{}, { authorization: "Bearer sk-wrong" }] as Record<string, string>[]) {
      const res = await fetch(`${url}/v1/completions`, {
        method: "POST",
        headers: { "content-type": "application/json", ...headers },
        body: JSON.stringify({ prompt: "ROMEO:", max_tokens: 4 }),
      });
      assert.equal(res.status, 401);
      const body = await res.json();
      assert.equal(body.error.code, "invalid_api_key");
      assert.equal(body.error.type, "invalid_request_error");
    }
    const wrong = new OpenAI({ baseURL: `${url}/v1`, apiKey: "sk-wrong", maxRetries: 0 });
    await assert.rejects(
      wrong.completions.create({ model: "moeq", prompt: "ROMEO:", max_tokens: 4 }),
      (e: unknown) => e instanceof OpenAI.AuthenticationError,
    );

    // The openai client with the right key: greedy text equals the library's.
    const opened = await openArtifact(art);
    const tokenizer = await tokenizerFromArtifact(opened);
    opened.close();
    const prompts = ["ROMEO:", "JULIET:\nO Romeo,"];
    const messages = [{ role: "user" as const, content: "Speak, Romeo." }];
    const chatIds = tokenizer.encode(tokenizer.applyChatTemplate(messages), {
      addSpecialTokens: false,
    });
    const [want0, want1, wantChat] = (await libraryGreedy(
      art,
      [...prompts.map((p) => tokenizer.encode(p)), chatIds],
      24,
    )).map((ids) => tokenizer.decode(ids));
    assert.ok(want0.length > 0 && want1.length > 0);
    const client = new OpenAI({ baseURL: `${url}/v1`, apiKey: key, maxRetries: 0 });
    assert.equal((await client.models.list()).data[0].id, "moeq");
    const completion = await client.completions.create({
      model: "moeq",
      prompt: prompts[0],
      max_tokens: 24,
      temperature: 0,
    });
    assert.equal(completion.choices[0].text, want0);

    // Two streams at once (interleaved when the engine has two slots, queued otherwise).
    const streamed = await Promise.all(prompts.map(async (prompt) => {
      const stream = await client.completions.create({
        model: "moeq",
        prompt,
        max_tokens: 24,
        temperature: 0,
        stream: true,
      });
      let text = "";
      for await (const part of stream) text += part.choices[0]?.text ?? "";
      return text;
    }));
    assert.deepEqual(streamed, [want0, want1]);

    const chat = await client.chat.completions.create({
      model: "moeq",
      messages,
      max_tokens: 24,
      temperature: 0,
    });
    assert.equal(chat.choices[0].message.content, wantChat);
    const chatStream = await client.chat.completions.create({
      model: "moeq",
      messages,
      max_tokens: 24,
      temperature: 0,
      stream: true,
    });
    let chatText = "";
    for await (const part of chatStream) chatText += part.choices[0]?.delta.content ?? "";
    assert.equal(chatText, wantChat);

    // One short `bench serve` level through the same server.
    const level = await loadLevel(url, {
      streams: 2,
      requestsPerStream: 1,
      tokens: 8,
      apiKey: key,
    });
    assert.equal(level.errors, 0);
    assert.equal(level.tokens, 16);
    assert.ok(level.ttftMs.p50 > 0 && level.ttftMs.p99 >= level.ttftMs.p50);
    const refused = await loadLevel(url, { streams: 1, requestsPerStream: 1, tokens: 8 });
    assert.equal(refused.errors, 1, "no key: the request counts as an error");

    child.kill("SIGTERM");
    const status = await child.status;
    const log = await rest;
    await stdoutText;
    child = null;
    assert.equal(status.code, 0, log);
    assert.ok(!log.includes(key), "the key is never logged");
    const lines = log.trim().split("\n");
    if (health.parallel === 1) {
      assert.match(lines.shift()!, /^moeq: note: the engine runs 1 request\(s\) at a time/);
    }
    assert.ok(!log.includes("warning"), "loopback: no warning");
    // 401s are not logged (refused before the route); 1 + 2 + 2 + 2 + 0 completions.
    const ok = lines.filter((l) => l.startsWith("moeq: 200 "));
    assert.equal(ok.length, 7, log);
    for (const line of ok) assert.match(line, /TTFT \d+ ms, \d+ tok in .* = \d+\.\d tok\/s$/);
    assert.equal(lines.length, ok.length, log);
  } finally {
    await killServe(child);
  }
});

Deno.test("serve on a non-loopback host without a key prints a one-line warning", async () => {
  let child: Deno.ChildProcess | null = null;
  try {
    child = spawnServe([MODEL, "--device", "cpu", "--host", "0.0.0.0", "--port", "0"]);
    const stdoutText = new Response(child.stdout).text();
    const { rest } = await waitForUrl(child.stderr);
    // The warning follows the URL line at once; then stop the server.
    await new Promise((r) => setTimeout(r, 200));
    child.kill("SIGTERM");
    const status = await child.status;
    const log = await rest;
    await stdoutText;
    child = null;
    assert.equal(status.code, 0, log);
    const lines = log.trim().split("\n");
    assert.equal(lines.length, 1, log);
    assert.match(
      lines[0],
      /^moeq: warning: 0\.0\.0\.0 is reachable from the network and no API key/,
    );
  } finally {
    await killServe(child);
  }
});

Deno.test("serve and bench serve: bad --parallel, an empty --api-key, no artifact → one-line usage errors", async () => {
  const cases: [string[], RegExp][] = [
    [["serve", MODEL, "--device", "cpu", "--parallel", "0"], /--parallel/],
    [["serve", MODEL, "--device", "cpu", "--api-key="], /--api-key is empty/],
    [["serve", MODEL, "--device", "cpu", "--api-key", "two words"], /--api-key/],
    [["bench", "serve"], /bench serve: give the artifact path/],
    [["bench", "serve", MODEL, "--streams", "0"], /--streams/],
  ];
  for (const [args, message] of cases) {
    const r = await runCli(args);
    assert.equal(r.code, 2, `${args.join(" ")}: ${r.stderr}`);
    assert.ok(isOneLineError(r.stderr), r.stderr);
    assert.match(r.stderr, message);
  }
});
