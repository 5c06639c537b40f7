import assert from "node:assert/strict";
import { shortTokens } from "./bench_batch.ts";

Deno.test("bench batch: the decode difference's short run is N/4, at least 2, below N", () => {
  assert.equal(shortTokens(32), 8);
  assert.equal(shortTokens(200), 50);
  assert.equal(shortTokens(7), 2);
  assert.equal(shortTokens(3), 2);
  assert.equal(shortTokens(2), 1);
});
