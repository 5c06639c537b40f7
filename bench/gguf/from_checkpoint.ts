/**
 * Writes a llama.cpp GGUF (architecture `llama` with experts, i.e. Mixtral's layout) holding the
 * same weights as a Mixtral-style Hugging Face checkpoint, at one of three precisions:
 *
 * - `f16`: every matrix F16 (what a moeq `--expert-bits f16 --dense-bits f16` artifact holds);
 * - `q8`: every matrix Q8_0;
 * - `q4`: routed experts Q4_0, other matrices Q8_0 (as `--expert-bits 4 --dense-bits 8`).
 *
 * Norms are F32; the router is F32 holding f16-rounded values (moeq keeps routers at f16). Q and K
 * rows are permuted from Hugging Face's rotate-half RoPE layout to llama.cpp's interleaved pairs
 * (what llama.cpp's converter does for `llama`). The vocabulary is written as a byte-level GPT-2
 * BPE with no merges: token i < 256 is byte i in GPT-2's byte-to-unicode alphabet, so llama.cpp's
 * tokenizer maps text to byte ids like moeq's byte-level tokenizer; ids ≥ 256 get placeholder
 * names. `bench peer` feeds token ids directly, so only the vocabulary's size must agree.
 *
 * @module
 */

import { join } from "node:path";
import { openCheckpointStore, readJsonFile } from "../../compiler/checkpoint/mod.ts";
import { roundF16 } from "../../schemas/half.ts";
import { InputError, UnsupportedError } from "../../schemas/errors.ts";
import { encode, type GgmlTypeName, typeBytes } from "./quant.ts";
import { type GgufTensor, type GgufValue, writeGguf } from "./format.ts";

/** GGUF precisions `bench peer` compares. */
export const GGUF_PRECISIONS = ["f16", "q8", "q4"] as const;

/** One of {@link GGUF_PRECISIONS}. */
export type GgufPrecision = typeof GGUF_PRECISIONS[number];

/** llama.cpp's `general.file_type` (LLAMA_FTYPE_MOSTLY_*) per precision. */
const FILE_TYPE: Record<GgufPrecision, number> = { f16: 1, q8: 7, q4: 2 };

/** The Mixtral config fields the GGUF needs. */
export interface MixtralShape {
  vocab: number;
  hidden: number;
  intermediate: number;
  layers: number;
  heads: number;
  kvHeads: number;
  headDim: number;
  experts: number;
  topK: number;
  ropeTheta: number;
  rmsEps: number;
  context: number;
  bos: number;
  eos: number;
}

function num(c: Record<string, unknown>, key: string, file: string, fallback?: number): number {
  const v = c[key] ?? fallback;
  if (typeof v !== "number" || !Number.isFinite(v)) {
    throw new InputError(`field "${key}" must be a number`, file);
  }
  return v;
}

/** Reads the shape of a Mixtral checkpoint's config.json. */
export async function readMixtralShape(dir: string): Promise<MixtralShape> {
  const file = join(dir, "config.json");
  const c = await readJsonFile(file) as Record<string, unknown>;
  if (c.model_type !== "mixtral") {
    throw new UnsupportedError(`bench peer: model_type "${c.model_type}" (only mixtral)`);
  }
  const hidden = num(c, "hidden_size", file), heads = num(c, "num_attention_heads", file);
  const id = (v: unknown) => (Array.isArray(v) ? v[0] : v) as number | undefined;
  return {
    vocab: num(c, "vocab_size", file),
    hidden,
    intermediate: num(c, "intermediate_size", file),
    layers: num(c, "num_hidden_layers", file),
    heads,
    kvHeads: num(c, "num_key_value_heads", file, heads),
    headDim: num(c, "head_dim", file, hidden / heads),
    experts: num(c, "num_local_experts", file),
    topK: num(c, "num_experts_per_tok", file),
    ropeTheta: num(c, "rope_theta", file, 1e6),
    rmsEps: num(c, "rms_norm_eps", file, 1e-5),
    context: num(c, "max_position_embeddings", file),
    bos: id(c.bos_token_id) ?? 1,
    eos: id(c.eos_token_id) ?? 2,
  };
}

