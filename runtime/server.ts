/**
 * An OpenAI-compatible HTTP server around one {@link Engine}, on `Deno.serve`.
 *
 * Routes: `POST /v1/completions`, `POST /v1/chat/completions` (JSON, or server-sent events with
 * `stream: true`: `data: {...}\n\n` chunks ending with `data: [DONE]\n\n`), `GET /v1/models`,
 * `GET /health`. Unknown paths get 404, wrong methods 405, and every error is JSON
 * `{error: {message, type, param, code}}`.
 *
 * Admission: up to `parallel` requests generate at once (capped at the engine's
 * {@link Engine.parallel} slots, so the engine never queues them itself); each has its own
 * sampling parameters and, when streamed, its own event stream, interleaved with the others as
 * the engine yields their ids. Further requests wait in a bounded FIFO queue (429 when it is
 * full). A client that disconnects while queued leaves the queue; one that disconnects while
 * generating cancels its request through `GenerateOptions.signal`, which frees its slot.
 * `GET /health` reports the active and queued counts: the engine's own ({@link Engine.stats})
 * when it has them, with the server's queue.
 *
 * Access control: with `apiKey`, every `/v1/*` request must carry `Authorization: Bearer <key>`
 * (compared in constant time) or gets 401 with an OpenAI-style error body; `/health` stays open.
 *
 * Request fields: `prompt` (string, [string] or token ids) / `messages`, `max_tokens`
 * (`max_completion_tokens`), `temperature` (default 1), `top_p`, `top_k` (extension), `seed`
 * (default: random), `stop` (a string, or a list of strings and token ids), `ignore_eos`
 * (extension: do not stop at the model's EOS ids), `stream`, `stream_options.include_usage`,
 * `model` (ignored), and OpenAI fields that do not change the output here (`user`, `n` = 1, zero
 * penalties). Other unknown fields are ignored.
 *
 * @module
 */

import type { Engine, GenerateOptions } from "./api.ts";
import { MoeqError, UsageError } from "../schemas/errors.ts";
import type { ChatMessage, Tokenizer } from "./tokenizer.ts";
import { createDecoderStream, encoderIdsOf } from "./seq2seq_text.ts";

/** Options for {@link serve}. */
export interface ServeOptions {
  /** TCP port (default 8080; 0 picks a free one). */
  port?: number;
  /** Interface to bind (default "127.0.0.1"). */
  hostname?: string;
  /** Name reported by /v1/models and in responses (default "moeq"). */
  modelName?: string;
  /**
   * Requests generating at once (default and cap: the engine's `parallel`, else 1). More wait in
   * the queue.
   */
  parallel?: number;
  /** Requests allowed to wait for a slot (default 16); more get 429. */
  maxQueue?: number;
  /** When set, `/v1/*` requests need `Authorization: Bearer <apiKey>` (401 otherwise). */
  apiKey?: string;
  /** Longest prompt in tokens (default: the engine's `maxContext`, else the model's maxPositions). */
  maxPromptTokens?: number;
  /** Largest accepted max_tokens (default 4096). */
  maxTokensLimit?: number;
  /** max_tokens when the request gives none (default min(256, maxTokensLimit)). */
  defaultMaxTokens?: number;
  /** Largest request body in bytes (default 1 MiB); larger gets 413. */
  maxBodyBytes?: number;
  /** Aborting it shuts the server down. */
  signal?: AbortSignal;
  /** Called once listening (default: log the URL to stderr). */
  onListen?: (url: string) => void;
  /**
   * Called once per completion request when it ends, refused ones included (default: nothing);
   * {@link formatRequestLog} makes the log line.
   */
  onRequestLog?: (entry: RequestLog) => void;
}

/**
 * What one completion request did, for the server log. Times are milliseconds from the arrival
 * of the request; the engine yields ids in readback batches, so the first ids arrive together
 * after the prefill and the first batch, and the rate counts every token over the whole time
 * from admission (the slot) to the last token, not between the first and last arrivals.
 */
