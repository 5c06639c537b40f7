/**
 * `moeq run <artifact> --prompt "..." | --ids 1,2,3 [--max-tokens N] [--temperature T] ...`.
 * When the model has a chat template (gpt-oss's harmony, ...), `--prompt` is one user turn
 * rendered through it, ending with the assistant's header, and the reply is printed; `--raw`
 * feeds the text as is and prints prompt + continuation (plain completion).
 * An encoder–decoder model's encoder reads `--prompt` (cli/seq2seq_text.ts) or `--encoder-ids`;
 * the decoder generates.
 *
 * @module
 */

import type { Args, CommandSpec } from "./args.ts";
import type { Engine, GenerateOptions } from "../runtime/api.ts";
import type { Tokenizer } from "../runtime/tokenizer.ts";
import {
  contextOption,
  type DeviceKind,
  MAX_BINDING_FLAG,
  maxBindingOption,
  openEngine,
} from "./model_source.ts";
import { UsageError } from "../schemas/errors.ts";
import { decoderText, encoderIdsOf } from "../runtime/seq2seq_text.ts";
import { GenerationClock, type GenerationRates } from "../runtime/rates.ts";
import type { WebGpuEngine } from "../runtime/engine/mod.ts";

/** Flags of `run`. */
export const spec: CommandSpec = {
  usage: "<artifact> (--prompt TEXT | --ids 1,2,3 | --encoder-ids 1,2,3) [options]",
  summary: "generate text from an artifact",
  positionals: [1, 1],
  flags: {
    prompt: {
      type: "string",
      help: "prompt text; a user turn through the model's chat template when it has one",
    },
    raw: { type: "boolean", help: "--prompt as is, without the chat template (completion)" },
    ids: { type: "string", help: "prompt token ids, comma-separated" },
    "encoder-ids": {
      type: "string",
      help: "encoder–decoder models: the encoder's token ids, comma-separated",
    },
    "max-tokens": { type: "string", help: "tokens to generate", default: "64" },
    temperature: { type: "string", help: "0 = greedy", default: "0" },
    "top-k": { type: "string", help: "keep the k most likely tokens (0 = off)", default: "0" },
    "top-p": { type: "string", help: "nucleus mass (1 = off)", default: "1" },
    seed: { type: "string", help: "sampling seed", default: "0" },
    "readback-every": { type: "string", help: "decode steps per token readback", default: "8" },
    device: {
      type: "string",
      help: "webgpu or cpu (float64 reference)",
      default: "webgpu",
    },
    "no-f16": { type: "boolean", help: "WebGPU: do not use shader-f16" },
    context: {
      type: "string",
      help: "WebGPU: KV-cache length in tokens",
      default: "max_position_embeddings, capped by the device memory",
    },
    verbose: {
      type: "boolean",
      help: "also print the device memory (weights, KV cache per token, total) on stderr",
    },
    json: {
      type: "boolean",
      help: 'print {"prompt_ids", "ids", "text", "tokens_per_s", "ttft_ms", "total_ms"}; ' +
        "tokens_per_s: ids after the first ÷ the time from the first id to the last (null " +
        "for one id); ttft_ms: request to first id (prefill + one readback)",
    },
    "max-binding": MAX_BINDING_FLAG,
  },
};

