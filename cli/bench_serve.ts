/**
 * `moeq bench serve <artifact> [--streams 1,2,4,8] [--requests 2] [--tokens 64] [--parallel N]
 * [--json]`: a bounded loopback load test of `serve`. The artifact is served in this process on
 * a free loopback port with `parallel` slots (default: the most streams); then, for each level,
 * that many clients each send `requests` streamed completions one after another (fixed prompts,
 * `max_tokens` = `--tokens`, `ignore_eos`, temperature 0) and the run stops by itself.
 *
 * Per level: aggregate tok/s (every completion token ÷ the level's wall time), per-stream tok/s
 * (a client's tokens ÷ its own wall time, prefills included; mean and min), time to first token
 * (request sent → first text chunk) p50 and p99 over the level's requests, and errors (a non-200
 * answer, an error event, a missing `[DONE]`, fewer tokens than asked, or no answer within 300 s).
 *
 * @module
 */

import type { Args } from "./args.ts";
import { UsageError } from "../schemas/errors.ts";
import { serve } from "../runtime/server.ts";
import { openEngine } from "./model_source.ts";

/** The prompts the clients cycle through (client i sends prompt i mod 8). */
export const PROMPTS = [
  "ROMEO:",
  "JULIET:\nO Romeo,",
  "First Citizen:\nBefore we proceed any further,",
  "KING RICHARD II:",
  "To be, or not to be:",
  "MENENIUS:\nWhat work's, my countrymen,",
  "Now is the winter of our discontent",
  "HAMLET:\nWhat a piece of work",
];

/** What one level of concurrency measured. */
export interface LevelResult {
  /** Concurrent client streams. */
  streams: number;
  /** Requests sent in all (streams × requests per stream). */
  requests: number;
  /** Requests that failed (see the module docs). */
  errors: number;
  /** Completion tokens received. */
  tokens: number;
  /** Wall time of the level, seconds. */
  wallS: number;
  /** tokens ÷ wallS. */
  aggregateTokS: number;
  /** Each client's tokens ÷ its wall time: mean and min over the clients. */
  perStreamTokS: { mean: number; min: number };
  /** Request sent → first text chunk, milliseconds (nearest-rank percentiles). */
  ttftMs: { p50: number; p99: number };
}

/** Options of {@link loadLevel}. */
export interface LoadOptions {
  /** Concurrent clients. */
  streams: number;
  /** Requests each client sends one after another. */
  requestsPerStream: number;
  /** max_tokens of every request. */
  tokens: number;
  /** Sent as `Authorization: Bearer` when set. */
  apiKey?: string;
  /** A request unfinished after this long is cut off and counted as an error (default 300 s). */
  timeoutMs?: number;
}

/** One streamed completion: its TTFT, tokens and whether it went wrong. */
async function oneRequest(
  url: string,
  prompt: string,
  tokens: number,
  apiKey: string | undefined,
  timeoutMs: number,
): Promise<{ ttftMs: number | null; tokens: number; ok: boolean }> {
  const t0 = performance.now();
  let ttftMs: number | null = null;
  try {
    const res = await fetch(`${url}/v1/completions`, {
      method: "POST",
      signal: AbortSignal.timeout(timeoutMs),
      headers: {
        "content-type": "application/json",
        ...(apiKey ? { authorization: `Bearer ${apiKey}` } : {}),
      },
      body: JSON.stringify({
        prompt,
        max_tokens: tokens,
        temperature: 0,
        ignore_eos: true,
        stream: true,
        stream_options: { include_usage: true },
      }),
    });
    if (res.status !== 200 || !res.body) {
      await res.body?.cancel();
      return { ttftMs, tokens: 0, ok: false };
    }
    let buffered = "";
    let got = 0;
    let done = false;
    let failed = false;
    for await (const text of res.body.pipeThrough(new TextDecoderStream())) {
      buffered += text;
      let end;
      while ((end = buffered.indexOf("\n\n")) >= 0) {
        const event = buffered.slice(0, end);
        buffered = buffered.slice(end + 2);
        if (!event.startsWith("data: ")) continue;
        const data = event.slice(6);
        if (data === "[DONE]") {
          done = true;
          continue;
        }
        const chunk = JSON.parse(data);
        if (chunk.error) failed = true;
        if (ttftMs === null && chunk.choices?.[0]?.text) ttftMs = performance.now() - t0;
        if (chunk.usage) got = chunk.usage.completion_tokens;
      }
    }
    return { ttftMs, tokens: got, ok: done && !failed && got === tokens };
  } catch {
    return { ttftMs, tokens: 0, ok: false };
  }
}

