// The reference against transformers 5.18 on the oracle checkpoints (testdata/hf-oracle, and
// testdata/hf-oracle-extra/olmoe-clip made by make_olmoe_clip.py there): logits within 1e-9 of
// `hf_logits_f64strict` (transformers with its float32 islands lifted to float64), and greedy ids
// from the KV-cached session, one token at a time, equal to transformers' generate.

import assert from "node:assert/strict";
import { join } from "node:path";
import { loadCheckpoint } from "../checkpoint/mod.ts";
import type { ModelIR } from "../ir.ts";
import { prepareReference } from "./model.ts";
import { forward, ReferenceSession } from "./session.ts";
import { greedy, maxAbsError } from "./testing.ts";

const TESTDATA = new URL("../../testdata/", import.meta.url).pathname;
const STRICT_TOLERANCE = 1e-9;

interface OracleReference {
  input_ids: number[];
  hf_logits: number[];
  hf_logits_f64strict: number[];
  greedy_decode: { prompt_ids: number[]; generated_ids: number[] };
}

async function load(dir: string): Promise<{ ir: ModelIR; ref: OracleReference }> {
  const path = join(TESTDATA, dir);
  const ref = JSON.parse(await Deno.readTextFile(join(path, "reference.json")));
  return { ir: await loadCheckpoint(path), ref };
}

const FIXTURES = ["mixtral-a", "qwen2_moe-a", "qwen3_moe-a", "olmoe-a"]
  .flatMap((name) => [`hf-oracle/${name}`, `hf-oracle/${name}-packed`])
  .concat("hf-oracle-extra/olmoe-clip")
  .concat(["granitemoe-a", "phimoe-a", "gpt_oss-a"].map((name) => `hf-oracle/${name}`))
  .concat("hf-oracle/glm4_moe-a", "hf-oracle/ernie4_5_moe-a")
  .concat(
    ["deepseek_v2-a", "deepseek_v3-a"].flatMap((n) => [`hf-oracle/${n}`, `hf-oracle/${n}-packed`]),
  );

for (const dir of FIXTURES) {
  Deno.test(`${dir}: logits within ${STRICT_TOLERANCE} of hf_logits_f64strict`, async () => {
    const { ir, ref } = await load(dir);
    const model = await prepareReference(ir);
    const rows = forward(model, ref.input_ids);
    const err = maxAbsError(rows, ref.hf_logits_f64strict);
    console.log(`  ${dir}: max |logit − hf f64strict| = ${err.toExponential(3)}`);
    assert.ok(err < STRICT_TOLERANCE, `max error ${err}`);

    // The KV-cached session, a chunk then single steps, gives the same rows.
    const session = new ReferenceSession(model);
    const stepped = [...session.feed(ref.input_ids.slice(0, 3))];
    for (const id of ref.input_ids.slice(3)) stepped.push(session.step(id));
    const serr = maxAbsError(stepped, rows.flatMap((r) => [...r]));
    assert.ok(serr < 1e-12, `session vs forward ${serr}`);
  });

  Deno.test(`${dir}: greedy ids from the KV-cached session equal transformers generate`, async () => {
    const { ir, ref } = await load(dir);
    const model = await prepareReference(ir);
    const g = ref.greedy_decode;
    assert.deepEqual(greedy(model, g.prompt_ids, g.generated_ids.length).ids, g.generated_ids);
  });
}

Deno.test("olmoe-clip: within 1e-5 of transformers' own float64 logits; the clamp matters", async () => {
  const { ir, ref } = await load("hf-oracle-extra/olmoe-clip");
  const rows = forward(await prepareReference(ir), ref.input_ids);
  // transformers' float32 islands alone move its logits 1.35e-6 from the strict ones here
  // (f64strict_vs_hf_max_abs_diff in reference.json), so the float64 reference cannot be closer.
  const err = maxAbsError(rows, ref.hf_logits);
  console.log(`  olmoe-clip: max |logit − hf| = ${err.toExponential(3)}`);
  assert.ok(err < 1e-5, `max error ${err}`);

  // Without the clamp the logits move far outside the tolerance: the fixture tests clip_qkv.
  const unclipped = structuredClone(ir.spec);
  for (const layer of unclipped.decoder.layers) {
    for (const b of layer.blocks) {
      if (b.kind === "attention" && b.attention.kind === "gqa") b.attention.clipQkv = null;
    }
  }
  const off = forward(await prepareReference({ ...ir, spec: unclipped }), ref.input_ids);
  assert.ok(maxAbsError(off, ref.hf_logits_f64strict) > 1e-2, "clip_qkv changes nothing");
});
