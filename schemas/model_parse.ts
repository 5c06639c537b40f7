/**
 * Reads a model description (schemas/model.ts ModelSpec) from untrusted JSON — the artifact
 * header's `model_json` — checking every field, every variant tag and the constraints between
 * fields, so that everything downstream (expectedTensors, the reference, the engine) can trust
 * it. A problem is one line naming the field path, e.g.
 * `model.decoder.layers[3].blocks[1].ffn.topK is 0, must be an integer in 1..8` (an InputError);
 * a variant tag or enum value this moeq does not know is an UnsupportedError (a newer compiler
 * may have written it). Unknown fields are refused: the description is exact or it is wrong.
 *
 * The result is a fresh object holding exactly the ModelSpec fields.
 *
 * @module
 */

import { InputError, UnsupportedError } from "./errors.ts";
import type {
  ActivationSpec,
  AttentionSpec,
  BlockSpec,
  FfnSpec,
  GqaAttentionSpec,
  LayerSpec,
  MlaAttentionSpec,
  MlpSpec,
  ModelSpec,
  MoeFfnSpec,
  NormSpec,
  PositionSpec,
  RopeScaling,
  RopeSpec,
  RouterSpec,
  StackName,
  StackSpec,
} from "./model.ts";

/** Most eos token ids a description may list. */
const MAX_EOS_IDS = 1024;

/** A JSON object being read at `path`; `done()` refuses the fields nobody asked for. */
class Fields {
  readonly #seen = new Set<string>();
  constructor(
    readonly p: Parser,
    readonly path: string,
    readonly obj: Record<string, unknown>,
  ) {}

  /** The path of field `k`. */
  at(k: string): string {
    return `${this.path}.${k}`;
  }

  /** The raw value of a field that must be present. */
  get(k: string): unknown {
    this.#seen.add(k);
    if (!Object.hasOwn(this.obj, k)) this.p.fail(`${this.at(k)} is missing`);
    return this.obj[k];
  }

  int(k: string, min: number, max = Number.MAX_SAFE_INTEGER): number {
    return this.p.int(this.get(k), this.at(k), min, max);
  }

  /** A finite number > 0. */
  positive(k: string): number {
    const v = this.get(k);
    if (typeof v !== "number" || !Number.isFinite(v) || v <= 0) {
      this.p.fail(`${this.at(k)} is ${show(v)}, must be a positive number`);
    }
    return v;
  }

  finite(k: string): number {
    const v = this.get(k);
    if (typeof v !== "number" || !Number.isFinite(v)) {
      this.p.fail(`${this.at(k)} is ${show(v)}, must be a finite number`);
    }
    return v;
  }

  bool(k: string): boolean {
    const v = this.get(k);
    if (typeof v !== "boolean") this.p.fail(`${this.at(k)} is ${show(v)}, must be true or false`);
    return v;
  }

  /** One of `values`; another string is an UnsupportedError (a newer variant). */
  oneOf<T extends string>(k: string, values: readonly T[]): T {
    return this.p.oneOf(this.get(k), this.at(k), values);
  }

  /** A nested object. */
  object(k: string): Fields {
    return this.p.object(this.get(k), this.at(k));
  }

  /** null, or what `read` makes of the value. */
  nullable<T>(k: string, read: (v: unknown, path: string) => T): T | null {
    const v = this.get(k);
    return v === null ? null : read(v, this.at(k));
  }

  /** An array, each element read by `read`. */
  array<T>(k: string, read: (v: unknown, path: string, i: number) => T, maxLength?: number): T[] {
    const v = this.get(k);
    if (!Array.isArray(v)) this.p.fail(`${this.at(k)} is ${show(v)}, must be an array`);
    if (maxLength !== undefined && v.length > maxLength) {
      this.p.fail(`${this.at(k)} has ${v.length} entries, at most ${maxLength} allowed`);
    }
    return v.map((e, i) => read(e, `${this.at(k)}[${i}]`, i));
  }

  /** Refuses fields that were not read. */
  done(): void {
    for (const k of Object.keys(this.obj)) {
      if (!this.#seen.has(k)) this.p.fail(`${this.at(k)} is not a field of this record`);
    }
  }
}

/** Shows a bad value in a message (short). */
function show(v: unknown): string {
  const s = JSON.stringify(v) ?? String(v);
  return s.length > 40 ? `${s.slice(0, 37)}...` : s;
}

class Parser {
  constructor(readonly file: string) {}

  fail(message: string): never {
    throw new InputError(message, this.file);
  }