/** Nearest-rank percentile of `values` (NaN when empty). */
export function percentile(values: number[], p: number): number {
  if (values.length === 0) return NaN;
  const sorted = [...values].sort((a, b) => a - b);
  const rank = Math.max(1, Math.ceil((p / 100) * sorted.length));
  return sorted[rank - 1];
}

/** Runs one level of concurrency against a server at `url`. */
export async function loadLevel(url: string, opts: LoadOptions): Promise<LevelResult> {
  const ttfts: number[] = [];
  let errors = 0;
  const t0 = performance.now();
  const perStream = await Promise.all(
    Array.from({ length: opts.streams }, async (_, s) => {
      const start = performance.now();
      let tokens = 0;
      for (let r = 0; r < opts.requestsPerStream; r++) {
        const prompt = PROMPTS[(s + r * opts.streams) % PROMPTS.length];
        const out = await oneRequest(
          url,
          prompt,
          opts.tokens,
          opts.apiKey,
          opts.timeoutMs ?? 300_000,
        );
        tokens += out.tokens;
        if (out.ttftMs !== null) ttfts.push(out.ttftMs);
        if (!out.ok) errors++;
      }
      return { tokens, seconds: (performance.now() - start) / 1000 };
    }),
  );
  const wallS = (performance.now() - t0) / 1000;
  const tokens = perStream.reduce((sum, s) => sum + s.tokens, 0);
  const rates = perStream.map((s) => s.tokens / s.seconds);
  return {
    streams: opts.streams,
    requests: opts.streams * opts.requestsPerStream,
    errors,
    tokens,
    wallS,
    aggregateTokS: tokens / wallS,
    perStreamTokS: {
      mean: rates.reduce((a, b) => a + b, 0) / rates.length,
      min: Math.min(...rates),
    },
    ttftMs: { p50: percentile(ttfts, 50), p99: percentile(ttfts, 99) },
  };
}

/** Runs `bench serve`. */
export async function benchServe(args: Args): Promise<void> {
  const path = args.positionals[1];
  if (!path) throw new UsageError("bench serve: give the artifact path");
  const levels = args.intList("streams", 1, 64) ?? [1, 2, 4, 8];
  const requestsPerStream = args.int("requests", 2, 1, 1000);
  const tokens = args.int("tokens", 64, 1, 1 << 16);
  const asked = args.int("parallel", Math.max(...levels), 1, 1024);
  // `parallel` is spread in so that this compiles whether or not the engine options declare it.
  const { engine, tokenizer } = await openEngine(path, "webgpu", {
    f16: true,
    ...{ parallel: asked },
  });
  const server = serve(engine, tokenizer, {
    port: 0,
    hostname: "127.0.0.1",
    parallel: asked,
    maxQueue: Math.max(...levels),
    maxTokensLimit: tokens,
    onListen: () => {},
  });
  const results: LevelResult[] = [];
  try {
    // Warm-up: every prompt once (compiles the prefill shapes the levels will use).
    const warm = await loadLevel(server.url, {
      streams: 1,
      requestsPerStream: PROMPTS.length,
      tokens: Math.min(16, tokens),
    });
    if (warm.errors > 0) throw new Error("bench serve: the warm-up request failed");
    for (const streams of levels) {
      results.push(await loadLevel(server.url, { streams, requestsPerStream, tokens }));
    }
  } finally {
    await server.shutdown();
    engine.dispose();
  }
  const baseline = results.find((r) => r.streams === 1)?.aggregateTokS ?? NaN;
  if (args.flag("json")) {
    console.log(JSON.stringify({
      artifact: path,
      parallel: server.parallel,
      parallelAsked: asked,
      tokens,
      requestsPerStream,
      levels: results,
    }));
    return;
  }
  console.log(
    `${path}: ${server.parallel} slot(s) (asked ${asked}), ${tokens} tokens per request, ${requestsPerStream} request(s) per stream`,
  );
  console.log(
    "streams  requests  errors  aggregate tok/s  ×1-stream  per-stream tok/s (min)  TTFT p50 ms  p99 ms",
  );
  for (const r of results) {
    console.log(
      [
        String(r.streams).padStart(7),
        String(r.requests).padStart(9),
        String(r.errors).padStart(7),
        r.aggregateTokS.toFixed(1).padStart(16),
        (r.aggregateTokS / baseline).toFixed(2).padStart(10),
        `${r.perStreamTokS.mean.toFixed(1)} (${r.perStreamTokS.min.toFixed(1)})`.padStart(23),
        r.ttftMs.p50.toFixed(0).padStart(12),
        r.ttftMs.p99.toFixed(0).padStart(7),
      ].join(""),
    );
  }
}
