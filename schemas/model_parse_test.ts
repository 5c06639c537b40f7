import assert from "node:assert/strict";
import { openArtifactBytes } from "./artifact.ts";
import { InputError, type MoeqError, UnsupportedError } from "./errors.ts";
import {
  MIXTRAL_LIKE,
  MLA_LIKE,
  QWEN2_MOE_LIKE,
  SWITCH_LIKE,
  TINY_MODEL,
} from "./example_specs.ts";
import type { ModelSpec } from "./model.ts";
import { parseModelSpec } from "./model_parse.ts";
import { buildArtifact } from "./testing.ts";

const EXAMPLES: [string, ModelSpec][] = [
  ["tiny", TINY_MODEL],
  ["mixtral-like", MIXTRAL_LIKE],
  ["qwen2-moe-like", QWEN2_MOE_LIKE],
  ["switch-like", SWITCH_LIKE],
  ["mla-like", MLA_LIKE],
];

Deno.test("parseModelSpec: every example round trips through JSON and an artifact header", async () => {
  for (const [name, spec] of EXAMPLES) {
    const parsed = parseModelSpec(JSON.parse(JSON.stringify(spec)), "m.json");
    assert.deepEqual(parsed, spec, name);
    const a = await openArtifactBytes(buildArtifact(spec), `${name}.moeq`);
    assert.deepEqual(a.model, spec, name);
    assert.equal(a.tensors.length, a.summary.numTensors);
    a.close();
  }
});

/** A deep copy of `spec` with the value at `path` (dots; numbers index arrays) set or deleted. */
function edited(spec: ModelSpec, path: string, value: unknown): unknown {
  const copy = structuredClone(spec) as unknown as Record<string, unknown>;
  const keys = path.split(".");
  let at = copy as Record<string, unknown>;
  for (const k of keys.slice(0, -1)) at = at[k] as Record<string, unknown>;
  const last = keys.at(-1)!;
  if (value === DELETE) delete at[last];
  else at[last] = value;
  return copy;
}
const DELETE = Symbol("delete");

/** [spec, path to edit, new value, expected message, error class]. */
type Case = [ModelSpec, string, unknown, RegExp, typeof InputError | typeof UnsupportedError];

