/**
 * `moeq run <artifact> --prompt "..." | --ids 1,2,3 [--max-tokens N] [--temperature T] ...`.
 *
 * @module
 */

import type { Args, CommandSpec } from "./args.ts";
import { type DeviceKind, openEngine } from "./model_source.ts";
import { UsageError } from "../schemas/errors.ts";

/** Flags of `run`. */
export const spec: CommandSpec = {
  usage: "<artifact> (--prompt TEXT | --ids 1,2,3) [options]",
  summary: "generate text from an artifact",
  positionals: [1, 1],
  flags: {
    prompt: { type: "string", help: "prompt text" },
    ids: { type: "string", help: "prompt token ids, comma-separated" },
    "max-tokens": { type: "string", help: "tokens to generate", default: "64" },
    temperature: { type: "string", help: "0 = greedy", default: "0" },
    "top-k": { type: "string", help: "keep the k most likely tokens (0 = off)", default: "0" },
    "top-p": { type: "string", help: "nucleus mass (1 = off)", default: "1" },
    seed: { type: "string", help: "sampling seed", default: "0" },
    "readback-every": { type: "string", help: "decode steps per token readback", default: "8" },
    device: { type: "string", help: "webgpu or cpu (float64 reference)", default: "webgpu" },
    "no-f16": { type: "boolean", help: "WebGPU: do not use shader-f16" },
    json: { type: "boolean", help: 'print {"ids", "text", "tokens_per_s"}' },
  },
};

/** Runs `run`. */
export async function run(args: Args): Promise<void> {
  const prompt = args.string("prompt");
  const idsFlag = args.intList("ids");
  if ((prompt === undefined) === (idsFlag === undefined)) {
    throw new UsageError("run: give exactly one of --prompt and --ids");
  }
  const device = args.choice<DeviceKind>("device", ["cpu", "webgpu"], "webgpu");
  const options = {
    maxTokens: args.int("max-tokens", 64, 1, 1 << 20),
    temperature: args.number("temperature", 0, 0, 100),
    topK: args.int("top-k", 0, 0),
    topP: args.number("top-p", 1, 0, 1),
    seed: args.int("seed", 0, 0, 2 ** 32 - 1),
    readbackEvery: args.int("readback-every", 8, 1, 1024),
  };
  const { engine, tokenizer } = await openEngine(args.positionals[0], device, {
    f16: !args.flag("no-f16"),
  });
  try {
    const ids = idsFlag ?? tokenizer.encode(prompt!);
    if (ids.length === 0) throw new UsageError("run: the prompt is empty");
    const bad = ids.find((id) => id >= engine.model.vocabSize);
    if (bad !== undefined) throw new UsageError(`--ids: ${bad} is outside the vocabulary`);
    const json = args.flag("json");
    const out: number[] = [];
    const decoder = tokenizer.createStreamDecoder();
    const enc = new TextEncoder();
    if (!json && prompt !== undefined) await Deno.stdout.write(enc.encode(prompt));
    const t0 = performance.now();
    let tFirst = 0;
    for await (const id of engine.generate(ids, options)) {
      if (out.length === 0) tFirst = performance.now();
      out.push(id);
      if (!json) await Deno.stdout.write(enc.encode(decoder.push(id)));
    }
    const t1 = performance.now();
    // Decode rate after the first token (which includes the prefill).
    const tokensPerS = out.length > 1 ? (out.length - 1) / ((t1 - tFirst) / 1000) : 0;
    if (json) {
      console.log(JSON.stringify({
        ids: out,
        text: tokenizer.decode(out),
        tokens_per_s: tokensPerS,
        prefill_ms: tFirst - t0,
      }));
    } else {
      await Deno.stdout.write(enc.encode(decoder.flush() + "\n"));
      console.error(
        `${out.length} tokens, ${tokensPerS.toFixed(1)} tokens/s (prefill + first token ${
          (tFirst - t0).toFixed(0)
        } ms)`,
      );
    }
  } finally {
    engine.dispose();
  }
}
