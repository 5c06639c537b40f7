/**
 * `moeq eval <artifact> --text FILE [--context N] [--max-bytes N] [--device cpu|webgpu] [--json]`;
 * for an encoder–decoder model `--spans FILE.jsonl` (teacher-forced, compiler/reference/spans.ts).
 *
 * @module
 */

import type { Args, CommandSpec } from "./args.ts";
import {
  type DeviceKind,
  isDirectory,
  MAX_BINDING_FLAG,
  maxBindingOption,
  openEngine,
} from "./model_source.ts";
import { UsageError } from "../schemas/errors.ts";
import { evaluateSpans, forwardSeq2Seq, parseSpans } from "../compiler/reference/mod.ts";
import { openArtifact } from "../schemas/artifact.ts";
import { evaluateEngine } from "./evaluate_engine.ts";
import { progressBar } from "./progress.ts";
import { readTextIds } from "./text.ts";

/** Flags of `eval`. */
export const spec: CommandSpec = {
  usage: "<artifact | checkpoint-dir> (--text FILE | --spans FILE.jsonl) [options]",
  summary: "held-out cross-entropy: bits per byte (byte-level) or per token, and perplexity",
  positionals: [1, 1],
  flags: {
    text: { type: "string", help: "held-out text file (decoder-only models)" },
    spans: {
      type: "string",
      help: 'encoder–decoder models: JSONL of {"input_ids", "labels"}, scored teacher-forced',
    },
    context: { type: "string", help: "window length", default: "the model's max positions" },
    "max-bytes": { type: "string", help: "evaluate only the first N bytes of the text" },
    device: {
      type: "string",
      help: "webgpu or cpu (float64 reference)",
      default: "webgpu for artifacts, cpu for checkpoints",
    },
    "no-f16": { type: "boolean", help: "WebGPU: do not use shader-f16" },
    "max-binding": MAX_BINDING_FLAG,
    quiet: { type: "boolean", help: "no progress bar" },
    json: { type: "boolean", help: "print the result as JSON" },
  },
};

/** Runs `eval`. */
export async function run(args: Args): Promise<void> {
  const path = args.positionals[0];
  const text = args.string("text");
  const spansFile = args.string("spans");
  if (!text && !spansFile) throw new UsageError("eval: --text FILE or --spans FILE is required");
  if (text && spansFile) throw new UsageError("eval: give --text or --spans, not both");
  const dir = await isDirectory(path);
  const device = args.choice<DeviceKind>("device", ["cpu", "webgpu"], dir ? "cpu" : "webgpu");
  const { engine, tokenizer, spec, reference } = await openEngine(path, device, {
    f16: !args.flag("no-f16"),
    maxBinding: maxBindingOption(args),
  });
  try {
    if ((spec.encoder !== null) !== (spansFile !== undefined)) {
      throw new UsageError(
        spansFile
          ? "eval: --spans needs an encoder–decoder model"
          : "eval: an encoder–decoder model is evaluated with --spans",
      );
    }
    if (spansFile) {
      // The reference scores its float64 rows; the WebGPU engine its f32 ones.
      const logits = reference
        ? (e: number[], d: number[]) => forwardSeq2Seq(reference, e, d)
        : engine.logitsSeq2Seq?.bind(engine);
      if (!logits) throw new UsageError("eval --spans: this engine runs no encoder–decoder models");
      const spans = parseSpans(await Deno.readTextFile(spansFile), spansFile, spec.vocabSize);
      const bar = progressBar(args.flag("quiet") || args.flag("json"));
      const t0 = performance.now();
      const r = await evaluateSpans(
        logits,
        spans,
        spec.decoderStartTokenId!,
        (d, n) => bar.update("eval", d, n),
      );
      bar.done();
      const seconds = (performance.now() - t0) / 1000;
      if (args.flag("json")) {
        console.log(JSON.stringify({
          bits_per_token: r.bitsPerToken,
          perplexity: 2 ** r.bitsPerToken,
          tokens: r.tokens,
          examples: r.examples,
          device,
          seconds,
        }));
      } else {
        console.log(
          `bits per token: ${r.bitsPerToken.toFixed(4)}  perplexity ${
            (2 ** r.bitsPerToken).toFixed(3)
          }  (${r.tokens} tokens, ${r.examples} examples, ${device}, ${seconds.toFixed(1)} s)`,
        );
      }
      return;
    }
    const context = args.int("context", spec.maxPositions, 2, spec.maxPositions);
    const maxBytes = args.string("max-bytes") === undefined
      ? undefined
      : args.int("max-bytes", 0, 2);
    const byteLevel = spec.vocabSize === 256 && tokenizer.vocabSize === 256;
    const ids = await readTextIds(text!, byteLevel ? null : tokenizer, { maxBytes });
    const bar = progressBar(args.flag("quiet") || args.flag("json"));
    const t0 = performance.now();
    const r = await evaluateEngine(engine, ids, context, (d, n) => bar.update("eval", d, n));
    bar.done();
    const seconds = (performance.now() - t0) / 1000;
    let avgExpertBits: number | null = null;
    let bytes: number;
    if (dir) {
      bytes = 0;
    } else {
      const art = await openArtifact(path);
      avgExpertBits = art.summary.avgExpertBits;
      art.close();
      bytes = (await Deno.stat(path)).size;
    }
    const key = byteLevel ? "bits_per_byte" : "bits_per_token";
    if (args.flag("json")) {
      console.log(JSON.stringify({
        [key]: r.bitsPerToken,
        perplexity: r.perplexity,
        tokens: r.tokens,
        avg_expert_bits: avgExpertBits,
        bytes,
        context,
        device,
        seconds,
      }));
    } else {
      console.log(
        `${key.replaceAll("_", " ")}: ${r.bitsPerToken.toFixed(4)}  perplexity ${
          r.perplexity.toFixed(3)
        }  (${r.tokens} tokens, context ${context}, ${device}, ${seconds.toFixed(1)} s)`,
      );
    }
  } finally {
    engine.dispose();
  }
}