  int(v: unknown, path: string, min: number, max: number): number {
    if (typeof v !== "number" || !Number.isSafeInteger(v) || v < min || v > max) {
      const range = max === Number.MAX_SAFE_INTEGER ? `≥ ${min}` : `in ${min}..${max}`;
      this.fail(`${path} is ${show(v)}, must be an integer ${range}`);
    }
    return v;
  }

  oneOf<T extends string>(v: unknown, path: string, values: readonly T[]): T {
    if (typeof v !== "string") {
      this.fail(`${path} is ${show(v)}, must be one of ${values.map((x) => `"${x}"`).join(", ")}`);
    }
    if (!values.includes(v as T)) {
      throw new UnsupportedError(
        `${this.file}: ${path} is ${show(v)}, a variant this moeq does not know (it knows ${
          values.map((x) => `"${x}"`).join(", ")
        }): recompile with this moeq or upgrade it`,
      );
    }
    return v as T;
  }

  object(v: unknown, path: string): Fields {
    if (typeof v !== "object" || v === null || Array.isArray(v)) {
      this.fail(`${path} is ${show(v)}, must be an object`);
    }
    return new Fields(this, path, v as Record<string, unknown>);
  }

  /** Reads an object with `read` and refuses its unread fields. */
  record<T>(v: unknown, path: string, read: (f: Fields) => T): T {
    const f = this.object(v, path);
    const out = read(f);
    f.done();
    return out;
  }

  // -------------------------------------------------------------------------------------------

  model(v: unknown): ModelSpec {
    return this.record(v, "model", (f) => {
      const family = f.get("family");
      if (typeof family !== "string" || family.length === 0) {
        this.fail(`model.family is ${show(family)}, must be a non-empty string`);
      }
      const vocabSize = f.int("vocabSize", 1);
      const hiddenSize = f.int("hiddenSize", 1);
      const maxPositions = f.int("maxPositions", 1);
      const embedScale = f.positive("embedScale");
      const encoder = f.nullable("encoder", (e, p) => this.stack(e, p, "encoder"));
      const decoder = this.stack(f.get("decoder"), "model.decoder", "decoder");
      const head = this.record(f.get("head"), "model.head", (h) => ({
        tied: h.bool("tied"),
        scale: h.positive("scale"),
        bias: h.bool("bias"),
      }));
      const token = (t: unknown, p: string) => this.int(t, p, 0, vocabSize - 1);
      const bosTokenId = f.nullable("bosTokenId", token);
      const eosTokenIds = f.array("eosTokenIds", token, MAX_EOS_IDS);
      const decoderStartTokenId = f.nullable("decoderStartTokenId", token);
      if ((encoder === null) !== (decoderStartTokenId === null)) {
        this.fail(
          encoder
            ? "model.decoderStartTokenId is null, an encoder–decoder model needs one"
            : "model.decoderStartTokenId is set, but the model has no encoder",
        );
      }
      const spec: ModelSpec = {
        family,
        vocabSize,
        hiddenSize,
        maxPositions,
        embedScale,
        encoder,
        decoder,
        head,
        bosTokenId,
        eosTokenIds,
        decoderStartTokenId,
      };
      for (const [name, stack] of [["encoder", encoder], ["decoder", decoder]] as const) {
        if (stack) this.checkCrossAttention(stack, name, encoder !== null);
        if (stack) this.checkRelativeBias(stack, name);
      }
      return spec;
    });
  }

  stack(v: unknown, path: string, name: StackName): StackSpec {
    return this.record(v, path, (f) => {
      const layers = f.array("layers", (l, p) => this.layer(l, p, name));
      if (layers.length === 0) this.fail(`${f.at("layers")} is empty, a stack needs a layer`);
      return { layers, finalNorm: this.norm(f.get("finalNorm"), f.at("finalNorm")) };
    });
  }

  layer(v: unknown, path: string, stack: StackName): LayerSpec {
    return this.record(v, path, (f) => {
      const blocks = f.array("blocks", (b, p) => this.block(b, p, stack));
      if (blocks.length === 0) this.fail(`${f.at("blocks")} is empty, a layer needs a block`);
      return { blocks, residualScale: f.positive("residualScale") };
    });
  }

