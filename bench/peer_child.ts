/**
 * One cold measurement process of `bench peer`: loads one model on one engine, runs one warm-up
 * request (the prompt, 2 tokens: pipelines and shaders compile on first use in both engines), then
 * request A (the prompt, 1 token) and request B (the prompt, N tokens), each from an empty
 * cache, and prints one JSON line:
 *
 * - prefill tok/s = prompt tokens ÷ wall(A) (the prompt pass plus the first token, read back);
 * - decode tok/s within B: the ids after the first readback ÷ the time from the first readback to
 *   the last ({@link decodeRate}; llama.cpp reads back each token, moeq a batch at a time);
 * - the greedy ids of B, the load time, and which backend and device ran.
 *
 * Usage: `deno run -A bench/peer_child.ts moeq <artifact> <ids> <tokens>` or
 * `deno run -A --node-modules-dir=manual bench/peer_child.ts llama-vulkan|llama-cpu <gguf> <ids>
 * <tokens> [threads]` (node-llama-cpp from bench/.deps; `GGML_VK_VISIBLE_DEVICES=0` lets its
 * Vulkan build accept a CPU device such as lavapipe).
 *
 * @module
 */

/** What one child process measured. */
export interface ChildResult {
  engine: string;
  /** The backend that ran, as the engine reports it. */
  backend: string;
  device: string;
  loadMs: number;
  /** Wall time of the warm-up request (the prompt, 2 tokens), compilation included. */
  firstMs: number;
  prefillMs: number;
  totalMs: number;
  promptTokens: number;
  tokens: number;
  prefillTokS: number;
  decodeTokS: number;
  ids: number[];
}

/** Generates up to n ids, calling `arrived` as each id reaches the host. */
type Request = (n: number, arrived: (id: number) => void) => Promise<void>;

/** Ids arriving within this many ms of the first came in the same readback. */
const SAME_READBACK_MS = 0.5;

async function timed(request: Request, n: number) {
  const ids: number[] = [], at: number[] = [];
  const t0 = performance.now();
  await request(n, (id) => {
    at.push(performance.now());
    ids.push(id);
  });
  const ms = performance.now() - t0;
  if (ids.length !== n) throw new Error(`generated ${ids.length} of ${n} tokens`);
  return { ms, ids, at };
}

/**
 * Decode tok/s within one request: the ids generated after the first readback ÷ the time from the
 * first readback to the last (llama.cpp reads back every token; moeq in batches).
 */
export function decodeRate(at: readonly number[]): number {
  let j = 1;
  while (j < at.length && at[j] - at[0] < SAME_READBACK_MS) j++;
  if (j >= at.length) return NaN;
  return (at.length - j) / ((at[at.length - 1] - at[j - 1]) / 1000);
}

async function measure(
  engine: string,
  load: () => Promise<{ backend: string; device: string; request: (ids: number[]) => Request }>,
  prompt: number[],
  tokens: number,
): Promise<ChildResult> {
  const t0 = performance.now();
  const m = await load();
  const loadMs = performance.now() - t0;
  const first = await timed(m.request(prompt), 2); // warm-up: pipelines compile on first use
  const a = await timed(m.request(prompt), 1);
  const b = await timed(m.request(prompt), tokens);
  return {
    engine,
    backend: m.backend,
    device: m.device,
    loadMs,
    firstMs: first.ms,
    prefillMs: a.ms,
    totalMs: b.ms,
    promptTokens: prompt.length,
    tokens,
    prefillTokS: prompt.length / (a.ms / 1000),
    // One readback batch only (N ≤ moeq's 8): fall back to bench decode's (N − 1) ÷ (B − A).
    decodeTokS: decodeRate(b.at) || (tokens - 1) / ((b.ms - a.ms) / 1000),
    ids: b.ids,
  };
}

async function loadMoeq(path: string) {
  const { loadModel } = await import("../runtime/mod.ts");
  const engine = await loadModel(path);
  const info = (engine.device as unknown as { adapterInfo?: GPUAdapterInfo }).adapterInfo;
  return {
    backend: `webgpu (${engine.kernels} kernels)`,
    device: info
      ? [info.vendor, info.architecture, info.description].filter(Boolean).join(" ")
      : "",
    request: (ids: number[]): Request => async (n, arrived) => {
      for await (const id of engine.generate(ids, { maxTokens: n, stopIds: [] })) arrived(id);
    },
  };
}

/** The part of node-llama-cpp's API used here. */
interface NodeLlamaCpp {
  getLlama(o: Record<string, unknown>): Promise<{
    gpu: string | false;
    getGpuDeviceNames(): Promise<string[]>;
    loadModel(o: Record<string, unknown>): Promise<{
      gpuLayers: number;
      createContext(o: Record<string, unknown>): Promise<{
        getSequence(): {
          clearHistory(): Promise<void>;
          evaluate(ids: number[], o: Record<string, unknown>): AsyncIterable<number>;
        };
      }>;
    }>;
  }>;
  LlamaLogLevel: Record<string, unknown>;
}

async function loadLlama(path: string, gpu: boolean, threads: number, context: number) {
  const where = new URL("./.deps/node_modules/node-llama-cpp/dist/index.js", import.meta.url);
  const lib = await import(where.href) as NodeLlamaCpp;
  const llama = await lib.getLlama({
    gpu: gpu ? "vulkan" : false,
    build: "never",
    skipDownload: true,
    progressLogs: false,
    logLevel: lib.LlamaLogLevel.error,
  });
  if (gpu && llama.gpu !== "vulkan") {
    throw new Error(`llama.cpp did not start its Vulkan backend (got ${llama.gpu})`);
  }
  const model = await llama.loadModel({ modelPath: path, gpuLayers: gpu ? "max" : 0 });
  // Flash attention off: node-llama-cpp 3.22's Vulkan build crashes with it on lavapipe.
  const ctx = await model.createContext({ contextSize: context, threads, flashAttention: false });
  const seq = ctx.getSequence();
  const devices = gpu ? await llama.getGpuDeviceNames() : [];
  return {
    backend: gpu ? `vulkan (${model.gpuLayers} layers offloaded)` : `cpu (${threads} threads)`,
    device: devices.join(", "),
    request: (ids: number[]): Request => async (n, arrived) => {
      await seq.clearHistory();
      let got = 0;
      for await (const t of seq.evaluate(ids, { temperature: 0 })) {
        arrived(t);
        if (++got >= n) break;
      }
    },
  };
}

if (import.meta.main) {
  const [engine, path, idsText, tokensText, threadsText] = Deno.args;
  const ids = idsText.split(",").map(Number);
  const tokens = Number(tokensText);
  const threads = Number(threadsText ?? 2);
  const context = Math.ceil((ids.length + tokens) / 256) * 256;
  const load = engine === "moeq"
    ? () => loadMoeq(path)
    : () => loadLlama(path, engine === "llama-vulkan", threads, context);
  const result = await measure(engine, load, ids, tokens);
  console.log(JSON.stringify(result));
  // node-llama-cpp's native threads can keep the process alive.
  Deno.exit(0);
}
