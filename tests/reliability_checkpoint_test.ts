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
  Deno.test(`reliability/checkpoint: ${id} with --allow-nonfinite passes the reader`, async () => {
    // The reader accepts the value; a later compiler stage still refuses to quantize it, with a
    // one-line InputError naming the tensor (not the safetensors file) and nothing written.
    const c = CHECKPOINT_CASES.find((x) => x.id === id)!;
    const dir = await Deno.makeTempDir({ prefix: "moeq-rel-nonfinite-" });
    try {
      const strict = await runCli(await c.setup(dir));
      assert.match(strict.stderr, /model\.safetensors: tensor/);
      const r = await runCli([...(await c.setup(dir)), "--allow-nonfinite"]);
      assert.equal(r.code, 3, r.stderr);
      assert.ok(isOneLineError(r.stderr), r.stderr);
      assert.doesNotMatch(r.stderr, /model\.safetensors: tensor/);
      assert.match(r.stderr, /non-finite/);
      assert.match(r.stderr, /model\.layers\.\d\.(block_sparse_moe|self_attn)\./);
      const left = [...Deno.readDirSync(dir)].map((e) => e.name).filter((n) => n !== "ckpt");
      assert.deepEqual(left, []);
      assert.ok(!(await exists(join(dir, "out.moeq"))));
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
