/**
 * `moeq inspect <artifact> [--json] [--verify]`.
 *
 * @module
 */

import type { Args, CommandSpec } from "./args.ts";
import { inspectArtifact } from "./inspect_report.ts";
import { openArtifact } from "../schemas/artifact.ts";

/** Flags of `inspect`. */
export const spec: CommandSpec = {
  usage: "<artifact> [--json] [--verify] [--tensors]",
  summary: "show an artifact's architecture, sizes, and per-layer/per-expert bits and scores",
  positionals: [1, 1],
  flags: {
    json: { type: "boolean", help: "machine-readable output" },
    verify: { type: "boolean", help: "also check every segment's checksum" },
    tensors: { type: "boolean", help: "text mode: list every tensor" },
  },
};

/** Runs `inspect`. */
export async function run(args: Args): Promise<void> {
  const path = args.positionals[0];
  if (args.flag("verify")) {
    const a = await openArtifact(path);
    try {
      await a.verifyAll();
    } finally {
      a.close();
    }
  }
  console.log(
    await inspectArtifact(path, { json: args.flag("json"), tensors: args.flag("tensors") }),
  );
}
