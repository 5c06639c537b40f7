import assert from "node:assert/strict";
import { isOneLineError, runCli } from "./cli_helpers.ts";

Deno.test("cli: unknown command is a usage error (exit 2, one line)", async () => {
  const r = await runCli(["frobnicate"]);
  assert.equal(r.code, 2);
  assert.ok(isOneLineError(r.stderr), r.stderr);
  assert.match(r.stderr, /unknown command "frobnicate"/);
});

Deno.test("cli: no command prints usage and exits 2", async () => {
  const r = await runCli([]);
  assert.equal(r.code, 2);
  assert.match(r.stdout, /usage: moeq <command>/);
});
