/**
 * `moeq demo`: compiles the bundled trained Shakespeare MoE (`testdata/shakespeare-moe`) at 2.5
 * average expert bits with the paper allocator, prints the allocation and the compile time, then
 * streams generated text with the WebGPU engine (or the CPU reference when there is no adapter)
 * and prints the decode rate.
 *
 * @module
 */

import type { Args, CommandSpec } from "./args.ts";
import { loadCheckpoint } from "../compiler/checkpoint/mod.ts";
import { compileModel } from "../compiler/compile.ts";
import { openEngine } from "./model_source.ts";
import { formatAllocation } from "./format.ts";
import type { Engine } from "../runtime/api.ts";
import { UsageError } from "../schemas/errors.ts";
import type { Tokenizer } from "../runtime/tokenizer.ts";
import { GenerationClock } from "../runtime/rates.ts";

/** Where `--device auto` runs. */
type DemoDevice = "auto" | "webgpu" | "cpu";

const ROOT = new URL("../", import.meta.url);

/**
 * The bundled checkpoint and its step-0 weights (for the router-norm change Λ), found beside this
 * module; the default artifact path is relative to the working directory.
 */
function bundledPaths(): { checkpoint: string; init: string; out: string } {
  const local = ROOT.protocol === "file:";
  const at = (p: string) => (local ? decodeURIComponent(new URL(p, ROOT).pathname) : p);
  return {
    checkpoint: at("testdata/shakespeare-moe"),
    init: at("testdata/shakespeare-moe/init"),
    out: ".tmp/shakespeare-2.5.moeq",
  };
}

/** Flags of `demo`. */
export const spec: CommandSpec = {
  usage: "[--prompt TEXT] [--max-tokens N] [--temperature T] [--seed S] [--device D] [--out F]",
  summary: "compile the bundled Shakespeare MoE at 2.5 bits and generate text",
  positionals: [0, 0],
  flags: {
    prompt: { type: "string", help: "prompt text", default: "ROMEO:" },
    "max-tokens": { type: "string", help: "tokens to generate", default: "200" },
    temperature: { type: "string", help: "0 = greedy", default: "0.8" },
    seed: { type: "string", help: "sampling seed", default: "1" },
    device: {
      type: "string",
      help: "auto (WebGPU, else CPU) | webgpu | cpu (float64 reference)",
      default: "auto",
    },
    out: { type: "string", help: "artifact path", default: ".tmp/shakespeare-2.5.moeq" },
  },
};

/** Runs `demo`. */
export async function run(args: Args): Promise<void> {
  const paths = bundledPaths();
  const prompt = args.string("prompt", "ROMEO:");
  const maxTokens = args.int("max-tokens", 200, 1, 1 << 20);
  const temperature = args.number("temperature", 0.8, 0, 100);
  const seed = args.int("seed", 1, 0, 2 ** 32 - 1);
  const device = args.choice<DemoDevice>("device", ["auto", "webgpu", "cpu"], "auto");
  const out = args.string("out", paths.out);
  const dir = out.includes("/") ? out.slice(0, out.lastIndexOf("/")) : "";
  if (dir) await Deno.mkdir(dir, { recursive: true });

  // 1. Compile.
  const t0 = performance.now();
  const ir = await loadCheckpoint(paths.checkpoint);
  const init = await loadCheckpoint(paths.init);
  const result = await compileModel(ir, out, {
    expertStorage: { kind: "bits", average: 2.5 },
    allocator: "paper",
    init,
  });
  const compileMs = performance.now() - t0;
  console.log(
    `compiled ${paths.checkpoint} → ${result.path} (${(result.bytes / 2 ** 20).toFixed(2)} MiB)`,
  );
  if (result.allocation) console.log(formatAllocation(result.allocation, result.experts));
  console.log(
    `compile time: ${(compileMs / 1000).toFixed(2)} s (load + passes + quantize + emit; passes ${
      result.timings.passes.toFixed(0)
    } ms)`,
  );

  // 2. Open the engine: WebGPU, or the CPU reference when there is no adapter.
  let used: "webgpu" | "cpu" = device === "cpu" ? "cpu" : "webgpu";
  if (device === "auto") {
    const missing = await missingAdapter();
    if (missing) {
      console.error(`moeq: note: ${missing}; using --device cpu (the float64 reference)`);
      used = "cpu";
    }
  }
  const opened: { engine: Engine; tokenizer: Tokenizer } = await openEngine(out, used);
  const { engine, tokenizer } = opened;

  // 3. Generate, streaming.
  try {
    const ids = tokenizer.encode(prompt);
    if (ids.length === 0) throw new UsageError("demo: --prompt is empty");
    console.log(`\n--- ${used}, temperature ${temperature}, seed ${seed} ---`);
    const enc = new TextEncoder();
    const decoder = tokenizer.createStreamDecoder();
    await Deno.stdout.write(enc.encode(prompt));
    const clock = new GenerationClock();
    let count = 0;
    for await (
      const id of engine.generate(ids, { maxTokens, temperature, seed })
    ) {
      clock.received();
      count++;
      await Deno.stdout.write(enc.encode(decoder.push(id)));
    }
    await Deno.stdout.write(enc.encode(decoder.flush() + "\n"));
    const r = clock.rates();
    const [rate, what] = r?.decodeTokensPerS != null
      ? [r.decodeTokensPerS, "decode, after the first id"]
      : [r?.endToEndTokensPerS ?? 0, "end to end"];
    console.log(
      `---\n${count} tokens, ${rate.toFixed(1)} tokens/s on ${used} (${what}; first token after ${
        (r?.ttftMs ?? 0).toFixed(0)
      } ms, all after ${(r?.totalMs ?? 0).toFixed(0)} ms)`,
    );
  } finally {
    engine.dispose();
  }
}

/** Why WebGPU cannot be used here (no navigator.gpu, no adapter), or null when an adapter exists. */
async function missingAdapter(): Promise<string | null> {
  const gpu = (globalThis.navigator as Navigator | undefined)?.gpu;
  if (!gpu) return "WebGPU is not available (navigator.gpu is missing)";
  try {
    return (await gpu.requestAdapter()) ? null : "no WebGPU adapter found";
  } catch (e) {
    return `requestAdapter failed: ${(e as Error).message.split("\n")[0]}`;
  }
}