  block(v: unknown, path: string, stack: StackName): BlockSpec {
    return this.record(v, path, (f) => {
      const kind = f.oneOf("kind", ["attention", "cross_attention", "ffn"] as const);
      const norm = this.norm(f.get("norm"), f.at("norm"));
      switch (kind) {
        case "attention": {
          const attention = this.attention(f.get("attention"), f.at("attention"));
          const causal = attention.kind === "mla" || attention.causal;
          if (causal !== (stack === "decoder")) {
            this.fail(
              `${f.at("attention")} is ${causal ? "causal" : "bidirectional"}, ${stack} ` +
                `self-attention must be ${stack === "decoder" ? "causal" : "bidirectional"}`,
            );
          }
          return { kind, norm, attention };
        }
        case "cross_attention": {
          const attention = this.gqa(f.object("attention"));
          if (attention.causal || attention.slidingWindow !== null) {
            this.fail(
              `${f.at("attention")} of cross-attention must be neither causal nor windowed`,
            );
          }
          if (attention.position.kind !== "none") {
            this.fail(`${f.at("attention.position")} of cross-attention must be "none"`);
          }
          return { kind, norm, attention };
        }
        case "ffn":
          return { kind, norm, ffn: this.ffn(f.get("ffn"), f.at("ffn")) };
      }
    });
  }

  norm(v: unknown, path: string): NormSpec {
    return this.record(v, path, (f) => {
      const kind = f.oneOf("kind", ["rms", "layer"] as const);
      const eps = f.positive("eps");
      const bias = f.bool("bias");
      if (bias && kind !== "layer") this.fail(`${f.at("bias")} is true, only LayerNorm has a bias`);
      return { kind, eps, bias };
    });
  }

  attention(v: unknown, path: string): AttentionSpec {
    const f = this.object(v, path);
    const kind = f.oneOf("kind", ["gqa", "mla"] as const);
    return kind === "gqa" ? this.gqa(f) : this.mla(f);
  }

  gqa(f: Fields): GqaAttentionSpec {
    if (f.oneOf("kind", ["gqa", "mla"] as const) !== "gqa") {
      this.fail(`${f.at("kind")} is "mla", cross-attention must be "gqa"`);
    }
    const numHeads = f.int("numHeads", 1);
    const numKvHeads = f.int("numKvHeads", 1, numHeads);
    if (numHeads % numKvHeads !== 0) {
      this.fail(`${f.at("numKvHeads")} is ${numKvHeads}, must divide numHeads ${numHeads}`);
    }
    const headDim = f.int("headDim", 1);
    const spec: GqaAttentionSpec = {
      kind: "gqa",
      numHeads,
      numKvHeads,
      headDim,
      qkvBias: f.bool("qkvBias"),
      outBias: f.bool("outBias"),
      qkNorm: f.oneOf("qkNorm", ["none", "head", "full"] as const),
      qkNormSpec: this.norm(f.get("qkNormSpec"), f.at("qkNormSpec")),
      clipQkv: f.nullable("clipQkv", (c, p) => this.positive(c, p)),
      scale: f.positive("scale"),
      sinks: f.bool("sinks"),
      slidingWindow: f.nullable("slidingWindow", (w, p) => this.int(w, p, 1, 2 ** 31)),
      causal: f.bool("causal"),
      position: this.position(f.get("position"), f.at("position"), headDim),
    };
    if (spec.position.kind === "relative_bias" && spec.position.bidirectional === spec.causal) {
      this.fail(
        `${f.at("position.bidirectional")} is ${spec.position.bidirectional}, ` +
          `must be ${!spec.causal} for ${spec.causal ? "causal" : "bidirectional"} attention`,
      );
    }
    f.done();
    return spec;
  }

  mla(f: Fields): MlaAttentionSpec {
    const qkRopeHeadDim = f.int("qkRopeHeadDim", 2);
    const spec: MlaAttentionSpec = {
      kind: "mla",
      numHeads: f.int("numHeads", 1),
      qLoraRank: f.nullable("qLoraRank", (r, p) => this.int(r, p, 1, 2 ** 31)),
      kvLoraRank: f.int("kvLoraRank", 1),
      qkNopeHeadDim: f.int("qkNopeHeadDim", 1),
      qkRopeHeadDim,
      vHeadDim: f.int("vHeadDim", 1),
      latentNorm: this.norm(f.get("latentNorm"), f.at("latentNorm")),
      scale: f.positive("scale"),
      position: this.rope(f.object("position"), qkRopeHeadDim),
    };
    if (spec.position.rotaryDim !== qkRopeHeadDim) {
      this.fail(
        `${f.at("position.rotaryDim")} is ${spec.position.rotaryDim}, ` +
          `must equal qkRopeHeadDim ${qkRopeHeadDim}`,
      );
    }
    f.done();
    return spec;
  }