export interface RequestLog {
  /** Response id ("cmpl-…", "chatcmpl-…"), or "-" when refused before one was made. */
  id: string;
  /** "/v1/completions" or "/v1/chat/completions". */
  path: string;
  /** HTTP status sent (200 for a stream that failed after starting, with `error` set). */
  status: number;
  stream: boolean;
  promptTokens: number;
  /** Ids the engine yielded (stop id included). */
  completionTokens: number;
  /** Time waiting in the queue for a slot. */
  queuedMs: number;
  /** Arrival to the first generated id (queue, prefill, first readback); null when none came. */
  ttftMs: number | null;
  /** Admission to the last generated id (or to the end when none came). */
  generationMs: number;
  /** completionTokens ÷ generationMs, per second. */
  tokensPerSecond: number;
  /** Why it failed or ended early (the error message, e.g. "request cancelled"). */
  error?: string;
}

/** One log line for a {@link RequestLog}. */
export function formatRequestLog(e: RequestLog): string {
  const ms = (v: number) => v < 10_000 ? `${v.toFixed(0)} ms` : `${(v / 1000).toFixed(1)} s`;
  const parts = [
    `moeq: ${e.status} ${e.path} ${e.id}${e.stream ? " (stream)" : ""}`,
    `prompt ${e.promptTokens} tok`,
    `queued ${ms(e.queuedMs)}`,
  ];
  if (e.completionTokens > 0 || e.ttftMs !== null) {
    parts.push(`TTFT ${e.ttftMs === null ? "-" : ms(e.ttftMs)}`);
    parts.push(
      `${e.completionTokens} tok in ${ms(e.generationMs)} = ${e.tokensPerSecond.toFixed(1)} tok/s`,
    );
  }
  return parts.join(", ") + (e.error ? `; ${e.error}` : "");
}

/** A running server. */
export interface Server {
  /** Base URL, e.g. "http://127.0.0.1:8080". */
  readonly url: string;
  /** Resolves when the server has stopped. */
  readonly finished: Promise<void>;
  /** Requests that may generate at once (the option, capped at the engine's slots). */
  readonly parallel: number;
  /** Requests generating now and requests waiting for a slot. */
  load(): { active: number; queued: number };
  /** Cancels running generations and stops the server. */
  shutdown(): Promise<void>;
}

/** An error that becomes a JSON error response. */
class HttpError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly type = "invalid_request_error",
    readonly param: string | null = null,
    readonly code: string | null = null,
  ) {
    super(message);
  }
}

/** A validated generation request. */
interface Job {
  chat: boolean;
  promptIds: number[];
  maxTokens: number;
  temperature: number;
  topP: number;
  topK: number;
  seed: number;
  stopStrings: string[];
  stopIds: number[];
  stream: boolean;
  includeUsage: boolean;
}

/** What a generation got to, kept up to date while it runs (read by the log when it ends). */
interface Progress {
  completionTokens: number;
  /** performance.now() of the first id, or null. */
  firstTokenAt: number | null;
}

type FinishReason = "stop" | "length";

/**
 * Starts serving `engine` with `tokenizer`. Returns once listening.
 */
