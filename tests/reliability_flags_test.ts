/**
 * Bad command-line flags for every command (exit 2, one line naming the flag), `--debug`
 * printing the stack, and internal errors (exit 1) saying "internal error".
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { checkCase, FLAG_CASES, smallArtifact } from "./reliability_cases.ts";
import { isOneLineError, runCli } from "./cli_helpers.ts";

for (const c of FLAG_CASES) {
  Deno.test(`reliability/flags: ${c.id} (${c.title}) -> exit 2`, async () => {
    await checkCase(c);
  });
}

Deno.test("reliability/flags: every command has at least one bad-flag case", () => {
  const commands = [
    "compile",
    "inspect",
    "logits",
    "run",
    "eval",
    "study",
    "serve",
    "bench",
    "demo",
  ];
  for (const cmd of commands) {
    assert.ok(FLAG_CASES.some((c) => c.id.startsWith(`${cmd}-`)), `no flag case for ${cmd}`);
  }
});

Deno.test("reliability/flags: --debug adds the stack to a typed error", async () => {
  const dir = await Deno.makeTempDir({ prefix: "moeq-rel-debug-" });
  try {
    const missing = join(dir, "missing.moeq");
    const plain = await runCli(["inspect", missing]);
    assert.equal(plain.code, 3);
    assert.ok(isOneLineError(plain.stderr), plain.stderr);
    const r = await runCli(["inspect", missing, "--debug"]);
    assert.equal(r.code, 3);
    const lines = r.stderr.trim().split("\n");
    assert.equal(lines[0], plain.stderr.trim());
    assert.match(lines[1], /^InputError: /);
    assert.ok(lines.slice(2).some((l) => /^\s+at .*artifact\.ts:\d+/.test(l)), r.stderr);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("reliability/flags: an internal error says so, exit 1; --debug shows its stack", async () => {
  // A fault injected with --preload: console.log throws a TypeError (a bug, not a MoeqError).
  const dir = await Deno.makeTempDir({ prefix: "moeq-rel-internal-" });
  try {
    const fault = join(dir, "fault.ts");
    await Deno.writeTextFile(
      fault,
      'console.log = () => { throw new TypeError("injected fault"); };\n',
    );
    const art = join(dir, "ok.moeq");
    await Deno.writeFile(art, await smallArtifact());
    const r = await runCli(["inspect", art], { denoArgs: [`--preload=${fault}`] });
    assert.equal(r.code, 1, r.stderr);
    assert.ok(isOneLineError(r.stderr), r.stderr);
    assert.match(r.stderr, /^moeq: internal error: injected fault \(rerun with --debug/);
    const d = await runCli(["inspect", art, "--debug"], { denoArgs: [`--preload=${fault}`] });
    assert.equal(d.code, 1);
    assert.match(d.stderr, /TypeError: injected fault\n\s+at /);
    assert.match(d.stderr, /cli\/inspect\.ts:\d+/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
