// Held-out bits/byte of the trained shakespeare-moe (BF16) against tools/tiny_moe.py's figure.

import assert from "node:assert/strict";
import { loadCheckpoint } from "../checkpoint/mod.ts";
import { prepareReference } from "./model.ts";
import { evaluateReference } from "./eval.ts";

const DIR = new URL("../../testdata/shakespeare-moe/", import.meta.url).pathname;

Deno.test("shakespeare-moe: bits/byte over the first 16384 held-out bytes, context 128", async () => {
  const model = await prepareReference(await loadCheckpoint(DIR));
  const ref = JSON.parse(await Deno.readTextFile(`${DIR}/reference.json`));
  const text = await Deno.readFile(`${DIR}/heldout.txt`);
  const ids = Array.from(text.subarray(0, 16384));
  let windowsDone = 0;
  const t0 = performance.now();
  const r = await evaluateReference(model, ids, {
    context: 128,
    onProgress: (done, total) => {
      windowsDone = done;
      assert.equal(total, 128);
    },
  });
  const seconds = (performance.now() - t0) / 1000;
  const want = ref.bits_per_byte_16k as number;
  const rel = Math.abs(r.bitsPerToken - want) / want;
  console.log(
    `  bits/byte ${r.bitsPerToken} (tiny_moe.py f32: ${want}, rel diff ${rel.toExponential(2)}), ` +
      `${r.tokens} bytes in ${seconds.toFixed(1)} s`,
  );
  assert.equal(windowsDone, 128);
  assert.equal(r.tokens, 16383);
  assert.ok(Math.abs(r.nll / Math.LN2 / r.tokens - r.bitsPerToken) < 1e-12);
  assert.ok(rel < 0.005, `relative difference ${rel}`);
});