export function serve(engine: Engine, tokenizer: Tokenizer, opts: ServeOptions = {}): Server {
  const modelName = opts.modelName ?? "moeq";
  const maxTokensLimit = opts.maxTokensLimit ?? 4096;
  const limits = {
    maxPromptTokens: opts.maxPromptTokens ?? contextOf(engine),
    maxTokensLimit,
    defaultMaxTokens: opts.defaultMaxTokens ?? Math.min(256, maxTokensLimit),
    maxBodyBytes: opts.maxBodyBytes ?? 1 << 20,
  };
  const engineSlots = Math.max(1, Math.floor(engine.parallel ?? 1));
  const parallel = Math.max(1, Math.min(Math.floor(opts.parallel ?? engineSlots), engineSlots));
  const maxQueue = opts.maxQueue ?? 16;
  const queue = createAdmission(parallel, maxQueue);
  const apiKey = opts.apiKey;
  if (apiKey !== undefined && apiKey.length === 0) {
    throw new UsageError("serve: the API key is empty");
  }
  const shutdownController = new AbortController();
  const created = Math.floor(Date.now() / 1000);
  const log = opts.onRequestLog;

  /**
   * `/health`: `active` and `queued` are the engine's own counts when it has
   * {@link Engine.stats} (slots in use; the server's queue plus calls waiting inside the engine),
   * the server's admission counts otherwise; `engine` is the engine's stats object.
   */
  function health() {
    const load = queue.load();
    const stats = engine.stats?.();
    if (!stats) return { status: "ok", ...load, parallel, max_queue: maxQueue };
    return {
      status: "ok",
      active: stats.active,
      queued: load.queued + stats.waiting,
      parallel,
      max_queue: maxQueue,
      engine: stats,
    };
  }

  async function handle(request: Request): Promise<Response> {
    const path = new URL(request.url).pathname.replace(/\/+$/, "") || "/";
    if (apiKey !== undefined && (path === "/v1" || path.startsWith("/v1/"))) {
      const refused = checkAuthorization(request.headers.get("authorization"), apiKey);
      if (refused) return errorResponse(refused, { "www-authenticate": "Bearer" });
    }
    const routes: Record<string, string> = {
      "/health": "GET",
      "/v1/models": "GET",
      "/v1/completions": "POST",
      "/v1/chat/completions": "POST",
    };
    const method = routes[path];
    if (!method) return errorResponse(new HttpError(404, `no route ${path}`, "not_found_error"));
    if (request.method !== method) {
      const error = new HttpError(405, `${request.method} ${path} is not allowed`);
      return errorResponse(error, { allow: method });
    }
    if (path === "/health") return json(health());
    if (path === "/v1/models") {
      return json({
        object: "list",
        data: [{ id: modelName, object: "model", created, owned_by: "moeq" }],
      });
    }
    const arrival = performance.now();
    let job: Job | null = null;
    try {
      const body = await readJson(request, limits.maxBodyBytes);
      job = parseJob(body, path === "/v1/chat/completions", tokenizer, engine, limits);
      return await run(request, path, job, arrival);
    } catch (e) {
      // Refused before generating (bad request, full queue, gone while queued).
      const error = toHttpError(e);
      log?.({
        id: "-",
        path,
        status: error.status,
        stream: job?.stream ?? false,
        promptTokens: job?.promptIds.length ?? 0,
        completionTokens: 0,
        queuedMs: performance.now() - arrival,
        ttftMs: null,
        generationMs: 0,
        tokensPerSecond: 0,
        error: error.message,
      });
      return errorResponse(error);
    }
  }

  /** Waits for a slot, then answers `job` as JSON or as an event stream. */
  async function run(request: Request, path: string, job: Job, arrival: number): Promise<Response> {
    // Cancelled by a client disconnect or by shutdown. Listeners are removed when the request is
    // done, as Deno's legacy behaviour also aborts request.signal after a successful response.
    const cancelController = new AbortController();
    const cancel = cancelController.signal;
    const abort = () => cancelController.abort();
    request.signal.addEventListener("abort", abort);
    shutdownController.signal.addEventListener("abort", abort);
    const unlink = () => {
      request.signal.removeEventListener("abort", abort);
      shutdownController.signal.removeEventListener("abort", abort);
    };
    const turn = queue.acquire(cancel);
    if (!turn) {
      unlink();
      throw new HttpError(429, "the server is busy: request queue is full", "rate_limit_error");
    }
    const releaseTurn = await turn.catch(() => null);
    if (!releaseTurn) {
      unlink();
      throw new HttpError(499, "request cancelled while queued", "cancelled");
    }
    const admitted = performance.now();
    const id = `${job.chat ? "chatcmpl" : "cmpl"}-${crypto.randomUUID()}`;
    const progress: Progress = { completionTokens: 0, firstTokenAt: null };
    const release = (status: number, error?: HttpError) => {
      unlink();
      releaseTurn();
      if (!log) return;
      const end = performance.now();
      const generationMs = Math.max(0, end - admitted);
      log({
        id,
        path,
        status,
        stream: job.stream,
        promptTokens: job.promptIds.length,
        completionTokens: progress.completionTokens,
        queuedMs: admitted - arrival,
        ttftMs: progress.firstTokenAt === null ? null : progress.firstTokenAt - arrival,
        generationMs,
        tokensPerSecond: generationMs > 0 ? progress.completionTokens / (generationMs / 1000) : 0,
        ...(error === undefined ? {} : { error: error.message }),
      });
    };
    const base = {
      id,
      object: job.chat ? "chat.completion" : "text_completion",
      created: Math.floor(Date.now() / 1000),
      model: modelName,
    };

    if (!job.stream) {
      let out;
      try {
        out = await generate(engine, tokenizer, job, cancel, progress, () => {});
      } catch (e) {
        const error = toHttpError(e);
        release(error.status, error);
        return errorResponse(error); // logged by release
      }
      release(200);
      const choice = job.chat
        ? {
          index: 0,
          message: { role: "assistant", content: out.text },
          finish_reason: out.reason,
        }
        : { index: 0, text: out.text, logprobs: null, finish_reason: out.reason };
      return json({ ...base, choices: [choice], usage: usage(job, out.completionTokens) });
    }

    const signal = cancel;
    const encoder = new TextEncoder();
    const chunkBase = { ...base, object: job.chat ? "chat.completion.chunk" : "text_completion" };
    const chunk = (piece: string | null, reason: FinishReason | null) =>
      job.chat
        ? {
          ...chunkBase,
          choices: [{
            index: 0,
            delta: piece === null ? {} : { content: piece },
            finish_reason: reason,
          }],
        }
        : {
          ...chunkBase,
          choices: [{ index: 0, text: piece ?? "", logprobs: null, finish_reason: reason }],
        };
    const pump = async (controller: ReadableStreamDefaultController<Uint8Array>) => {
      const send = (data: unknown) => {
        if (signal.aborted) return;
        controller.enqueue(encoder.encode(`data: ${JSON.stringify(data)}\n\n`));
      };
      let failure: HttpError | undefined = undefined;
      try {
        if (job.chat) {
          send({
            ...chunkBase,
            choices: [{ index: 0, delta: { role: "assistant", content: "" }, finish_reason: null }],
          });
        }
        const out = await generate(
          engine,
          tokenizer,
          job,
          signal,
          progress,
          (piece) => send(chunk(piece, null)),
        );
        send(chunk(null, out.reason));
        if (job.includeUsage) {
          send({ ...chunkBase, choices: [], usage: usage(job, out.completionTokens) });
        }
        if (!signal.aborted) controller.enqueue(encoder.encode("data: [DONE]\n\n"));
      } catch (e) {
        const error = toHttpError(e);
        failure = error;
        send({
          error: { message: error.message, type: error.type, param: error.param, code: null },
        });
      } finally {
        release(failure !== undefined && signal.aborted ? 499 : 200, failure);
        try {
          controller.close();
        } catch {
          // the client is gone
        }
      }
    };
    const body = new ReadableStream<Uint8Array>({
      start(controller) {
        void pump(controller);
      },
      cancel: abort,
    });
    return new Response(body, {
      headers: {
        "content-type": "text/event-stream; charset=utf-8",
        "cache-control": "no-cache",
      },
    });
  }

  let listenUrl = "";
  const httpServer = Deno.serve({
    port: opts.port ?? 8080,
    hostname: opts.hostname ?? "127.0.0.1",
    onListen({ hostname, port }) {
      const host = hostname.includes(":") ? `[${hostname}]` : hostname;
      listenUrl = `http://${host}:${port}`;
      (opts.onListen ?? ((url) => console.error(`moeq: serving ${modelName} on ${url}`)))(
        listenUrl,
      );
    },
  }, handle);
  const addr = httpServer.addr as Deno.NetAddr;
  if (!listenUrl) {
    const host = addr.hostname.includes(":") ? `[${addr.hostname}]` : addr.hostname;
    listenUrl = `http://${host}:${addr.port}`;
  }

  let stopping: Promise<void> | null = null;
  const shutdown = () => {
    stopping ??= (async () => {
      shutdownController.abort(new Error("server shutting down"));
      await httpServer.shutdown();
    })();
    return stopping;
  };
  opts.signal?.addEventListener("abort", () => void shutdown(), { once: true });
  if (opts.signal?.aborted) void shutdown();

  return {
    url: listenUrl,
    finished: httpServer.finished,
    parallel,
    load: () => queue.load(),
    shutdown,
  };
}

