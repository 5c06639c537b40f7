/**
 * Bad artifacts through `cli.ts inspect` / `run` / `eval`: each must exit with its code and
 * print one line naming the file and field. Also: byte flips at sampled positions and
 * truncations at several points, all detected through the CLI.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { ARTIFACT_CASES, checkCase, smallArtifact } from "./reliability_cases.ts";
import { isOneLineError, runCli } from "./cli_helpers.ts";
import { decodePreamble } from "../schemas/artifact.ts";

for (const c of ARTIFACT_CASES) {
  Deno.test(`reliability/artifact: ${c.id} (${c.title}) -> exit ${c.code}`, async () => {
    await checkCase(c);
  });
}

/** Runs `inspect --verify` on each file (one process per file) and returns the results. */
async function verifyAll(paths: string[]) {
  return await Promise.all(paths.map((p) => runCli(["inspect", "--verify", p])));
}

Deno.test("reliability/artifact: a flipped bit anywhere is detected by inspect --verify", async () => {
  const valid = await smallArtifact();
  const pre = decodePreamble(valid, "valid");
  // Every region: magic, version, offsets, header CRC, reserved, preamble CRC, header bytes,
  // header padding, first/middle/last segment bytes, inter-segment padding, last byte.
  const hEnd = pre.headerOffset + pre.headerLength;
  const positions = [
    0,
    5,
    9,
    17,
    25,
    33,
    45,
    61,
    pre.headerOffset + 3,
    pre.headerOffset + (pre.headerLength >> 1),
    hEnd - 1,
    hEnd + 1,
    Math.ceil(hEnd / 256) * 256,
    valid.length >> 1,
    valid.length - 1,
  ];
  const dir = await Deno.makeTempDir({ prefix: "moeq-rel-flip-" });
  try {
    const paths: string[] = [];
    for (const [i, at] of positions.entries()) {
      const b = valid.slice();
      b[at] ^= 1 << (i % 8);
      paths.push(join(dir, `flip-${at}.moeq`));
      await Deno.writeFile(paths.at(-1)!, b);
    }
    const results = await verifyAll(paths);
    for (const [i, r] of results.entries()) {
      assert.equal(r.code, 3, `flip at ${positions[i]} not detected: ${r.stdout.slice(0, 200)}`);
      assert.ok(isOneLineError(r.stderr), r.stderr);
      assert.ok(r.stderr.includes(paths[i]), r.stderr);
    }
    // The unflipped file verifies.
    await Deno.writeFile(join(dir, "ok.moeq"), valid);
    const [ok] = await verifyAll([join(dir, "ok.moeq")]);
    assert.equal(ok.code, 0, ok.stderr);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("reliability/artifact: truncation at several points is detected", async () => {
  const valid = await smallArtifact();
  const pre = decodePreamble(valid, "valid");
  const cuts = [1, 63, 64, pre.headerOffset + 10, pre.headerOffset + pre.headerLength, 4096];
  cuts.push(valid.length >> 1, valid.length - 256, valid.length - 1);
  const dir = await Deno.makeTempDir({ prefix: "moeq-rel-cut-" });
  try {
    const paths: string[] = [];
    for (const n of cuts) {
      paths.push(join(dir, `cut-${n}.moeq`));
      await Deno.writeFile(paths.at(-1)!, valid.slice(0, n));
    }
    const results = await Promise.all(paths.map((p) => runCli(["inspect", p])));
    for (const [i, r] of results.entries()) {
      assert.equal(r.code, 3, `cut at ${cuts[i]}: ${r.stderr}`);
      assert.ok(isOneLineError(r.stderr), r.stderr);
      assert.match(r.stderr, /truncated/, `cut at ${cuts[i]}`);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
