/**
 * `moeq logits <checkpoint-or-artifact> --ids 1,2,3 [--device cpu|webgpu] [--json]`.
 *
 * @module
 */

import type { Args, CommandSpec } from "./args.ts";
import { type DeviceKind, isDirectory, openEngine } from "./model_source.ts";
import { forward } from "../compiler/reference/mod.ts";
import { UsageError } from "../schemas/errors.ts";

/** Flags of `logits`. */
export const spec: CommandSpec = {
  usage: "<checkpoint-dir | artifact> --ids 1,2,3 [--device cpu|webgpu] [--json]",
  summary: "print logits for token ids, one row per position",
  positionals: [1, 1],
  flags: {
    ids: { type: "string", help: "comma-separated token ids (required)" },
    device: {
      type: "string",
      help: "cpu (float64 reference) or webgpu",
      default: "webgpu for artifacts, cpu for checkpoints",
    },
    "no-f16": { type: "boolean", help: "WebGPU: do not use shader-f16" },
    json: {
      type: "boolean",
      help: 'print {"logits": [[...]...]} (cpu: the float64 values, unrounded)',
    },
  },
};

/** Runs `logits`. */
export async function run(args: Args): Promise<void> {
  const path = args.positionals[0];
  const ids = args.intList("ids");
  if (!ids) throw new UsageError("logits: --ids is required");
  const dir = await isDirectory(path);
  const device = args.choice<DeviceKind>("device", ["cpu", "webgpu"], dir ? "cpu" : "webgpu");
  const { engine, spec, reference } = await openEngine(path, device, {
    f16: !args.flag("no-f16"),
  });
  try {
    const vocab = spec.vocabSize;
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
    const rows: ArrayLike<number>[] = reference
      ? forward(reference, ids)
      : await engine.logits(ids);
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