/**
 * The 401 for a request whose `Authorization` header is not `Bearer <apiKey>`, or null when it
 * is. The key is compared in constant time.
 */
function checkAuthorization(header: string | null, apiKey: string): HttpError | null {
  const m = header?.match(/^\s*Bearer\s+(\S+)\s*$/i);
  if (!m) {
    return new HttpError(
      401,
      "missing API key: send the header 'Authorization: Bearer <key>'",
      "invalid_request_error",
      null,
      "invalid_api_key",
    );
  }
  if (!constantTimeEqual(m[1], apiKey)) {
    return new HttpError(
      401,
      "incorrect API key",
      "invalid_request_error",
      null,
      "invalid_api_key",
    );
  }
  return null;
}

/**
 * True when `candidate` equals `secret`. The time taken depends only on the lengths, never on
 * where the strings first differ: every byte of the candidate is compared (against the secret
 * repeated), and the length difference is folded into the result.
 */
export function constantTimeEqual(candidate: string, secret: string): boolean {
  const encoder = new TextEncoder();
  const a = encoder.encode(candidate);
  const b = encoder.encode(secret);
  if (b.length === 0) return a.length === 0;
  let diff = a.length ^ b.length;
  for (let i = 0; i < a.length; i++) diff |= a[i] ^ b[i % b.length];
  return diff === 0;
}

