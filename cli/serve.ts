/**
 * `moeq serve <artifact> [--port 8080] [--host 127.0.0.1]`: OpenAI-style HTTP API.
 *
 * @module
 */

import type { Args, CommandSpec } from "./args.ts";
import { type DeviceKind, MAX_BINDING_FLAG, maxBindingOption, openEngine } from "./model_source.ts";
import { serve } from "../runtime/server.ts";

/** Flags of `serve`. */
export const spec: CommandSpec = {
  usage: "<artifact> [--port 8080] [--host 127.0.0.1] [options]",
  summary: "serve an artifact: POST /v1/completions, /v1/chat/completions; GET /v1/models, /health",
  positionals: [1, 1],
  flags: {
    port: { type: "string", help: "TCP port (0 = any free port)", default: "8080" },
    host: { type: "string", help: "interface to bind", default: "127.0.0.1" },
    "model-name": { type: "string", help: "name reported by /v1/models", default: "moeq" },
    "max-queue": { type: "string", help: "requests waiting behind the running one", default: "16" },
    "max-tokens-limit": { type: "string", help: "largest max_tokens accepted", default: "4096" },
    device: { type: "string", help: "webgpu or cpu (float64 reference)", default: "webgpu" },
    "no-f16": { type: "boolean", help: "WebGPU: do not use shader-f16" },
    "max-binding": MAX_BINDING_FLAG,
  },
};

/** Runs `serve` until SIGINT/SIGTERM. */
export async function run(args: Args): Promise<void> {
  const device = args.choice<DeviceKind>("device", ["cpu", "webgpu"], "webgpu");
  const port = args.int("port", 8080, 0, 65535);
  const maxQueue = args.int("max-queue", 16, 0, 1 << 16);
  const maxTokensLimit = args.int("max-tokens-limit", 4096, 1, 1 << 20);
  const { engine, tokenizer } = await openEngine(args.positionals[0], device, {
    f16: !args.flag("no-f16"),
    maxBinding: maxBindingOption(args),
  });
  const stop = new AbortController();
  const onSignal = () => stop.abort();
  Deno.addSignalListener("SIGINT", onSignal);
  Deno.addSignalListener("SIGTERM", onSignal);
  try {
    const server = serve(engine, tokenizer, {
      port,
      hostname: args.string("host", "127.0.0.1"),
      modelName: args.string("model-name", "moeq"),
      maxQueue,
      maxTokensLimit,
      signal: stop.signal,
      onListen: (url) => console.error(`moeq: serving on ${url}`),
    });
    await server.finished;
  } finally {
    Deno.removeSignalListener("SIGINT", onSignal);
    Deno.removeSignalListener("SIGTERM", onSignal);
    engine.dispose();
  }
}
