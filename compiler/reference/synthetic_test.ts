// The paths the Hugging Face fixtures do not exercise (q/k norm per head and over the full
// projection, dense layers, tied embeddings, head_dim ≠ hidden/heads, top-3 without
// renormalisation, q/k/v bias with a gated shared expert), against float64 logits of an
// independent PyTorch implementation: testdata/reference/make_synthetic.py → synthetic.json.

import assert from "node:assert/strict";
import type { MlpIR, ModelConfig, ModelIR, TensorRef } from "../ir_legacy.ts";
import { forward, prepareReference, ReferenceSession } from "./forward.ts";

const FIXTURE = new URL("../../testdata/reference/synthetic.json", import.meta.url);

interface JsonTensor {
  shape: number[];
  data: number[];
}
type JsonMlp = Record<"gate" | "up" | "down", JsonTensor>;
interface JsonLayer {
  [name: string]: JsonTensor | JsonMlp | JsonMlp[] | undefined;
}
interface Case {
  config: ModelConfig;
  weights: { embed: JsonTensor; lmHead: JsonTensor; finalNorm: JsonTensor; layers: JsonLayer[] };
  input_ids: number[];
  logits: number[];
}

/** An in-memory ModelIR over the JSON weights (no checkpoint loader involved). */
function buildIR(c: Case): ModelIR {
  const ref = (name: string, t: JsonTensor): TensorRef => ({
    name,
    shape: t.shape,
    dtype: "F32",
    read: () => Promise.resolve(Float32Array.from(t.data)),
  });
  const mlp = (name: string, m: JsonMlp): MlpIR => ({
    gate: ref(`${name}.gate`, m.gate),
    up: ref(`${name}.up`, m.up),
    down: ref(`${name}.down`, m.down),
  });
  const opt = (name: string, t: unknown) => (t ? ref(name, t as JsonTensor) : undefined);
  const w = c.weights;
  const embed = ref("embed", w.embed);
  return {
    config: c.config,
    embed,
    lmHead: c.config.tieWordEmbeddings ? embed : ref("lm_head", w.lmHead),
    finalNorm: ref("final_norm", w.finalNorm),
    tokenizer: { tokenizerJson: null, chatTemplate: null },
    source: FIXTURE.pathname,
    layers: w.layers.map((L, index) => {
      const p = `layers.${index}`;
      const t = (n: string) => L[n] as JsonTensor;
      return {
        index,
        inputNorm: ref(`${p}.input_norm`, t("inputNorm")),
        postAttentionNorm: ref(`${p}.post_attention_norm`, t("postAttentionNorm")),
        attention: {
          q: ref(`${p}.q`, t("q")),
          k: ref(`${p}.k`, t("k")),
          v: ref(`${p}.v`, t("v")),
          o: ref(`${p}.o`, t("o")),
          qBias: opt(`${p}.q_bias`, L.qBias),
          kBias: opt(`${p}.k_bias`, L.kBias),
          vBias: opt(`${p}.v_bias`, L.vBias),
          qNorm: opt(`${p}.q_norm`, L.qNorm),
          kNorm: opt(`${p}.k_norm`, L.kNorm),
        },
        ffn: L.mlp ? { kind: "dense" as const, mlp: mlp(`${p}.mlp`, L.mlp as JsonMlp) } : {
          kind: "moe" as const,
          router: ref(`${p}.router`, t("router")),
          experts: (L.experts as JsonMlp[]).map((e, i) => ({
            ...mlp(`${p}.experts.${i}`, e),
            layer: index,
            index: i,
          })),
          shared: L.shared ? mlp(`${p}.shared`, L.shared as JsonMlp) : undefined,
          sharedGate: opt(`${p}.shared_gate`, L.sharedGate),
        },
      };
    }),
  };
}

const cases = JSON.parse(await Deno.readTextFile(FIXTURE)) as Record<string, Case>;

for (const [name, c] of Object.entries(cases)) {
  Deno.test(`synthetic ${name}: logits match the PyTorch float64 implementation`, async () => {
    const model = await prepareReference(buildIR(c));
    const rows = forward(model, c.input_ids);
    const V = c.config.vocabSize;
    let err = 0;
    rows.forEach((row, t) =>
      row.forEach((x, i) => (err = Math.max(err, Math.abs(x - c.logits[t * V + i]))))
    );
    console.log(`  ${name}: max |logit − torch| = ${err.toExponential(3)}`);
    assert.ok(err < 1e-10, `max error ${err}`);

    // and incrementally, one token at a time
    const session = new ReferenceSession(model);
    let serr = 0;
    c.input_ids.forEach((id, t) => {
      const row = session.step(id);
      row.forEach((x, i) => (serr = Math.max(serr, Math.abs(x - rows[t][i]))));
    });
    assert.ok(serr < 1e-12, `session vs forward ${serr}`);
  });
}

Deno.test("prepareReference: a misshapen or missing tensor is an InputError naming it", async () => {
  const c = structuredClone(cases["qwen3-like"]);
  c.weights.layers[1].qNorm = { shape: [7], data: new Array(7).fill(1) };
  await assert.rejects(prepareReference(buildIR(c)), {
    name: "InputError",
    message: /layers\.1\.q_norm has shape \[7\], config implies \[8\]/,
  });
  const d = structuredClone(cases["olmoe-like"]);
  delete d.weights.layers[0].kBias;
  await assert.rejects(prepareReference(buildIR(d)), {
    name: "InputError",
    message: /missing tensor: layer 0 k bias/,
  });
});