/** True for names and addresses that reach only this machine (127.0.0.0/8, ::1, localhost). */
export function isLoopbackHost(hostname: string): boolean {
  const h = hostname.toLowerCase().replace(/^\[(.*)\]$/, "$1");
  return h === "localhost" || h === "::1" || /^127\.\d+\.\d+\.\d+$/.test(h) ||
    /^::ffff:127\.\d+\.\d+\.\d+$/.test(h);
}

/** Runs the engine for one job; `onPiece` gets final text pieces (stop strings never leak). */
async function generate(
  engine: Engine,
  tokenizer: Tokenizer,
  job: Job,
  signal: AbortSignal,
  progress: Progress,
  onPiece: (piece: string) => void,
): Promise<{ text: string; reason: FinishReason; completionTokens: number }> {
  const stopIds = new Set(job.stopIds);
  const options: GenerateOptions = {
    maxTokens: job.maxTokens,
    temperature: job.temperature,
    topK: job.topK,
    topP: job.topP,
    seed: job.seed,
    stopIds: [...stopIds],
    signal,
  };
  // An encoder–decoder model: the prompt feeds the encoder, the decoder generates.
  const seq2seq = engine.model.encoder !== null;
  if (seq2seq && !engine.generateSeq2Seq) {
    throw new HttpError(
      400,
      "this engine does not run encoder–decoder models",
      "invalid_request_error",
    );
  }
  const decoder = seq2seq
    ? createDecoderStream(engine.model, tokenizer)
    : tokenizer.createStreamDecoder();
  // Text generated so far, and how much of it was handed to onPiece. The last
  // (longest stop string - 1) characters are held back in case they start a stop string.
  let text = "";
  let emitted = 0;
  const holdBack = Math.max(0, ...job.stopStrings.map((s) => s.length - 1));
  let completionTokens = 0;
  let reason: FinishReason = "length";

  const findStop = (): number => {
    let at = -1;
    for (const s of job.stopStrings) {
      const i = text.indexOf(s, Math.max(0, emitted - s.length));
      if (i >= 0 && (at < 0 || i < at)) at = i;
    }
    return at;
  };

  if (job.maxTokens > 0) {
    const ids = seq2seq
      ? engine.generateSeq2Seq!(job.promptIds, options)
      : engine.generate(job.promptIds, options);
    for await (const id of ids) {
      if (signal.aborted) break;
      completionTokens++;
      progress.completionTokens = completionTokens;
      progress.firstTokenAt ??= performance.now();
      if (stopIds.has(id)) {
        reason = "stop";
        break;
      }
      text += decoder.push(id);
      const at = findStop();
      if (at >= 0) {
        text = text.slice(0, at);
        reason = "stop";
        break;
      }
      const safe = text.length - holdBack;
      if (safe > emitted) {
        onPiece(text.slice(emitted, safe));
        emitted = safe;
      }
    }
  }
  if (signal.aborted) throw new HttpError(499, "request cancelled", "cancelled");
  if (reason === "length") {
    text += decoder.flush();
    const at = findStop();
    if (at >= 0) {
      text = text.slice(0, at);
      reason = "stop";
    }
  }
  if (text.length > emitted) onPiece(text.slice(emitted));
  return { text, reason, completionTokens };
}

