/**
 * `moeq logits <checkpoint-or-artifact> --ids 1,2,3 [--device cpu|webgpu] [--json]`; for an
 * encoder–decoder model `--encoder-ids 1,2,3 [--decoder-ids 0,4,5]` (the decoder positions'
 * logits; the decoder input defaults to the decoder start token).
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
import { forward, forwardSeq2Seq } from "../compiler/reference/mod.ts";
import { UsageError } from "../schemas/errors.ts";

/** Flags of `logits`. */
export const spec: CommandSpec = {
  usage: "<checkpoint-dir | artifact> (--ids 1,2,3 | --encoder-ids 1,2,3 [--decoder-ids 0,4]) " +
    "[--device cpu|webgpu] [--json]",
  summary: "print logits for token ids, one row per position",
  positionals: [1, 1],
  flags: {
    ids: { type: "string", help: "comma-separated token ids (decoder-only models)" },
    "encoder-ids": { type: "string", help: "encoder–decoder models: the encoder's token ids" },
    "decoder-ids": {
      type: "string",
      help: "encoder–decoder models: the decoder's input ids",
      default: "the decoder start token",
    },
    device: {
      type: "string",
      help: "cpu (float64 reference) or webgpu",
      default: "webgpu for artifacts, cpu for checkpoints",
    },
    "no-f16": { type: "boolean", help: "WebGPU: do not use shader-f16" },
    "max-binding": MAX_BINDING_FLAG,
    json: {
      type: "boolean",
      help: 'print {"logits": [[...]...]} (cpu: the float64 values, unrounded)',
    },
  },
};

/** Runs `logits`. */
export async function run(args: Args): Promise<void> {
  const path = args.positionals[0];
  const encoderIds = args.intList("encoder-ids");
  const dir = await isDirectory(path);
  const device = args.choice<DeviceKind>("device", ["cpu", "webgpu"], dir ? "cpu" : "webgpu");
  const { engine, spec, reference } = await openEngine(path, device, {
    f16: !args.flag("no-f16"),
    maxBinding: maxBindingOption(args),
  });
  try {
    const seq2seq = spec.encoder !== null;
    if (seq2seq && !encoderIds) {
      throw new UsageError("logits: an encoder–decoder model needs --encoder-ids");
    }
    if (!seq2seq && (encoderIds || args.intList("decoder-ids"))) {
      throw new UsageError("logits: --encoder-ids/--decoder-ids need an encoder–decoder model");
    }
    const ids = seq2seq
      ? args.intList("decoder-ids") ?? [spec.decoderStartTokenId!]
      : args.intList("ids");
    if (!ids) throw new UsageError("logits: --ids is required");
    const vocab = spec.vocabSize;
    const badEncoder = encoderIds?.find((id) => id >= vocab);
    if (badEncoder !== undefined) {
      throw new UsageError(`--encoder-ids: ${badEncoder} is outside the vocabulary (${vocab})`);
    }
    const bad = ids.find((id) => id >= vocab);
    if (bad !== undefined) {
      throw new UsageError(`--ids: ${bad} is outside the vocabulary (${vocab})`);
    }
    if (ids.length > spec.maxPositions) {
      throw new UsageError(
        `--ids: ${ids.length} ids exceed the model's ${spec.maxPositions} positions`,
      );
    }
    // On the CPU the rows are the reference's float64 values; the engine would round them to f32.
    let rows: ArrayLike<number>[];
    if (seq2seq) {
      if (reference) rows = forwardSeq2Seq(reference, encoderIds!, ids);
      else if (engine.logitsSeq2Seq) rows = await engine.logitsSeq2Seq(encoderIds!, ids);
      else throw new UsageError("logits: this engine runs no encoder–decoder models");
    } else rows = reference ? forward(reference, ids) : await engine.logits(ids);
    if (args.flag("json")) {
      console.log(JSON.stringify({ logits: rows.map((r) => Array.from(r)) }));
    } else {
      rows.forEach((r, t) => {
        let best = 0;
        for (let i = 1; i < r.length; i++) if (r[i] > r[best]) best = i;
        console.log(`position ${t} (id ${ids[t]}): argmax ${best} (${r[best].toFixed(5)})`);
      });
    }
  } finally {
    engine.dispose();
  }
}
