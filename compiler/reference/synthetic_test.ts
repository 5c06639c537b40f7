// The paths the Hugging Face fixtures do not exercise (q/k norm per head and over the full
// projection, dense layers, tied embeddings, head_dim ≠ hidden/heads, top-3 without
// renormalisation, q/k/v bias with a gated shared expert), against float64 logits of an
// independent PyTorch implementation: testdata/reference/make_synthetic.py → synthetic.json.
// The JSON keeps the flat config record of that script; `describe` turns it into a ModelSpec.

import assert from "node:assert/strict";
import type { FfnSpec, MlpSpec, ModelSpec, NormSpec } from "../../schemas/model.ts";
import type { ModelIR, PlacedTensor } from "../ir.ts";
import { prepareReference } from "./model.ts";
import { forward, ReferenceSession } from "./session.ts";

const FIXTURE = new URL("../../testdata/reference/synthetic.json", import.meta.url);

interface JsonTensor {
  shape: number[];
  data: number[];
}
type JsonMlp = Record<"gate" | "up" | "down", JsonTensor>;
interface JsonLayer {
  [name: string]: JsonTensor | JsonMlp | JsonMlp[] | undefined;
}
/** make_synthetic.py's flat description of a model. */
interface JsonConfig {
  family: string;
  vocabSize: number;
  hiddenSize: number;
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  expertIntermediateSize: number;
  denseIntermediateSize: number;
  sharedIntermediateSize: number;
  sharedExpertGated: boolean;
  ropeTheta: number;
  rmsNormEps: number;
  maxPositions: number;
  tieWordEmbeddings: boolean;
  qkvBias: boolean;
  qkNorm: "none" | "head" | "full";
  layerKinds: ("moe" | "dense")[];
  routing: { numExperts: number; topK: number; normTopK: boolean };
  bosTokenId: number | null;
  eosTokenIds: number[];
}
interface Case {
  config: JsonConfig;
  weights: { embed: JsonTensor; lmHead: JsonTensor; finalNorm: JsonTensor; layers: JsonLayer[] };
  input_ids: number[];
  logits: number[];
}

/** The description make_synthetic.py's forward implements, in the block vocabulary. */
function describe(c: JsonConfig): ModelSpec {
  const norm: NormSpec = { kind: "rms", eps: c.rmsNormEps, bias: false };
  const swiglu = (intermediate: number): MlpSpec => ({
    intermediate,
    activation: { kind: "swiglu" },
    bias: false,
  });
  const moe: FfnSpec = {
    kind: "moe",
    numExperts: c.routing.numExperts,
    topK: c.routing.topK,
    router: {
      kind: "topk",
      scoring: "softmax",
      softmaxAfterTopK: false,
      normTopK: c.routing.normTopK,
      scale: 1,
      bias: false,
      selectionBias: false,
      groups: null,
    },
    expert: swiglu(c.expertIntermediateSize),
    shared: c.sharedIntermediateSize
      ? { mlp: swiglu(c.sharedIntermediateSize), gated: c.sharedExpertGated }
      : null,
  };
  const dense: FfnSpec = { kind: "dense", mlp: swiglu(c.denseIntermediateSize) };
  return {
    family: c.family,
    vocabSize: c.vocabSize,
    hiddenSize: c.hiddenSize,
    maxPositions: c.maxPositions,
    embedScale: 1,
    encoder: null,
    decoder: {
      layers: c.layerKinds.map((kind) => ({
        blocks: [
          {
            kind: "attention",
            norm,
            attention: {
              kind: "gqa",
              numHeads: c.numHeads,
              numKvHeads: c.numKvHeads,
              headDim: c.headDim,
              qkvBias: c.qkvBias,
              outBias: false,
              qkNorm: c.qkNorm,
              qkNormSpec: norm,
              clipQkv: null,
              scale: 1 / Math.sqrt(c.headDim),
              sinks: false,
              slidingWindow: null,
              causal: true,
              position: {
                kind: "rope",
                theta: c.ropeTheta,
                rotaryDim: c.headDim,
                pairing: "half",
                scaling: { kind: "none" },
              },
            },
          },
          { kind: "ffn", norm, ffn: kind === "moe" ? moe : dense },
        ],
        residualScale: 1,
      })),
      finalNorm: norm,
    },
    head: { tied: c.tieWordEmbeddings, scale: 1, bias: false },
    bosTokenId: c.bosTokenId,
    eosTokenIds: c.eosTokenIds,
    decoderStartTokenId: null,
  };
}

/** JSON layer field → tensor role (the mlps and expert lists are expanded below). */
const LAYER_ROLES: Record<string, string> = {
  inputNorm: "attn_norm",
  postAttentionNorm: "ffn_norm",
  q: "attn_q",
  k: "attn_k",
  v: "attn_v",
  o: "attn_o",
  qBias: "attn_q_bias",
  kBias: "attn_k_bias",
  vBias: "attn_v_bias",
  qNorm: "attn_q_norm",
  kNorm: "attn_k_norm",
  router: "router",
  sharedGate: "shared_expert_gate",
};

/** An in-memory ModelIR over the JSON weights (no checkpoint loader involved). */
function buildIR(c: Case): ModelIR {
  const tensors: PlacedTensor[] = [];
  const add = (layer: number, role: string, t: JsonTensor, expert = -1) =>
    tensors.push({
      stack: "decoder",
      layer,
      expert,
      role,
      ref: {
        name: `layers.${layer}.${expert >= 0 ? `experts.${expert}.` : ""}${role}`,
        shape: t.shape,
        dtype: "F32",
        read: () => Promise.resolve(Float32Array.from(t.data)),
      },
    });
  const addMlp = (layer: number, owner: string, m: JsonMlp, expert = -1) => {
    for (const name of ["gate", "up", "down"] as const) {
      add(layer, `${owner}_${name}`, m[name], expert);
    }
  };
  const w = c.weights;
  add(-1, "embed", w.embed);
  if (!c.config.tieWordEmbeddings) add(-1, "lm_head", w.lmHead);
  add(-1, "final_norm", w.finalNorm);
  w.layers.forEach((L, l) => {
    for (const [field, value] of Object.entries(L)) {
      if (LAYER_ROLES[field]) add(l, LAYER_ROLES[field], value as JsonTensor);
    }
    if (L.mlp) addMlp(l, "dense", L.mlp as JsonMlp);
    if (L.shared) addMlp(l, "shared", L.shared as JsonMlp);
    (L.experts as JsonMlp[] | undefined)?.forEach((e, i) => addMlp(l, "expert", e, i));
  });
  return {
    spec: describe(c.config),
    tensors,
    tokenizer: { tokenizerJson: null, chatTemplate: null },
    source: FIXTURE.pathname,
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
    message: /layers\.1\.attn_q_norm has shape \[7\], the description implies \[8\]/,
  });
  const d = structuredClone(cases["olmoe-like"]);
  delete d.weights.layers[0].kBias;
  await assert.rejects(prepareReference(buildIR(d)), {
    name: "InputError",
    message: /missing tensor layer 0 attn_k_bias/,
  });
});