/** The engine's context length: its `maxContext` when it has one (WebGPU engine), else the model's. */
function contextOf(engine: Engine): number {
  const maxContext = (engine as { maxContext?: unknown }).maxContext;
  return typeof maxContext === "number" ? maxContext : engine.model.maxPositions;
}

function usage(job: Job, completionTokens: number) {
  return {
    prompt_tokens: job.promptIds.length,
    completion_tokens: completionTokens,
    total_tokens: job.promptIds.length + completionTokens,
  };
}

/**
 * Admission to the engine: `slots` requests run at once, up to `maxWaiting` more wait first come
 * first served, the rest are refused.
 */
function createAdmission(slots: number, maxWaiting: number) {
  let active = 0;
  const waiting: { resolve: (release: () => void) => void }[] = [];
  const makeRelease = () => {
    let done = false;
    return () => {
      if (done) return;
      done = true;
      const next = waiting.shift();
      if (next) next.resolve(makeRelease()); // the slot passes on: `active` is unchanged
      else active--;
    };
  };
  return {
    /** A promise of a slot (rejects if `signal` aborts first), or null when the queue is full. */
    acquire(signal: AbortSignal): Promise<() => void> | null {
      if (active < slots) {
        active++;
        return Promise.resolve(makeRelease());
      }
      if (waiting.length >= maxWaiting) return null;
      return new Promise((resolve, reject) => {
        const entry = {
          resolve: (release: () => void) => {
            signal.removeEventListener("abort", onAbort);
            resolve(release);
          },
        };
        const onAbort = () => {
          const i = waiting.indexOf(entry);
          if (i >= 0) waiting.splice(i, 1);
          reject(signal.reason);
        };
        waiting.push(entry);
        signal.addEventListener("abort", onAbort, { once: true });
      });
    },
    /** Requests holding a slot and requests waiting. */
    load(): { active: number; queued: number } {
      return { active, queued: waiting.length };
    },
  };
}

/** Reads a JSON body of at most `maxBytes` (413 beyond, 400 if malformed). */
async function readJson(request: Request, maxBytes: number): Promise<unknown> {
  const tooLarge = () => new HttpError(413, `request body exceeds ${maxBytes} bytes`);
  const declared = Number(request.headers.get("content-length") ?? NaN);
  if (declared > maxBytes) throw tooLarge();
  if (!request.body) throw new HttpError(400, "request body is empty");
  const parts: Uint8Array[] = [];
  let size = 0;
  const reader = request.body.getReader();
  while (true) {
    const { done, value } = await reader.read();
    if (done) break;
    size += value.byteLength;
    if (size > maxBytes) {
      await reader.cancel().catch(() => {});
      throw tooLarge();
    }
    parts.push(value);
  }
  const bytes = new Uint8Array(size);
  let offset = 0;
  for (const p of parts) {
    bytes.set(p, offset);
    offset += p.byteLength;
  }
  try {
    return JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes));
  } catch (e) {
    throw new HttpError(400, `malformed JSON body: ${(e as Error).message}`);
  }
}