/** Runs `run`. */
export async function run(args: Args): Promise<void> {
  const prompt = args.string("prompt");
  const idsFlag = args.intList("ids");
  const encoderIdsFlag = args.intList("encoder-ids");
  const given = [prompt, idsFlag, encoderIdsFlag].filter((x) => x !== undefined).length;
  if (given !== 1) {
    throw new UsageError("run: give exactly one of --prompt, --ids and --encoder-ids");
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
    ...contextOption(args, device),
    maxBinding: maxBindingOption(args),
  });
  try {
    if (args.flag("verbose")) console.error(describeEngine(engine));
    if (engine.model.encoder) {
      await runSeq2Seq(engine, tokenizer, prompt, idsFlag ?? encoderIdsFlag, options, args);
      return;
    }
    if (encoderIdsFlag) throw new UsageError("run: --encoder-ids needs an encoder–decoder model");
    const chat = prompt !== undefined && tokenizer.hasChatTemplate && !args.flag("raw");
    const ids = idsFlag ??
      (chat
        ? tokenizer.encode(tokenizer.applyChatTemplate([{ role: "user", content: prompt }]), {
          addSpecialTokens: false,
        })
        : tokenizer.encode(prompt!));
    if (ids.length === 0) throw new UsageError("run: the prompt is empty");
    const bad = ids.find((id) => id >= engine.model.vocabSize);
    if (bad !== undefined) throw new UsageError(`--ids: ${bad} is outside the vocabulary`);
    const json = args.flag("json");
    const out: number[] = [];
    const decoder = tokenizer.createStreamDecoder();
    const enc = new TextEncoder();
    if (!json && prompt !== undefined && !chat) await Deno.stdout.write(enc.encode(prompt));
    const clock = new GenerationClock();
    for await (const id of engine.generate(ids, options)) {
      clock.received();
      out.push(id);
      if (!json) await Deno.stdout.write(enc.encode(decoder.push(id)));
    }
    const rates = clock.rates();
    if (json) {
      console.log(JSON.stringify({
        prompt_ids: ids,
        ids: out,
        text: tokenizer.decode(out),
        tokens_per_s: rates?.decodeTokensPerS ?? null,
        ttft_ms: rates?.ttftMs ?? null,
        total_ms: rates?.totalMs ?? null,
      }));
    } else {
      await Deno.stdout.write(enc.encode(decoder.flush() + "\n"));
      console.error(describeRates(out.length, rates));
    }
  } finally {
    engine.dispose();
  }
}

/** `run` for an encoder–decoder model: encoder ids in, generated decoder ids out. */
async function runSeq2Seq(
  engine: Engine,
  tokenizer: Tokenizer,
  prompt: string | undefined,
  idsFlag: number[] | undefined,
  options: GenerateOptions,
  args: Args,
): Promise<void> {
  const spec = engine.model;
  if (!engine.generateSeq2Seq) {
    throw new UsageError("run: this engine cannot run encoder–decoder models; use --device cpu");
  }
  const ids = idsFlag ?? encoderIdsOf(prompt!, spec, tokenizer);
  const bad = ids.find((id) => id >= spec.vocabSize);
  if (bad !== undefined) throw new UsageError(`--encoder-ids: ${bad} is outside the vocabulary`);
  const out: number[] = [];
  const clock = new GenerationClock();
  for await (const id of engine.generateSeq2Seq(ids, options)) {
    clock.received();
    out.push(id);
  }
  // The engines that run encoder–decoder models yield ids one by one.
  const rates = clock.rates();
  const text = decoderText(out, spec, tokenizer);
  if (args.flag("json")) {
    console.log(JSON.stringify({
      ids: out,
      text,
      tokens_per_s: rates?.decodeTokensPerS ?? null,
      ttft_ms: rates?.ttftMs ?? null,
      total_ms: rates?.totalMs ?? null,
    }));
  } else {
    console.log(text);
    console.error(describeRates(out.length, rates));
  }
}

/** The stderr summary line: ids, decode rate, TTFT and the whole request. */
export function describeRates(tokens: number, r: GenerationRates | null): string {
  if (!r) return "0 tokens";
  const decode = r.decodeTokensPerS === null
    ? "decode rate n/a (one id)"
    : `${r.decodeTokensPerS.toFixed(1)} tokens/s decode`;
  return `${tokens} tokens, ${decode}; first token after ${r.ttftMs.toFixed(0)} ms, all after ${
    r.totalMs.toFixed(0)
  } ms`;
}

const MIB = 1024 * 1024;

/** `--verbose`: the engine's device, context and the memory the device holds. */
export function describeEngine(engine: Engine): string {
  const e = engine as Partial<WebGpuEngine>;
  if (!e.deviceBytes) return "device: cpu (float64 reference)";
  const d = e.deviceBytes;
  const mib = (b: number) => `${(b / MIB).toFixed(1)} MiB`;
  return [
    `device: webgpu (${e.kernels} kernels${
      e.f16 ? ", shader-f16" : ""
    }), context ${d.context} tokens, prefill chunk ${e.prefillChunk}`,
    `device memory: weights ${mib(d.weights)} + activations ${
      mib(d.activations)
    } + KV cache ${d.kvPerToken} bytes/token × ${d.context} = ${
      mib(d.kv)
    } + RoPE tables and token buffers ${mib(d.other)} = ${mib(d.total)}`,
  ].join("\n");
}