const MOE1 = "decoder.layers.1.blocks.1";
const ATT0 = "decoder.layers.0.blocks.0.attention";
const CASES: Case[] = [
  [
    MIXTRAL_LIKE,
    `${MOE1}.ffn.topK`,
    0,
    /^m\.json: model\.decoder\.layers\[1\]\.blocks\[1\]\.ffn\.topK is 0, must be an integer in 1\.\.4$/,
    InputError,
  ],
  [MIXTRAL_LIKE, `${MOE1}.ffn.topK`, 5, /ffn\.topK is 5, must be an integer in 1\.\.4/, InputError],
  [
    MIXTRAL_LIKE,
    `${MOE1}.kind`,
    "mamba",
    /model\.decoder\.layers\[1\]\.blocks\[1\]\.kind is "mamba", a variant this moeq does not know/,
    UnsupportedError,
  ],
  [
    MIXTRAL_LIKE,
    `${ATT0}.kind`,
    "linear",
    /attention\.kind is "linear", a variant/,
    UnsupportedError,
  ],
  [
    MIXTRAL_LIKE,
    `${MOE1}.ffn.expert.activation`,
    { kind: "silu" },
    /ffn\.expert\.activation\.kind is "silu", a variant/,
    UnsupportedError,
  ],
  [
    MIXTRAL_LIKE,
    `${MOE1}.ffn.router.kind`,
    "expert_choice",
    /ffn\.router\.kind is "expert_choice", a variant/,
    UnsupportedError,
  ],
  [
    MIXTRAL_LIKE,
    `${ATT0}.position.scaling`,
    { kind: "dynamic", factor: 2 },
    /position\.scaling\.kind is "dynamic", a variant/,
    UnsupportedError,
  ],
  [
    MIXTRAL_LIKE,
    `${ATT0}.qkNorm`,
    "rms",
    /attention\.qkNorm is "rms", a variant/,
    UnsupportedError,
  ],
  [
    MIXTRAL_LIKE,
    `${MOE1}.kind`,
    3,
    /blocks\[1\]\.kind is 3, must be one of "attention"/,
    InputError,
  ],
  [
    MIXTRAL_LIKE,
    "decoder.finalNorm",
    DELETE,
    /^m\.json: model\.decoder\.finalNorm is missing$/,
    InputError,
  ],
  [
    MIXTRAL_LIKE,
    "decoder.layers.0.extra",
    1,
    /model\.decoder\.layers\[0\]\.extra is not a field of this record/,
    InputError,
  ],
  [MIXTRAL_LIKE, "vocabSize", "32", /model\.vocabSize is "32", must be an integer ≥ 1/, InputError],
  [
    MIXTRAL_LIKE,
    "hiddenSize",
    1.5,
    /model\.hiddenSize is 1\.5, must be an integer ≥ 1/,
    InputError,
  ],
  [MIXTRAL_LIKE, "family", "", /model\.family is "", must be a non-empty string/, InputError],
  [
    MIXTRAL_LIKE,
    "decoder.finalNorm.eps",
    0,
    /finalNorm\.eps is 0, must be a positive number/,
    InputError,
  ],
  [
    MIXTRAL_LIKE,
    "decoder.finalNorm.bias",
    true,
    /finalNorm\.bias is true, only LayerNorm/,
    InputError,
  ],
  [MIXTRAL_LIKE, `${ATT0}.numKvHeads`, 3, /numKvHeads is 3, must divide numHeads 4/, InputError],
  [MIXTRAL_LIKE, `${ATT0}.position.rotaryDim`, 7, /rotaryDim is 7, must be even/, InputError],
  [
    MIXTRAL_LIKE,
    `${ATT0}.position.rotaryDim`,
    16,
    /rotaryDim is 16, must be an integer in 2\.\.8/,
    InputError,
  ],
  [MIXTRAL_LIKE, `${ATT0}.scale`, null, /attention\.scale is null, must be a positive/, InputError],
  [
    MIXTRAL_LIKE,
    `${ATT0}.causal`,
    false,
    /is bidirectional, decoder self-attention must be causal/,
    InputError,
  ],
  [
    MIXTRAL_LIKE,
    "eosTokenIds",
    [32],
    /model\.eosTokenIds\[0\] is 32, must be an integer in 0\.\.31/,
    InputError,
  ],
  [MIXTRAL_LIKE, "eosTokenIds", 2, /model\.eosTokenIds is 2, must be an array/, InputError],
  [MIXTRAL_LIKE, "decoder.layers", [], /model\.decoder\.layers is empty/, InputError],
  [MIXTRAL_LIKE, "decoder.layers.0.blocks", [], /layers\[0\]\.blocks is empty/, InputError],
  [
    MIXTRAL_LIKE,
    "decoderStartTokenId",
    0,
    /decoderStartTokenId is set, but the model has no encoder/,
    InputError,
  ],
  [
    MIXTRAL_LIKE,
    "decoder.layers.0.blocks.2",
    SWITCH_LIKE.decoder.layers[0].blocks[1],
    /blocks\[2\] is a cross_attention block, but there is no encoder/,
    InputError,
  ],
  [
    SWITCH_LIKE,
    "decoderStartTokenId",
    null,
    /decoderStartTokenId is null, an encoder–decoder model needs one/,
    InputError,
  ],
  [
    SWITCH_LIKE,
    "encoder.layers.0.blocks.0.attention.causal",
    true,
    /bidirectional is true, must be false for causal attention/,
    InputError,
  ],
  [
    SWITCH_LIKE,
    "encoder.layers.1.blocks.0.attention.position.ownerLayer",
    5,
    /model\.encoder\.layers\[1\]\.blocks\[0\]\.attention\.position\.ownerLayer is 5, but that layer owns no 8-bucket table for 2 heads/,
    InputError,
  ],
  [
    SWITCH_LIKE,
    "encoder.layers.1.blocks.0.attention.position.buckets",
    16,
    /layers\[1\]\.blocks\[0\]\.attention\.position\.ownerLayer is 0, but that layer owns no 16-bucket/,
    InputError,
  ],
  [
    SWITCH_LIKE,
    "decoder.layers.0.blocks.1.attention.position",
    { kind: "rope", theta: 1e4, rotaryDim: 8, pairing: "half", scaling: { kind: "none" } },
    /blocks\[1\]\.attention\.position of cross-attention must be "none"/,
    InputError,
  ],
  [
    SWITCH_LIKE,
    "encoder.layers.1.blocks.1.ffn.topK",
    2,
    /model\.encoder\.layers\[1\]\.blocks\[1\]\.ffn\.topK is 2, a capacity router needs 1/,
    InputError,
  ],
  [
    MLA_LIKE,
    `${MOE1}.ffn.router.groups.count`,
    3,
    /groups\.count is 3, must divide numExperts 8/,
    InputError,
  ],
  [
    MLA_LIKE,
    `${MOE1}.ffn.router.groups.keep`,
    0,
    /groups\.keep is 0, must be an integer in 1\.\.4/,
    InputError,
  ],
  [
    MLA_LIKE,
    `${MOE1}.ffn.router.softmaxAfterTopK`,
    true,
    /softmaxAfterTopK is true, but scoring is "sigmoid"/,
    InputError,
  ],
  [
    MLA_LIKE,
    `${MOE1}.ffn.router.groups.score`,
    "mean",
    /groups\.score is "mean", a variant/,
    UnsupportedError,
  ],
  [
    MLA_LIKE,
    `${ATT0}.position.rotaryDim`,
    2,
    /position\.rotaryDim is 2, must equal qkRopeHeadDim 4/,
    InputError,
  ],
  [
    MLA_LIKE,
    `${ATT0}.qLoraRank`,
    0,
    /attention\.qLoraRank is 0, must be an integer in 1\.\./,
    InputError,
  ],
  [
    QWEN2_MOE_LIKE,
    "decoder.layers.1.blocks.1.ffn.shared.gated",
    "yes",
    /shared\.gated is "yes", must be true or false/,
    InputError,
  ],
  [QWEN2_MOE_LIKE, "head", [], /model\.head is \[\], must be an object/, InputError],
];

Deno.test("parseModelSpec: each malformed description gets its one-line message", () => {
  for (const [spec, path, value, pattern, cls] of CASES) {
    const v = edited(spec, path, value);
    let err: unknown = null;
    try {
      parseModelSpec(v, "m.json");
    } catch (e) {
      err = e;
    }
    assert.ok(err instanceof cls, `${path} = ${JSON.stringify(value)}: got ${err}`);
    const msg = (err as MoeqError).message;
    assert.match(msg, pattern, path);
    assert.ok(!msg.includes("\n"), "one line");
    assert.ok(msg.includes("m.json"), "names the file");
  }
  assert.throws(() => parseModelSpec([], "m.json"), /m\.json: model is \[\], must be an object/);
  // The groups must be able to hold topK experts: 1 of 4 groups of 2 experts cannot give 3.
  const g = edited(MLA_LIKE, `${MOE1}.ffn.router.groups.keep`, 1) as ModelSpec;
  (g.decoder.layers[1].blocks[1] as { ffn: { topK: number } }).ffn.topK = 3;
  assert.throws(
    () => parseModelSpec(g, "m.json"),
    /groups\.keep is 1: 1 of 4 groups hold fewer than topK 3/,
  );
});
