/**
 * Crash safety of `cli.ts compile`: SIGKILL in the middle of writing leaves the destination
 * absent (or, when it existed, byte-for-byte unchanged); write failures (missing directory,
 * destination is a directory, disk full) are one-line IoErrors with exit 7 and no leftovers.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { writeSyntheticCheckpoint } from "../compiler/checkpoint/testing.ts";
import { checkCase, IO_CASES } from "./reliability_cases.ts";

for (const c of IO_CASES) {
  Deno.test(`reliability/io: ${c.id} (${c.title}) -> exit ${c.code}`, async () => {
    await checkCase(c);
  });
}

/** ~50 MB of f32 weights: 2 layers x 8 experts x 3 x 256 x 1024, so the emit is I/O-bound. */
const BIG: Record<string, unknown> = {
  model_type: "mixtral",
  vocab_size: 256,
  hidden_size: 256,
  intermediate_size: 1024,
  num_hidden_layers: 2,
  num_attention_heads: 4,
  num_key_value_heads: 2,
  num_local_experts: 8,
  num_experts_per_tok: 2,
  rope_theta: 10000,
  rms_norm_eps: 1e-5,
  max_position_embeddings: 64,
  tie_word_embeddings: false,
};

const CLI = new URL("../cli.ts", import.meta.url).pathname;

/** Starts an f32 compile, SIGKILLs it once its temp file holds > 1 MiB; returns the dir listing. */
async function killMidWrite(ckpt: string, dir: string, dest: string): Promise<string[]> {
  const child = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      CLI,
      "compile",
      ckpt,
      "-o",
      dest,
      "--expert-bits",
      "f32",
      "--dense-bits",
      "f32",
      "--quiet",
    ],
    stdout: "null",
    stderr: "null",
  }).spawn();
  let killed = false;
  try {
    const t0 = performance.now();
    while (performance.now() - t0 < 60_000) {
      const temp = [...Deno.readDirSync(dir)].find((e) => e.name.startsWith("out.moeq.tmp-"));
      if (temp && Deno.statSync(join(dir, temp.name)).size > 1 << 20) {
        child.kill("SIGKILL");
        killed = true;
        break;
      }
      await new Promise((r) => setTimeout(r, 2));
    }
  } finally {
    if (!killed) child.kill("SIGKILL");
  }
  const status = await child.status;
  assert.ok(killed, "the temp file never grew past 1 MiB");
  assert.equal(status.signal, "SIGKILL", `compile ended before the kill (code ${status.code})`);
  return [...Deno.readDirSync(dir)].map((e) => e.name).sort();
}

Deno.test("reliability/sigkill: killing compile mid-write leaves no destination", async () => {
  const dir = await Deno.makeTempDir({ prefix: "moeq-rel-kill-" });
  try {
    const ckpt = join(dir, "..", `${dir.split("/").pop()}-ckpt`);
    await writeSyntheticCheckpoint(ckpt, BIG, { seed: 3 });
    try {
      const dest = join(dir, "out.moeq");
      const left = await killMidWrite(ckpt, dir, dest);
      // Only the killed process's temp file remains (nothing can remove it after SIGKILL).
      assert.equal(left.length, 1, left.join(", "));
      assert.match(left[0], /^out\.moeq\.tmp-[0-9a-z]+$/);

      // A pre-existing destination survives a kill unchanged.
      await Deno.remove(join(dir, left[0]));
      const before = new TextEncoder().encode("previous artifact, must survive\n".repeat(100));
      await Deno.writeFile(dest, before);
      const mtime = Deno.statSync(dest).mtime;
      const left2 = await killMidWrite(ckpt, dir, dest);
      assert.equal(left2.length, 2, left2.join(", "));
      assert.deepEqual(await Deno.readFile(dest), before);
      assert.deepEqual(Deno.statSync(dest).mtime, mtime);
    } finally {
      await Deno.remove(ckpt, { recursive: true });
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