  position(v: unknown, path: string, headDim: number): PositionSpec {
    const f = this.object(v, path);
    const kind = f.oneOf("kind", ["rope", "relative_bias", "none"] as const);
    if (kind === "rope") return this.rope(f, headDim);
    if (kind === "none") {
      f.done();
      return { kind };
    }
    const spec: PositionSpec = {
      kind,
      buckets: f.int("buckets", 1),
      maxDistance: f.int("maxDistance", 1),
      bidirectional: f.bool("bidirectional"),
      ownerLayer: f.int("ownerLayer", 0),
    };
    f.done();
    return spec;
  }

  rope(f: Fields, headDim: number): RopeSpec {
    if (f.oneOf("kind", ["rope", "relative_bias", "none"] as const) !== "rope") {
      this.fail(`${f.at("kind")} must be "rope" here`);
    }
    const rotaryDim = f.int("rotaryDim", 2, headDim);
    if (rotaryDim % 2 !== 0) this.fail(`${f.at("rotaryDim")} is ${rotaryDim}, must be even`);
    const spec: RopeSpec = {
      kind: "rope",
      theta: f.positive("theta"),
      rotaryDim,
      pairing: f.oneOf("pairing", ["half", "interleaved"] as const),
      scaling: this.ropeScaling(f.object("scaling")),
    };
    f.done();
    return spec;
  }

  ropeScaling(f: Fields): RopeScaling {
    const kind = f.oneOf("kind", ["none", "linear", "yarn", "llama3"] as const);
    let spec: RopeScaling;
    switch (kind) {
      case "none":
        spec = { kind };
        break;
      case "linear":
        spec = { kind, factor: f.positive("factor") };
        break;
      case "yarn":
        spec = {
          kind,
          factor: f.positive("factor"),
          originalMaxPositions: f.int("originalMaxPositions", 1),
          betaFast: f.finite("betaFast"),
          betaSlow: f.finite("betaSlow"),
          attentionFactor: f.positive("attentionFactor"),
          truncate: f.bool("truncate"),
        };
        break;
      case "llama3": {
        const lowFreqFactor = f.positive("lowFreqFactor");
        const highFreqFactor = f.positive("highFreqFactor");
        if (!(highFreqFactor > lowFreqFactor)) {
          this.fail(
            `${f.at("highFreqFactor")} is ${highFreqFactor}, ` +
              `must exceed lowFreqFactor ${lowFreqFactor}`,
          );
        }
        spec = {
          kind,
          factor: f.positive("factor"),
          lowFreqFactor,
          highFreqFactor,
          originalMaxPositions: f.int("originalMaxPositions", 1),
        };
        break;
      }
    }
    f.done();
    return spec;
  }

  ffn(v: unknown, path: string): FfnSpec {
    return this.record(v, path, (f) => {
      const kind = f.oneOf("kind", ["dense", "moe"] as const);
      if (kind === "dense") return { kind, mlp: this.mlp(f.get("mlp"), f.at("mlp")) };
      const numExperts = f.int("numExperts", 1);
      const topK = f.int("topK", 1, numExperts);
      const router = this.router(f.get("router"), f.at("router"), numExperts, topK);
      const expert = this.mlp(f.get("expert"), f.at("expert"));
      const shared = f.nullable("shared", (s, p) =>
        this.record(s, p, (g) => ({
          mlp: this.mlp(g.get("mlp"), g.at("mlp")),
          gated: g.bool("gated"),
        })));
      return { kind, numExperts, topK, router, expert, shared } satisfies MoeFfnSpec;
    });
  }

  mlp(v: unknown, path: string): MlpSpec {
    return this.record(v, path, (f) => ({
      intermediate: f.int("intermediate", 1),
      activation: this.activation(f.get("activation"), f.at("activation")),
      bias: f.bool("bias"),
    }));
  }

  activation(v: unknown, path: string): ActivationSpec {
    return this.record(v, path, (f) => {
      const kind = f.oneOf("kind", ["swiglu", "swiglu_clamped", "geglu", "relu"] as const);
      if (kind === "swiglu_clamped") {
        return { kind, limit: f.positive("limit"), alpha: f.positive("alpha") };
      }
      return { kind };
    });
  }