/** GPT-2's byte-to-unicode alphabet: the token text of each byte. */
export function byteTokens(): string[] {
  const direct = (b: number) =>
    (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
  const out: string[] = [];
  let n = 0;
  for (let b = 0; b < 256; b++) out.push(String.fromCodePoint(direct(b) ? b : 256 + n++));
  return out;
}

/** The metadata of the GGUF (architecture, hyper-parameters, tokenizer). */
export function ggufMetadata(
  s: MixtralShape,
  precision: GgufPrecision,
  name: string,
): [string, GgufValue][] {
  const u32 = (value: number): GgufValue => ({ kind: "u32", value });
  const f32 = (value: number): GgufValue => ({ kind: "f32", value });
  const bytes = byteTokens();
  const tokens = Array.from({ length: s.vocab }, (_, i) => i < 256 ? bytes[i] : `<moeq_${i}>`);
  return [
    ["general.architecture", { kind: "string", value: "llama" }],
    ["general.name", { kind: "string", value: name }],
    ["general.file_type", u32(FILE_TYPE[precision])],
    ["llama.vocab_size", u32(s.vocab)],
    ["llama.context_length", u32(s.context)],
    ["llama.embedding_length", u32(s.hidden)],
    ["llama.block_count", u32(s.layers)],
    ["llama.feed_forward_length", u32(s.intermediate)],
    ["llama.attention.head_count", u32(s.heads)],
    ["llama.attention.head_count_kv", u32(s.kvHeads)],
    ["llama.attention.key_length", u32(s.headDim)],
    ["llama.attention.value_length", u32(s.headDim)],
    ["llama.rope.dimension_count", u32(s.headDim)],
    ["llama.rope.freq_base", f32(s.ropeTheta)],
    ["llama.attention.layer_norm_rms_epsilon", f32(s.rmsEps)],
    ["llama.expert_count", u32(s.experts)],
    ["llama.expert_used_count", u32(s.topK)],
    ["tokenizer.ggml.model", { kind: "string", value: "gpt2" }],
    ["tokenizer.ggml.pre", { kind: "string", value: "default" }],
    ["tokenizer.ggml.tokens", { kind: "array", of: "string", values: tokens }],
    ["tokenizer.ggml.token_type", { kind: "array", of: "i32", values: tokens.map(() => 1) }],
    ["tokenizer.ggml.merges", { kind: "array", of: "string", values: [] }],
    ["tokenizer.ggml.bos_token_id", u32(s.bos)],
    ["tokenizer.ggml.eos_token_id", u32(s.eos)],
    ["tokenizer.ggml.add_bos_token", { kind: "bool", value: false }],
  ];
}

/** Where a GGUF tensor's values come from in the checkpoint. */
interface Source {
  tensor: GgufTensor;
  /** Hugging Face tensor names concatenated along the outermost dimension (experts). */
  from: string[];
  /** Heads to permute the rows of (Q and K), or 0. */
  ropeHeads: number;
  /** Round to f16 values before storing (the router). */
  f16Values?: boolean;
}

/** The GGUF tensors of `s` at `precision`, each with its checkpoint sources. */
export function ggufTensors(s: MixtralShape, precision: GgufPrecision): Source[] {
  const dense: GgmlTypeName = precision === "f16" ? "F16" : "Q8_0";
  const expert: GgmlTypeName = precision === "f16" ? "F16" : precision === "q8" ? "Q8_0" : "Q4_0";
  const H = s.hidden, I = s.intermediate, hd = s.headDim, E = s.experts;
  const t = (name: string, dims: number[], type: GgmlTypeName, from: string[], ropeHeads = 0) => ({
    tensor: { name, dims, type },
    from,
    ropeHeads,
  });
  const out: Source[] = [
    t("token_embd.weight", [H, s.vocab], dense, ["model.embed_tokens.weight"]),
  ];
  for (let l = 0; l < s.layers; l++) {
    const p = `model.layers.${l}`, b = `blk.${l}`;
    const ex = (w: string) =>
      Array.from({ length: E }, (_, e) => `${p}.block_sparse_moe.experts.${e}.${w}.weight`);
    out.push(
      t(`${b}.attn_norm.weight`, [H], "F32", [`${p}.input_layernorm.weight`]),
      t(`${b}.attn_q.weight`, [H, s.heads * hd], dense, [`${p}.self_attn.q_proj.weight`], s.heads),
      t(
        `${b}.attn_k.weight`,
        [H, s.kvHeads * hd],
        dense,
        [`${p}.self_attn.k_proj.weight`],
        s.kvHeads,
      ),
      t(`${b}.attn_v.weight`, [H, s.kvHeads * hd], dense, [`${p}.self_attn.v_proj.weight`]),
      t(`${b}.attn_output.weight`, [s.heads * hd, H], dense, [`${p}.self_attn.o_proj.weight`]),
      t(`${b}.ffn_norm.weight`, [H], "F32", [`${p}.post_attention_layernorm.weight`]),
      {
        ...t(`${b}.ffn_gate_inp.weight`, [H, E], "F32", [`${p}.block_sparse_moe.gate.weight`]),
        f16Values: true,
      },
      t(`${b}.ffn_gate_exps.weight`, [H, I, E], expert, ex("w1")),
      t(`${b}.ffn_down_exps.weight`, [I, H, E], expert, ex("w2")),
      t(`${b}.ffn_up_exps.weight`, [H, I, E], expert, ex("w3")),
    );
  }
  out.push(
    t("output_norm.weight", [H], "F32", ["model.norm.weight"]),
    t("output.weight", [H, s.vocab], dense, ["lm_head.weight"]),
  );
  return out;
}

/**
 * Reorders the rows of a [heads·hd, cols] matrix from rotate-half pairs (i, i + hd/2) to
 * interleaved pairs (2i, 2i + 1) within each head: new row h·hd + 2i + t = old row h·hd + t·hd/2 + i.
 */
export function permuteRope(w: Float32Array, heads: number, cols: number): Float32Array {
  const hd = w.length / cols / heads, half = hd / 2;
  const out = new Float32Array(w.length);
  for (let h = 0; h < heads; h++) {
    for (let i = 0; i < half; i++) {
      for (let t = 0; t < 2; t++) {
        const from = (h * hd + t * half + i) * cols, to = (h * hd + 2 * i + t) * cols;
        out.set(w.subarray(from, from + cols), to);
      }
    }
  }
  return out;
}

/** Writes the GGUF of the checkpoint in `dir` at `precision` to `path`; returns its bytes. */
export async function writeCheckpointGguf(
  dir: string,
  path: string,
  precision: GgufPrecision,
): Promise<number> {
  const shape = await readMixtralShape(dir);
  const store = await openCheckpointStore(dir);
  const sources = ggufTensors(shape, precision);
  const name = `${dir.split("/").filter(Boolean).pop()} (${precision}, written by moeq bench peer)`;
  return await writeGguf(
    path,
    ggufMetadata(shape, precision, name),
    sources.map((s) => s.tensor),
    async (t, i) => {
      const src = sources[i];
      const per = t.dims.slice(0, 2).reduce((a, b) => a * b, 1);
      const out = new Uint8Array(typeBytes(t.type, per * src.from.length));
      const step = typeBytes(t.type, per);
      for (const [k, hf] of src.from.entries()) {
        const n = store.info(hf).shape.reduce((a, b) => a * b, 1);
        if (n !== per) throw new InputError(`tensor ${hf}: ${n} values, expected ${per}`, dir);
        let w = await store.readElements(hf, 0, n);
        if (src.ropeHeads) w = permuteRope(w, src.ropeHeads, t.dims[0]);
        if (src.f16Values) w = w.map(roundF16);
        out.set(encode(t.type, w), k * step);
      }
      return out;
    },
  );
}