/** Validates a request body into a Job; throws HttpError(400) naming the field. */
function parseJob(
  body: unknown,
  chat: boolean,
  tokenizer: Tokenizer,
  engine: Engine,
  limits: { maxPromptTokens: number; maxTokensLimit: number; defaultMaxTokens: number },
): Job {
  if (typeof body !== "object" || body === null || Array.isArray(body)) {
    throw new HttpError(400, "request body must be a JSON object");
  }
  const b = body as Record<string, unknown>;
  const bad = (param: string, what: string) =>
    new HttpError(400, `'${param}' ${what}`, undefined, param);
  const number = (param: string, fallback: number, min: number, max: number): number => {
    const v = b[param];
    if (v === undefined || v === null) return fallback;
    if (typeof v !== "number" || !Number.isFinite(v)) throw bad(param, "must be a number");
    if (v < min || v > max) throw bad(param, `must be between ${min} and ${max}`);
    return v;
  };
  const integer = (param: string, fallback: number, min: number, max: number): number => {
    const v = number(param, fallback, min, max);
    if (!Number.isInteger(v)) throw bad(param, "must be an integer");
    return v;
  };
  const tokenId = (v: unknown, param: string): number => {
    if (typeof v !== "number" || !Number.isInteger(v) || v < 0 || v >= engine.model.vocabSize) {
      throw bad(param, `token ids must be integers in [0, ${engine.model.vocabSize})`);
    }
    return v;
  };

  // Accepted for compatibility, must not ask for anything we do not do.
  if (b.model !== undefined && typeof b.model !== "string") throw bad("model", "must be a string");
  if (b.user !== undefined && typeof b.user !== "string") throw bad("user", "must be a string");
  integer("n", 1, 1, 1);
  number("presence_penalty", 0, 0, 0);
  number("frequency_penalty", 0, 0, 0);
  if (b.logprobs !== undefined && b.logprobs !== null && b.logprobs !== false) {
    throw bad("logprobs", "is not supported");
  }
  if (b.stream !== undefined && b.stream !== null && typeof b.stream !== "boolean") {
    throw bad("stream", "must be a boolean");
  }
  let includeUsage = false;
  if (b.stream_options !== undefined && b.stream_options !== null) {
    const so = b.stream_options as Record<string, unknown>;
    if (typeof so !== "object" || Array.isArray(so)) {
      throw bad("stream_options", "must be an object");
    }
    if (so.include_usage !== undefined && typeof so.include_usage !== "boolean") {
      throw bad("stream_options.include_usage", "must be a boolean");
    }
    includeUsage = so.include_usage === true;
  }

  let promptIds: number[];
  if (chat) {
    if (b.prompt !== undefined) {
      throw bad("prompt", "is not a chat completions field (use messages)");
    }
    promptIds = tokenizer.encode(tokenizer.applyChatTemplate(parseMessages(b.messages)), {
      addSpecialTokens: false,
    });
  } else {
    if (b.messages !== undefined) throw bad("messages", "is a chat completions field (use prompt)");
    const p = b.prompt;
    const encode = (text: string) =>
      engine.model.encoder ? encoderIdsOf(text, engine.model, tokenizer) : tokenizer.encode(text);
    if (typeof p === "string") promptIds = encode(p);
    else if (Array.isArray(p) && p.length === 1 && typeof p[0] === "string") {
      promptIds = encode(p[0]);
    } else if (Array.isArray(p) && p.length > 0 && p.every((v) => typeof v === "number")) {
      promptIds = p.map((v) => tokenId(v, "prompt"));
    } else throw bad("prompt", "must be a string, a one-element list of strings, or token ids");
  }
  if (promptIds.length === 0) {
    if (tokenizer.bos === null) throw bad(chat ? "messages" : "prompt", "is empty");
    promptIds = [tokenizer.bos];
  }
  if (promptIds.length > limits.maxPromptTokens) {
    throw new HttpError(
      400,
      `prompt is ${promptIds.length} tokens, the limit is ${limits.maxPromptTokens}`,
      "invalid_request_error",
      chat ? "messages" : "prompt",
    );
  }

  const maxKey = chat && b.max_completion_tokens !== undefined
    ? "max_completion_tokens"
    : "max_tokens";
  const maxTokens = integer(maxKey, limits.defaultMaxTokens, 0, limits.maxTokensLimit);

  const stopStrings: string[] = [];
  if (b.ignore_eos !== undefined && b.ignore_eos !== null && typeof b.ignore_eos !== "boolean") {
    throw bad("ignore_eos", "must be a boolean");
  }
  const stopIds = new Set(b.ignore_eos === true ? [] : tokenizer.eos);
  const stop = b.stop;
  if (typeof stop === "string") {
    if (stop.length > 0) stopStrings.push(stop);
  } else if (Array.isArray(stop)) {
    if (stop.length > 16) throw bad("stop", "has more than 16 entries");
    for (const s of stop) {
      if (typeof s === "string") {
        if (s.length > 0) stopStrings.push(s);
      } else if (typeof s === "number") stopIds.add(tokenId(s, "stop"));
      else throw bad("stop", "entries must be strings or token ids");
    }
  } else if (stop !== undefined && stop !== null) {
    throw bad("stop", "must be a string or a list of strings and token ids");
  }

  return {
    chat,
    promptIds,
    maxTokens,
    temperature: number("temperature", 1, 0, 100),
    topP: number("top_p", 1, 0, 1),
    topK: integer("top_k", 0, 0, engine.model.vocabSize),
    seed: integer("seed", Math.floor(Math.random() * 2 ** 32), -(2 ** 53), 2 ** 53),
    stopStrings,
    stopIds: [...stopIds],
    stream: b.stream === true,
    includeUsage,
  };
}

