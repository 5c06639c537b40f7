/**
 * Regenerates `schemas/generated/artifact_generated.ts` from `schemas/artifact.fbs`:
 * runs `flatc --ts --ts-flat-files`, marks the output as generated for `deno lint` (flatc emits
 * `any` in its string accessors) and formats it with `deno fmt`.
 *
 * Usage: `deno run -A schemas/gen.ts [outDir]` (default `schemas/generated`).
 *
 * @module
 */

/** The schema file, relative to the repository root. */
export const SCHEMA_PATH = new URL("./artifact.fbs", import.meta.url);

/** Name of the file flatc writes for `artifact.fbs` with `--ts-flat-files`. */
export const GENERATED_NAME = "artifact_generated.ts";

const LINT_HEADER = "// deno-lint-ignore-file no-explicit-any\n";

/** Runs flatc + post-processing into `outDir`; returns the path of the generated file. */
export async function generate(outDir: string): Promise<string> {
  const schema = SCHEMA_PATH.pathname;
  const flatc = await new Deno.Command("flatc", {
    args: ["--ts", "--ts-flat-files", "-o", outDir, schema],
    stdout: "piped",
    stderr: "piped",
  }).output();
  if (!flatc.success) {
    throw new Error(`flatc failed: ${new TextDecoder().decode(flatc.stderr).trim()}`);
  }
  const file = `${outDir}/${GENERATED_NAME}`;
  const text = await Deno.readTextFile(file);
  await Deno.writeTextFile(file, LINT_HEADER + text);
  const fmt = await new Deno.Command(Deno.execPath(), {
    args: ["fmt", "--quiet", "--line-width", "100", file],
    stdout: "piped",
    stderr: "piped",
  }).output();
  if (!fmt.success) {
    throw new Error(`deno fmt failed: ${new TextDecoder().decode(fmt.stderr).trim()}`);
  }
  return file;
}

if (import.meta.main) {
  const out = Deno.args[0] ?? new URL("./generated", import.meta.url).pathname;
  console.log(await generate(out));
}
