/**
 * `moeq serve <artifact> [--port 8080] [--host 127.0.0.1] [--parallel N] [--api-key KEY]`:
 * OpenAI-style HTTP API (runtime/server.ts). The API key may come from the environment variable
 * `MOEQ_API_KEY` instead, so that it does not show in the process list. One log line per
 * request on stderr (unless `--quiet`): status, queue wait, time to first token, tokens and
 * tokens per second.
 *
 * @module
 */

import type { Args, CommandSpec } from "./args.ts";
import {
  contextOption,
  type DeviceKind,
  MAX_BINDING_FLAG,
  maxBindingOption,
  openEngine,
} from "./model_source.ts";
import { formatRequestLog, isLoopbackHost, serve } from "../runtime/server.ts";
import { UsageError } from "../schemas/errors.ts";

/** The environment variable read for the API key when `--api-key` is absent. */
export const API_KEY_ENV = "MOEQ_API_KEY";

/** Flags of `serve`. */
export const spec: CommandSpec = {
  usage: "<artifact> [--port 8080] [--host 127.0.0.1] [options]",
  summary: "serve an artifact: POST /v1/completions, /v1/chat/completions; GET /v1/models, /health",
  positionals: [1, 1],
  flags: {
    port: { type: "string", help: "TCP port (0 = any free port)", default: "8080" },
    host: { type: "string", help: "interface to bind", default: "127.0.0.1" },
    "model-name": { type: "string", help: "name reported by /v1/models", default: "moeq" },
    parallel: {
      type: "string",
      help: "requests generating at once (engine slots; the rest queue)",
      default: "1",
    },
    "max-queue": {
      type: "string",
      help: "requests waiting for a slot (429 beyond)",
      default: "16",
    },
    "max-tokens-limit": { type: "string", help: "largest max_tokens accepted", default: "4096" },
    "api-key": {
      type: "string",
      help: `require 'Authorization: Bearer KEY' on /v1/* (or set ${API_KEY_ENV})`,
    },
    quiet: { type: "boolean", help: "no per-request log lines" },
    device: { type: "string", help: "webgpu or cpu (float64 reference)", default: "webgpu" },
    "no-f16": { type: "boolean", help: "WebGPU: do not use shader-f16" },
    "max-binding": MAX_BINDING_FLAG,
    context: {
      type: "string",
      help: "WebGPU: KV-cache length in tokens per slot",
      default: "max_position_embeddings, capped by the device memory",
    },
  },
};

/** Runs `serve` until SIGINT/SIGTERM. */
export async function run(args: Args): Promise<void> {
  const device = args.choice<DeviceKind>("device", ["cpu", "webgpu"], "webgpu");
  const port = args.int("port", 8080, 0, 65535);
  const parallel = args.int("parallel", 1, 1, 1024);
  const maxQueue = args.int("max-queue", 16, 0, 1 << 16);
  const maxTokensLimit = args.int("max-tokens-limit", 4096, 1, 1 << 20);
  const hostname = args.string("host", "127.0.0.1");
  const apiKey = args.string("api-key") ?? (Deno.env.get(API_KEY_ENV) || undefined);
  if (apiKey !== undefined && apiKey.trim() === "") throw new UsageError("--api-key is empty");
  if (apiKey !== undefined && /\s/.test(apiKey)) {
    throw new UsageError("--api-key must not contain whitespace");
  }
  const { engine, tokenizer } = await openEngine(args.positionals[0], device, {
    f16: !args.flag("no-f16"),
    parallel,
    maxBinding: maxBindingOption(args),
    ...contextOption(args, device),
  });
  const stop = new AbortController();
  const onSignal = () => stop.abort();
  Deno.addSignalListener("SIGINT", onSignal);
  Deno.addSignalListener("SIGTERM", onSignal);
  try {
    const quiet = args.flag("quiet");
    const server = serve(engine, tokenizer, {
      port,
      hostname,
      modelName: args.string("model-name", "moeq"),
      parallel,
      maxQueue,
      maxTokensLimit,
      apiKey,
      signal: stop.signal,
      onListen: (url) => console.error(`moeq: serving on ${url}`),
      onRequestLog: quiet ? undefined : (entry) => console.error(formatRequestLog(entry)),
    });
    if (server.parallel < parallel) {
      console.error(
        `moeq: note: the engine runs ${server.parallel} request(s) at a time; --parallel ${parallel} admits ${server.parallel}, the rest queue`,
      );
    }
    if (!apiKey && !isLoopbackHost(hostname)) {
      console.error(
        `moeq: warning: ${hostname} is reachable from the network and no API key is set (--api-key or ${API_KEY_ENV})`,
      );
    }
    await server.finished;
  } finally {
    Deno.removeSignalListener("SIGINT", onSignal);
    Deno.removeSignalListener("SIGTERM", onSignal);
    engine.dispose();
  }
}