function parseMessages(value: unknown): ChatMessage[] {
  const bad = (what: string) => new HttpError(400, `'messages' ${what}`, undefined, "messages");
  if (!Array.isArray(value) || value.length === 0) throw bad("must be a non-empty list");
  return value.map((m, i) => {
    if (typeof m !== "object" || m === null) throw bad(`[${i}] must be an object`);
    const { role, content } = m as Record<string, unknown>;
    if (typeof role !== "string") throw bad(`[${i}].role must be a string`);
    if (typeof content === "string") return { role, content };
    // Content parts: only text.
    if (Array.isArray(content)) {
      const texts = content.map((part) => {
        const p = part as Record<string, unknown>;
        if (p?.type !== "text" || typeof p.text !== "string") {
          throw bad(`[${i}].content parts must be {type: "text", text}`);
        }
        return p.text;
      });
      return { role, content: texts.join("") };
    }
    throw bad(`[${i}].content must be a string or a list of text parts`);
  });
}

function toHttpError(e: unknown): HttpError {
  if (e instanceof HttpError) return e;
  if (e instanceof MoeqError) {
    const status = e.kind === "device" || e.kind === "io" ? 500 : 400;
    return new HttpError(
      status,
      e.message,
      status === 500 ? "server_error" : "invalid_request_error",
    );
  }
  console.error("moeq serve: internal error:", e);
  return new HttpError(500, "internal server error", "server_error");
}

function json(data: unknown, status = 200, headers: Record<string, string> = {}): Response {
  return new Response(JSON.stringify(data), {
    status,
    headers: { "content-type": "application/json", ...headers },
  });
}

function errorResponse(error: HttpError, headers: Record<string, string> = {}): Response {
  const body = {
    error: { message: error.message, type: error.type, param: error.param, code: error.code },
  };
  return json(body, error.status, headers);
}
