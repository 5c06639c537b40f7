/**
 * `cli.ts serve` as a real subprocess: parses the listening URL from stderr, streams a completion
 * over SSE and checks it equals what the library API (`loadModel` + the artifact's tokenizer)
 * generates for the same seed and temperature, checks /health and /v1/models, that malformed
 * JSON is a 400 after which the server keeps serving, and that SIGTERM stops it cleanly.
 *
 * @module
 */

import assert from "node:assert/strict";
import { runCli } from "./cli_helpers.ts";
import { loadModel, openArtifact } from "../runtime/mod.ts";
import { tokenizerFromArtifact } from "../runtime/tokenizer.ts";

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

Deno.test("serve e2e: SSE completion equals the library API; health, models, 400, SIGTERM", async () => {
  const dir = await Deno.makeTempDir({ prefix: "moeq_serve_e2e_" });
  const art = `${dir}/shakespeare-2.5.moeq`;
  let child: Deno.ChildProcess | null = null;
  try {
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

    child = new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", CLI, "serve", art, "--port", "0"],
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
      env: { NO_COLOR: "1", XDG_RUNTIME_DIR: Deno.env.get("XDG_RUNTIME_DIR") ?? "/tmp" },
    }).spawn();
    const stdoutText = new Response(child.stdout).text();
    const { url, rest } = await waitForUrl(child.stderr);
    assert.match(url, /^http:\/\/127\.0\.0\.1:\d+$/);

    // Health and models.
    const health = await fetch(`${url}/health`);
    assert.equal(health.status, 200);
    assert.deepEqual(await health.json(), { status: "ok" });
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
    assert.equal(stderrRest.trim(), "", "no error output on shutdown");
  } finally {
    if (child) {
      try {
        child.kill("SIGKILL");
      } catch {
        // already gone
      }
      await child.status;
      await child.stderr.cancel().catch(() => {});
    }
    await Deno.remove(dir, { recursive: true });
  }
});
