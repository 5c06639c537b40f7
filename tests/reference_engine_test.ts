import assert from "node:assert/strict";
import { loadCheckpoint } from "../compiler/checkpoint/mod.ts";
import { forward, prepareReference } from "../compiler/reference/mod.ts";
import { referenceEngine } from "../cli/model_source.ts";

const DIR = new URL("../testdata/shakespeare-moe", import.meta.url).pathname;

Deno.test("reference engine: greedy generation continues past the context with the shift rule", async () => {
  const model = await prepareReference(await loadCheckpoint(DIR));
  const context = model.spec.maxPositions; // 128
  const keep = Math.floor(context / 2);
  const text = await Deno.readFile(`${DIR}/heldout.txt`);
  const prompt = Array.from(text.subarray(0, context - 4));
  const engine = referenceEngine(model);
  const out: number[] = [];
  for await (const id of engine.generate(prompt, { maxTokens: 10, stopIds: [] })) out.push(id);
  assert.equal(out.length, 10);
  // Independently: token i is the argmax of a fresh forward pass over the window the rule feeds.
  const history = [...prompt];
  let window = [...prompt];
  for (let i = 0; i < out.length; i++) {
    const rows = forward(model, window);
    const last = rows[rows.length - 1];
    let best = 0;
    for (let v = 1; v < last.length; v++) if (last[v] > last[best]) best = v;
    assert.equal(out[i], best, `token ${i}`);
    history.push(best);
    window = window.length >= context ? history.slice(-keep) : [...window, best];
  }
});