  router(v: unknown, path: string, numExperts: number, topK: number): RouterSpec {
    return this.record(v, path, (f) => {
      const kind = f.oneOf("kind", ["topk", "sparsemixer", "capacity"] as const);
      const needK = (k: number) => {
        if (topK !== k) {
          this.fail(
            `${path.replace(/\.router$/, ".topK")} is ${topK}, a ${kind} router needs ${k}`,
          );
        }
      };
      if (kind === "sparsemixer") {
        needK(2);
        const jitter = f.finite("jitter");
        if (jitter < 0) this.fail(`${f.at("jitter")} is ${jitter}, must be ≥ 0`);
        return { kind, jitter };
      }
      if (kind === "capacity") {
        needK(1);
        return { kind, capacity: f.int("capacity", 1) };
      }
      const scoring = f.oneOf("scoring", ["softmax", "sigmoid"] as const);
      const softmaxAfterTopK = f.bool("softmaxAfterTopK");
      if (softmaxAfterTopK && scoring !== "softmax") {
        this.fail(`${f.at("softmaxAfterTopK")} is true, but scoring is "${scoring}"`);
      }
      const groups = f.nullable("groups", (g, p) =>
        this.record(g, p, (gf) => {
          const count = gf.int("count", 1, numExperts);
          if (numExperts % count !== 0) {
            this.fail(`${gf.at("count")} is ${count}, must divide numExperts ${numExperts}`);
          }
          const keep = gf.int("keep", 1, count);
          if (topK > keep * (numExperts / count)) {
            this.fail(
              `${gf.at("keep")} is ${keep}: ${keep} of ${count} groups hold fewer than topK ` +
                `${topK} experts`,
            );
          }
          return { count, keep, score: gf.oneOf("score", ["max", "top2sum"] as const) };
        }));
      return {
        kind,
        scoring,
        softmaxAfterTopK,
        normTopK: f.bool("normTopK"),
        scale: f.positive("scale"),
        bias: f.bool("bias"),
        selectionBias: f.bool("selectionBias"),
        groups,
      };
    });
  }

  positive(v: unknown, path: string): number {
    if (typeof v !== "number" || !Number.isFinite(v) || v <= 0) {
      this.fail(`${path} is ${show(v)}, must be a positive number`);
    }
    return v;
  }

  // -------------------------------------------------------------------------------------------
  // Constraints across layers

  /** Cross-attention reads the encoder's output: only a decoder with an encoder has it. */
  checkCrossAttention(s: StackSpec, name: StackName, hasEncoder: boolean): void {
    s.layers.forEach((layer, l) =>
      layer.blocks.forEach((b, i) => {
        if (b.kind !== "cross_attention") return;
        if (name === "encoder" || !hasEncoder) {
          this.fail(
            `model.${name}.layers[${l}].blocks[${i}] is a cross_attention block, ` +
              (name === "encoder" ? "which only a decoder can have" : "but there is no encoder"),
          );
        }
      })
    );
  }

  /**
   * A relative-bias attention names the layer owning its table: that layer's attention of the
   * same kind (self or cross) must own a table of the same shape.
   */
  checkRelativeBias(s: StackSpec, name: StackName): void {
    const tableAt = (l: number, kind: BlockSpec["kind"]) => {
      for (const b of s.layers[l]?.blocks ?? []) {
        if (b.kind !== kind || b.kind === "ffn" || b.attention.kind !== "gqa") continue;
        const p = b.attention.position;
        if (p.kind === "relative_bias" && p.ownerLayer === l) {
          return { buckets: p.buckets, heads: b.attention.numHeads };
        }
      }
      return null;
    };
    s.layers.forEach((layer, l) =>
      layer.blocks.forEach((b, i) => {
        if (b.kind === "ffn" || b.attention.kind !== "gqa") return;
        const p = b.attention.position;
        if (p.kind !== "relative_bias") return;
        const owner = tableAt(p.ownerLayer, b.kind);
        if (!owner || owner.buckets !== p.buckets || owner.heads !== b.attention.numHeads) {
          this.fail(
            `model.${name}.layers[${l}].blocks[${i}].attention.position.ownerLayer is ` +
              `${p.ownerLayer}, but that layer owns no ${p.buckets}-bucket table for ` +
              `${b.attention.numHeads} heads`,
          );
        }
      })
    );
  }
}

/**
 * Checks a parsed JSON value as a ModelSpec and returns a fresh copy holding exactly its fields.
 * Throws a one-line InputError naming `file` and the field path, or an UnsupportedError for a
 * variant tag this moeq does not know.
 */
export function parseModelSpec(value: unknown, file: string): ModelSpec {
  return new Parser(file).model(value);
}
