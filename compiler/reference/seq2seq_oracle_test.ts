// The encoder–decoder reference against transformers 5.18 (Switch Transformer): logits within
// 1e-9 of `hf_logits_f64strict` on testdata/hf-oracle/switch_transformers-a, greedy ids from the
// cached session equal to transformers' generate, and the capacity router refusing tokens in both
// stacks exactly as transformers does (testdata/hf-oracle-extra/switch-capacity, made by
// make_switch_capacity.py there from the same weights with expert_capacity 2).

import assert from "node:assert/strict";
import { join } from "node:path";
import { loadCheckpoint } from "../checkpoint/mod.ts";
import { prepareReference } from "./model.ts";
import { forwardSeq2Seq, ReferenceSession } from "./session.ts";
import { argmax, maxAbsError } from "./testing.ts";
import { withCapacity } from "../../schemas/testing.ts";

const TESTDATA = new URL("../../testdata/", import.meta.url).pathname;
const FIXTURE = join(TESTDATA, "hf-oracle/switch_transformers-a");
const STRICT_TOLERANCE = 1e-9;

async function json(path: string) {
  return JSON.parse(await Deno.readTextFile(path));
}

Deno.test("switch_transformers-a: decoder logits within 1e-9 of hf_logits_f64strict", async () => {
  const ref = await json(join(FIXTURE, "reference.json"));
  const model = await prepareReference(await loadCheckpoint(FIXTURE));
  const rows = forwardSeq2Seq(model, ref.encoder_input_ids, ref.decoder_input_ids);
  const err = maxAbsError(rows, ref.hf_logits_f64strict);
  console.log(`  switch_transformers-a: max |logit − hf f64strict| = ${err.toExponential(3)}`);
  assert.ok(err < STRICT_TOLERANCE, `max error ${err}`);
  assert.ok(maxAbsError(rows, ref.hf_logits) < 1e-6, "far from transformers' float64 logits");

  // The cached session, one decoder token at a time, gives the same rows (nothing is dropped).
  const session = new ReferenceSession(model);
  session.encode(ref.encoder_input_ids);
  const stepped = ref.decoder_input_ids.map((id: number) => session.step(id));
  assert.ok(maxAbsError(stepped, rows.flatMap((r) => [...r])) < 1e-12, "session vs forward");
});

Deno.test("switch_transformers-a: greedy ids from the cached session equal generate", async () => {
  const ref = await json(join(FIXTURE, "reference.json"));
  const model = await prepareReference(await loadCheckpoint(FIXTURE));
  const g = ref.greedy_decode;
  const session = new ReferenceSession(model);
  session.encode(g.encoder_input_ids);
  let logits = session.step(g.decoder_start_token_id);
  const ids: number[] = [];
  for (let i = 0; i < g.generated_ids.length; i++) {
    ids.push(argmax(logits));
    logits = session.step(ids[i]);
  }
  assert.equal(model.spec.decoderStartTokenId, g.decoder_start_token_id);
  assert.deepEqual(ids, g.generated_ids);
});

Deno.test("switch capacity 2: refused tokens and logits match transformers in both stacks", async () => {
  const ref = await json(join(TESTDATA, "hf-oracle-extra/switch-capacity/reference.json"));
  const ir = await loadCheckpoint(FIXTURE);
  const model = await prepareReference({ ...ir, spec: withCapacity(ir.spec, ref.expert_capacity) });
  // The observer sees exactly the tokens an expert accepted.
  const served: number[][] = model.moe.map(() => []);
  const rows = forwardSeq2Seq(model, ref.encoder_input_ids, ref.decoder_input_ids, {
    observer: (moe, position) => served[moe].push(position),
  });
  const err = maxAbsError(rows, ref.hf_logits_f64strict);
  console.log(
    `  switch capacity ${ref.expert_capacity}: max |logit − hf f64strict| = ${
      err.toExponential(3)
    }`,
  );
  assert.ok(err < STRICT_TOLERANCE, `max error ${err}`);
  const lengths = [ref.encoder_input_ids.length, ref.decoder_input_ids.length];
  const names = model.moe.map((m) =>
    `${m.stack}.block.${m.layer}.layer.${m.stack === "encoder" ? 1 : 2}.mlp.router`
  );
  model.moe.forEach((m, i) => {
    const all = Array.from({ length: lengths[m.stack === "encoder" ? 0 : 1] }, (_, t) => t);
    assert.deepEqual(all.filter((t) => !served[i].includes(t)), ref.dropped[names[i]], names[i]);
  });

  // Without the capacity limit the logits move far outside the tolerance.
  const unlimited = forwardSeq2Seq(
    await prepareReference(ir),
    ref.encoder_input_ids,
    ref.decoder_input_ids,
  );
  assert.ok(maxAbsError(unlimited, ref.hf_logits_f64strict) > 1e-2, "capacity changes nothing");
});
