/**
 * `moeq compile <checkpoint> -o <out.moeq>`: the compiler pipeline from the command line.
 *
 * @module
 */

import type { Args, CommandSpec } from "./args.ts";
import { loadCheckpoint } from "../compiler/checkpoint/mod.ts";
import { compileModel } from "../compiler/compile.ts";
import { parseSpans, type Span } from "../compiler/reference/mod.ts";
import { ALLOCATOR_NAMES, type AllocatorName } from "../compiler/passes/mod.ts";
import { QUANT_METHODS, type QuantMethod } from "../compiler/quantize/mod.ts";
import { createTokenizer } from "../runtime/tokenizer.ts";
import { UsageError } from "../schemas/errors.ts";
import { progressBar } from "./progress.ts";
import { readTextIds } from "./text.ts";
import { formatAllocation } from "./format.ts";
import { parseDenseStorage, parseExpertStorage, parseWidthList } from "./compile_flags.ts";

/** Flags of `compile`. */
export const spec: CommandSpec = {
  usage: "<checkpoint-dir> -o <out.moeq> [options]",
  summary: "compile a Hugging Face checkpoint directory into a .moeq artifact",
  positionals: [1, 1],
  flags: {
    out: { type: "string", short: "o", help: "output artifact path (required)" },
    "expert-bits": {
      type: "string",
      help: "average expert bits (e.g. 2.5), mxfp4 (every expert MXFP4) or f32|f16|bf16",
      default: "3",
    },
    "dense-bits": {
      type: "string",
      help: "non-expert matrices: 8|4|3|2|f32|f16|bf16",
      default: "8",
    },
    allocator: { type: "string", help: ALLOCATOR_NAMES.join("|"), default: "paper" },
    quantizer: {
      type: "string",
      help: `${QUANT_METHODS.join("|")} (default hqq ≤ 3 bits, else rtn)`,
    },
    "dense-quantizer": { type: "string", help: QUANT_METHODS.join("|"), default: "rtn" },
    "group-size": { type: "string", help: "columns per quantization group", default: "64" },
    zeta: { type: "string", help: "MaxVar reorder factor of the paper allocator", default: "3" },
    seed: { type: "string", help: "seed of the random allocator", default: "0" },
    levels: {
      type: "string",
      help: "bit levels of order-based allocators, e.g. 2,3 or 3,mxfp4",
    },
    widths: {
      type: "string",
      help: "candidate widths of the budget allocator (default 2,3,4; plus mxfp4 for an MXFP4 " +
        "release)",
    },
    "max-bytes": { type: "string", help: "byte budget for all experts (budget allocator)" },
    init: { type: "string", help: "step-0 checkpoint dir (router-norm change)" },
    calibration: {
      type: "string",
      help: "calibration text file (frequency, budget, gptq); encoder–decoder models: JSONL " +
        'examples {"input_ids", "labels"} as for eval --spans',
    },
    "calibration-examples": {
      type: "string",
      help: "encoder–decoder models: examples of the calibration file used",
      default: "64",
    },
    "calibration-offset": {
      type: "string",
      help: "first byte of the calibration text",
      default: "0",
    },
    "calibration-bytes": { type: "string", help: "bytes of calibration text", default: "4096" },
    "sensitivity-tokens": {
      type: "string",
      help: "calibration tokens the budget layer sensitivity is scored on (default: all)",
    },
    "allow-nonfinite": { type: "boolean", help: "read NaN/Inf weights as 0 instead of failing" },
    quiet: { type: "boolean", help: "no progress bar" },
    json: { type: "boolean", help: "print the result as JSON" },
  },
};

