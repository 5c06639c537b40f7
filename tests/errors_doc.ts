/**
 * Prints docs/ERRORS.md from the messages the reliability cases actually produce:
 * `deno run -A tests/errors_doc.ts > docs/ERRORS.md && deno fmt docs/ERRORS.md`.
 * Every case is run through `cli.ts` and checked (exit code, one line, file/field named) exactly
 * as the tests do; temp paths are shown as `<tmp>` and the writer's random temp-file suffix as
 * `XXXX`.
 *
 * @module
 */

import {
  ARTIFACT_CASES,
  checkCase,
  CHECKPOINT_CASES,
  type CliCase,
  FLAG_CASES,
  IO_CASES,
} from "./reliability_cases.ts";
import { EXIT_CODES } from "../schemas/errors.ts";

const ROOT = new URL("..", import.meta.url).pathname.replace(/\/$/, "");

/** Renders one table: case, command, exit code, exact message. */
async function table(cases: CliCase[]): Promise<string> {
  const rows = ["| case | command | exit | message (stderr) |", "| --- | --- | --- | --- |"];
  for (const c of cases) {
    const msg = (await checkCase(c))
      .replaceAll(ROOT, "<repo>")
      .replace(/\.tmp-[0-9a-z]+/g, ".tmp-XXXX");
    const args = await (async () => {
      const dir = await Deno.makeTempDir();
      try {
        return (await c.setup(dir)).map((a) =>
          a.replaceAll(dir, "<tmp>").replaceAll(ROOT, "<repo>")
        );
      } finally {
        await Deno.remove(dir, { recursive: true });
      }
    })();
    const cmd = args[0];
    const cell = (s: string) => s.replaceAll("|", "\\|");
    rows.push(`| ${cell(c.title)} | \`${cmd}\` | ${c.code} | \`${cell(msg)}\` |`);
  }
  return rows.join("\n");
}

if (import.meta.main) {
  const codes = Object.entries(EXIT_CODES).map(([k, v]) => `| ${v} | ${k} |`).join("\n");
  const out = [
    "# moeq errors",
    "",
    "Every failure a user can cause ends `cli.ts` with exactly one line on stderr, `moeq: <message>`,",
    "naming the file (and the field, tensor or flag) at fault, and a distinct exit code. `--debug`",
    "adds the stack. Any other exception is a bug and prints `moeq: internal error: ...` (exit 1).",
    "",
    "| exit | kind |",
    "| --- | --- |",
    "| 0 | success |",
    "| 1 | internal error (a bug: please report it with the `--debug` output) |",
    codes,
    "",
    "A failed `compile` never leaves the destination file or a temp file behind; an existing",
    "destination is only replaced by an atomic rename once the new artifact is complete (a",
    "`compile` killed with SIGKILL leaves at most its `<out>.tmp-XXXX` file, never a partial",
    "`<out>`).",
    "",
    "This file is generated from the reliability test cases (`tests/reliability_cases.ts`):",
    "`deno run -A tests/errors_doc.ts > docs/ERRORS.md && deno fmt docs/ERRORS.md`. `<tmp>` is the",
    "case's temp directory, `<repo>` the checkout.",
    "",
    "## Checkpoints (safetensors, shard index, config.json)",
    "",
    await table(CHECKPOINT_CASES),
    "",
    "## Artifacts",
    "",
    await table(ARTIFACT_CASES),
    "",
    "## Writing the output",
    "",
    await table(IO_CASES),
    "",
    "## Command-line flags",
    "",
    await table(FLAG_CASES),
    "",
  ];
  console.log(out.join("\n"));
}
