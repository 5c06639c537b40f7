/**
 * `moeq bench kernels | decode <artifact> | compile | serve <artifact>`: benchmarks, printed as a
 * table (or `--json`). Each benchmark lives in its own module; this file only dispatches.
 *
 * @module
 */

import type { Args, CommandSpec } from "./args.ts";
import { UsageError } from "../schemas/errors.ts";

/** Flags of `bench` (the union of every benchmark's flags; each checks its own). */
export const spec: CommandSpec = {
  usage: "kernels | decode <artifact> | batch <artifact> | compile | serve <artifact> [options]",
  summary:
    "benchmarks: kernel bandwidth vs copy, decode vs bytes floor, continuous batching, compiler throughput, serve load",
  positionals: [1, 2],
  flags: {
    json: { type: "boolean", help: "machine-readable output" },
    tokens: { type: "string", help: "decode: tokens to generate", default: "64" },
    prompt: { type: "string", help: "decode: prompt text", default: "ROMEO:" },
    compare: { type: "string", help: "decode: a float artifact of the same model to compare" },
    shapes: {
      type: "string",
      help: "kernels: 'model' (small), 'large' (+ 4096x14336) or 'experts' (list-mode tiles)",
      default: "all",
    },
    iterations: { type: "string", help: "timed repetitions", default: "auto" },
    "size-gb": { type: "string", help: "compile: synthetic checkpoint size in GB", default: "8" },
    layers: { type: "string", help: "compile: synthetic layers (overrides size)" },
    dir: { type: "string", help: "compile: where to write the synthetic checkpoint (kept)" },
    "expert-bits": {
      type: "string",
      help: "compile: --expert-bits for the timed compile",
      default: "2.5",
    },
    quantizer: { type: "string", help: "compile: expert quantizer", default: "rtn" },
    allocator: {
      type: "string",
      help: "compile: paper | uniform | random | budget | frequency",
      default: "paper",
    },
    shape: { type: "string", help: "compile: mixtral | qwen3 (Qwen3-30B-A3B)", default: "mixtral" },
    "calibration-tokens": { type: "string", help: "compile: random calibration token ids" },
    "sensitivity-tokens": { type: "string", help: "compile: budget layer sensitivity tokens" },
    workers: { type: "string", help: "compile: worker threads", default: "auto" },
    streams: {
      type: "string",
      help: "batch, serve: concurrent stream counts per level",
      default: "1,2,4,8",
    },
    requests: { type: "string", help: "serve: requests per stream per level", default: "2" },
    parallel: { type: "string", help: "serve: engine slots (default: the most streams)" },
    rounds: { type: "string", help: "batch: alternating rounds", default: "3" },
    context: { type: "string", help: "batch: KV-cache positions per slot", default: "256" },
    "max-binding": {
      type: "string",
      help: "decode: largest buffer binding in bytes; larger matrices are split into row blocks",
      default: "the adapter's limits",
    },
  },
};

/** Runs `bench`. */
export async function run(args: Args): Promise<void> {
  const [which] = args.positionals;
  switch (which) {
    case "kernels":
      return (await import("./bench_kernels.ts")).benchKernels(args);
    case "decode":
      return (await import("./bench_decode.ts")).benchDecode(args);
    case "compile":
      return (await import("./bench_compile.ts")).benchCompile(args);
    case "serve":
      return (await import("./bench_serve.ts")).benchServe(args);
    case "batch":
      return (await import("./bench_batch.ts")).benchBatch(args);
    default:
      throw new UsageError(
        `bench: unknown benchmark "${which}" (kernels, decode, batch, compile, serve)`,
      );
  }
}