/** Runs `compile`. */
export async function run(args: Args): Promise<void> {
  const out = args.string("out");
  if (!out) throw new UsageError("compile: -o <out.moeq> is required");
  const expertStorage = parseExpertStorage(args.string("expert-bits", "3"));
  const denseStorage = parseDenseStorage(args.string("dense-bits", "8"));
  const allocator = args.choice("allocator", ALLOCATOR_NAMES, "paper") as AllocatorName;
  const quantizer = args.string("quantizer") === undefined
    ? undefined
    : args.choice("quantizer", QUANT_METHODS, "hqq") as QuantMethod;
  const denseQuantizer = args.choice("dense-quantizer", QUANT_METHODS, "rtn") as QuantMethod;
  if (denseQuantizer === "gptq") throw new UsageError("--dense-quantizer gptq is not supported");
  const allowNonFinite = args.flag("allow-nonfinite");
  const ir = await loadCheckpoint(args.positionals[0], { allowNonFinite });
  const initDir = args.string("init");
  const init = initDir ? await loadCheckpoint(initDir, { allowNonFinite }) : undefined;
  const calibPath = args.string("calibration");
  let calibrationIds: number[] | undefined;
  let calibrationSpans: Span[] | undefined;
  if (calibPath && ir.spec.encoder) {
    // An encoder–decoder model calibrates on teacher-forced examples (JSONL, as eval --spans).
    const spans = parseSpans(await Deno.readTextFile(calibPath), calibPath, ir.spec.vocabSize);
    calibrationSpans = spans.slice(0, args.int("calibration-examples", 64, 1));
  } else if (calibPath) {
    const tok = ir.tokenizer.tokenizerJson
      ? createTokenizer(ir.tokenizer.tokenizerJson, ir.tokenizer.chatTemplate, {
        bos: ir.spec.bosTokenId,
        eos: ir.spec.eosTokenIds,
      })
      : null;
    calibrationIds = await readTextIds(calibPath, tok, {
      offset: args.int("calibration-offset", 0, 0),
      maxBytes: args.int("calibration-bytes", 4096, 2),
    });
  }
  const maxBytesRaw = args.string("max-bytes");
  const bar = progressBar(args.flag("quiet") || args.flag("json"));
  const result = await compileModel(ir, out, {
    expertStorage,
    denseStorage,
    allocator,
    quantizer,
    denseQuantizer,
    groupSize: args.int("group-size", 64, 1),
    zeta: args.number("zeta", 3, 0),
    seed: args.int("seed", 0),
    levels: args.string("levels") ? parseWidthList(args.string("levels")!, "--levels") : undefined,
    widths: args.string("widths") ? parseWidthList(args.string("widths")!, "--widths") : undefined,
    maxBytes: maxBytesRaw === undefined ? undefined : args.int("max-bytes", 0, 1),
    init,
    calibrationIds,
    calibrationSpans,
    sensitivityTokens: args.string("sensitivity-tokens") === undefined
      ? undefined
      : args.int("sensitivity-tokens", 0, 1),
    onProgress: (phase, d, n) => bar.update(phase, d, n),
  });
  bar.done();
  if (args.flag("json")) {
    console.log(JSON.stringify({
      path: result.path,
      bytes: result.bytes,
      allocation: result.allocation,
      timings_ms: result.timings,
      allocation_peak_bytes: result.allocationPeakBytes,
      experts: result.experts,
    }));
    return;
  }
  console.log(`wrote ${result.path} (${(result.bytes / 2 ** 20).toFixed(2)} MiB)`);
  if (result.allocation) console.log(formatAllocation(result.allocation, result.experts));
  const t = result.timings;
  console.log(
    `time: ${(t.total / 1000).toFixed(2)} s (passes ${t.passes.toFixed(0)} ms = ${
      (100 * t.passes / t.total).toFixed(2)
    }%, calibration ${t.calibration.toFixed(0)} ms, costs ${t.costs.toFixed(0)} ms, emit ${
      t.emit.toFixed(0)
    } ms)`,
  );
  const allocationMs = t.passes + t.calibration + t.costs;
  const peak = result.allocationPeakBytes;
  console.log(
    `allocation stage: ${(allocationMs / 1000).toFixed(2)} s (scores, calibration, costs, ` +
      `allocator)` + (peak === null ? "" : `, peak memory ${(peak / 2 ** 20).toFixed(0)} MiB`),
  );
}
