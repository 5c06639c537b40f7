// The reference session against the float64 logits of Hugging Face transformers
// (testdata/hf-moe/<name>/reference.json), and the KV-cache session against the full forward.

import assert from "node:assert/strict";
import { loadCheckpoint } from "../checkpoint/mod.ts";
import { moeLayers } from "../ir.ts";
import { prepareReference, type ReferenceModel } from "./model.ts";
import { forward, ReferenceSession } from "./session.ts";
import { greedy, maxAbsError } from "./testing.ts";

const FIXTURES = new URL("../../testdata/hf-moe/", import.meta.url);
const TOLERANCE = 1e-6;

interface HfReference {
  input_ids: number[];
  hf_logits: number[];
  greedy_decode?: {
    prompt_ids: number[];
    max_new_tokens: number;
    generated_ids: number[];
    step_logits: number[];
  };
  greedy_ids?: number[];
}

async function load(name: string): Promise<{ model: ReferenceModel; ref: HfReference }> {
  const dir = new URL(name, FIXTURES).pathname;
  const model = await prepareReference(await loadCheckpoint(dir));
  const ref = JSON.parse(await Deno.readTextFile(`${dir}/reference.json`)) as HfReference;
  return { model, ref };
}

for (const name of ["mixtral-packed", "mixtral-classic", "qwen2-moe"]) {
  Deno.test(`${name}: logits match transformers float64 within ${TOLERANCE}`, async () => {
    const { model, ref } = await load(name);
    const err = maxAbsError(forward(model, ref.input_ids), ref.hf_logits);
    console.log(`  ${name}: max |logit − hf| = ${err.toExponential(3)}`);
    assert.ok(err < TOLERANCE, `max error ${err}`);
  });

  Deno.test(`${name}: KV-cache session logits equal the full forward`, async () => {
    const { model, ref } = await load(name);
    const full = forward(model, ref.input_ids);
    const session = new ReferenceSession(model);
    // one chunk of two, then single steps: exercises cache growth across calls
    const rows = [...session.feed(ref.input_ids.slice(0, 2))];
    for (const id of ref.input_ids.slice(2)) rows.push(session.step(id));
    assert.equal(session.position, ref.input_ids.length);
    const err = maxAbsError(rows, full.flatMap((r) => [...r]));
    assert.ok(err < 1e-12, `session vs forward: ${err}`);
  });
}

for (const name of ["mixtral-packed", "mixtral-classic"]) {
  Deno.test(`${name}: greedy decode equals transformers generate`, async () => {
    const { model, ref } = await load(name);
    const g = ref.greedy_decode!;
    const { ids, steps } = greedy(model, g.prompt_ids, g.max_new_tokens);
    assert.deepEqual(ids, g.generated_ids);
    const err = maxAbsError(steps, g.step_logits);
    console.log(`  ${name}: greedy step logits max error ${err.toExponential(3)}`);
    assert.ok(err < TOLERANCE, `step logits error ${err}`);
  });
}

Deno.test("qwen2-moe: greedy continuation equals greedy_ids", async () => {
  const { model, ref } = await load("qwen2-moe");
  const want = ref.greedy_ids!;
  assert.deepEqual(greedy(model, ref.input_ids, want.length).ids, want);
});

Deno.test("observer sees every MoE layer and token with the normalised input", async () => {
  const dir = new URL("qwen2-moe", FIXTURES).pathname;
  const ir = await loadCheckpoint(dir);
  const model = await prepareReference(ir);
  const ref = JSON.parse(await Deno.readTextFile(`${dir}/reference.json`)) as HfReference;
  // model.moe follows moeLayers(ir): same count, same (stack, layer) order
  assert.deepEqual(
    model.moe.map((m) => [m.stack, m.layer, m.index]),
    moeLayers(ir).map((m, i) => [m.stack, m.layer, i]),
  );
  const seen: string[] = [];
  const H = model.spec.hiddenSize;
  forward(model, ref.input_ids, {
    observer(moeLayer, position, h, experts, weights) {
      seen.push(`${moeLayer}:${position}`);
      const topK = model.moe[moeLayer].spec.topK;
      assert.equal(h.length, H);
      // post-attention RMSNorm output: mean(h²)/w² is ~1 only with unit weights, so check finiteness
      assert.ok(h.every(Number.isFinite));
      assert.equal(experts.length, topK);
      assert.equal(new Set(experts).size, topK);
      assert.ok(weights.every((w) => w > 0 && w < 1));
      assert.ok(weights[0] >= weights[1]);
    },
  });
  const n = ref.input_ids.length;
  const want = model.moe.flatMap((_, m) => [...Array(n).keys()].map((t) => `${m}:${t}`));
  assert.deepEqual(seen.sort(), want.sort());
});

Deno.test("a swapped expert changes the forward pass (ReferenceModel.moe is live)", async () => {
  const { model, ref } = await load("mixtral-classic");
  const before = forward(model, ref.input_ids);
  let used = -1;
  forward(model, ref.input_ids, { observer: (m, _p, _h, e) => (used = m === 1 ? e[0] : used) });
  const moe = model.moe[1];
  const original = moe.experts[used];
  moe.experts[used] = {
    ...original,
    matrices: { ...original.matrices, down: original.matrices.down!.map((v) => 2 * v) },
  };
  const after = forward(model, ref.input_ids);
  moe.experts[used] = original;
  assert.ok(maxAbsError(after, before.flatMap((r) => [...r])) > 1e-3, "the swap had no effect");
  assert.equal(maxAbsError(forward(model, ref.input_ids), before.flatMap((r) => [...r])), 0);
});

Deno.test("bad token ids are a UsageError naming the index", async () => {
  const { model } = await load("mixtral-packed");
  assert.throws(() => forward(model, [1, 48]), { name: "UsageError", message: /ids\[1\] = 48/ });
  assert.throws(() => forward(model, [-1]), { name: "UsageError" });
});
