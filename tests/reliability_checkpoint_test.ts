/**
 * Bad checkpoints (safetensors, shard index, config.json) through `cli.ts compile` and
 * `cli.ts logits --device cpu`: each must exit with its code, print one line naming the file
 * and field, and leave no output or temp file behind.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { checkCase, CHECKPOINT_CASES } from "./reliability_cases.ts";
import { isOneLineError, runCli } from "./cli_helpers.ts";

for (const c of CHECKPOINT_CASES) {
  Deno.test(`reliability/checkpoint: ${c.id} (${c.title}) -> exit ${c.code}`, async () => {
    await checkCase(c);
  });
}

for (const id of ["st-nan-weight", "st-inf-weight"]) {
  Deno.test(`reliability/checkpoint: ${id} with --allow-nonfinite compiles (values read as 0)`, async () => {
    const c = CHECKPOINT_CASES.find((x) => x.id === id)!;
    const dir = await Deno.makeTempDir({ prefix: "moeq-rel-nonfinite-" });
    try {
      const strict = await runCli(await c.setup(dir));
      assert.match(strict.stderr, /model\.safetensors: tensor/);
      assert.ok(isOneLineError(strict.stderr), strict.stderr);
      const args = await c.setup(dir);
      if (args[0] !== "compile") return; // only the compile cases write an artifact
      const r = await runCli([...args, "--allow-nonfinite", "--quiet"]);
      assert.equal(r.code, 0, r.stderr);
      assert.ok(await exists(join(dir, "out.moeq")));
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  });
}

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch {
    return false;
  }
}
