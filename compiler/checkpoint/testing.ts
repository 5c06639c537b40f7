/**
 * Test helpers: write small safetensors files and whole synthetic Hugging Face checkpoints from
 * code, so tests (and fuzzers) never need large fixtures. Not used by the compiler itself.
 *
 * @module
 */

import { mulberry32 } from "../../schemas/prng.ts";
import assert from "node:assert/strict";
import { join } from "node:path";
import type { MoeqError } from "../../schemas/errors.ts";
import { f32ToF16 } from "../../schemas/half.ts";

/** One tensor to write. `data` gives values (converted to `dtype`) or raw little-endian bytes. */
export interface TestTensor {
  /** Storage dtype; default "F32". Values are converted; raw bytes are written as given. */
  dtype?: "F64" | "F32" | "F16" | "BF16" | "I32" | "I64" | "U8" | "BOOL" | string;
  shape: number[];
  data: ArrayLike<number> | Uint8Array;
}

/** Bit pattern of the bfloat16 nearest to `v` (round to nearest even), as the writers do. */
export function f32ToBf16(v: number): number {
  const f = new Float32Array([v]);
  const x = new Uint32Array(f.buffer)[0];
  if ((x & 0x7fffffff) > 0x7f800000) return (x >>> 16) | 0x40; // NaN stays NaN
  return ((x + 0x7fff + ((x >>> 16) & 1)) >>> 16) & 0xffff;
}

/** Encodes values as little-endian bytes of a dtype. */
export function encodeValues(values: ArrayLike<number>, dtype: string): Uint8Array {
  const n = values.length;
  switch (dtype) {
    case "F64":
      return new Uint8Array(Float64Array.from(values).buffer);
    case "F32":
      return new Uint8Array(Float32Array.from(values).buffer);
    case "F16":
      return new Uint8Array(Uint16Array.from({ length: n }, (_, i) => f32ToF16(values[i])).buffer);
    case "BF16":
      return new Uint8Array(Uint16Array.from({ length: n }, (_, i) => f32ToBf16(values[i])).buffer);
    case "I32":
      return new Uint8Array(Int32Array.from(values).buffer);
    case "I64":
      return new Uint8Array(BigInt64Array.from({ length: n }, (_, i) => BigInt(values[i])).buffer);
    case "U8":
    case "BOOL":
      return Uint8Array.from(values);
  }
  throw new Error(`encodeValues: unsupported dtype ${dtype}`);
}

/**
 * Encodes tensors as a safetensors file (header padded with spaces to a multiple of 8, tensors in
 * insertion order, contiguous).
 */
export function encodeSafetensors(
  tensors: Record<string, TestTensor>,
  metadata?: Record<string, string>,
): Uint8Array {
  const header: Record<string, unknown> = {};
  if (metadata) header.__metadata__ = metadata;
  const chunks: Uint8Array[] = [];
  let offset = 0;
  for (const [name, t] of Object.entries(tensors)) {
    const dtype = t.dtype ?? "F32";
    const bytes = t.data instanceof Uint8Array ? t.data : encodeValues(t.data, dtype);
    header[name] = { dtype, shape: t.shape, data_offsets: [offset, offset + bytes.length] };
    chunks.push(bytes);
    offset += bytes.length;
  }
  let json = JSON.stringify(header);
  json += " ".repeat((8 - (json.length % 8)) % 8);
  return concatBytes([headerLengthBytes(json.length), new TextEncoder().encode(json), ...chunks]);
}

/** A safetensors file from a literal header text and data bytes (for malformed-input tests). */
export function rawSafetensors(headerText: string, data: Uint8Array = new Uint8Array()) {
  const header = new TextEncoder().encode(headerText);
  return concatBytes([headerLengthBytes(header.length), header, data]);
}

/** The 8-byte little-endian header length field. */
export function headerLengthBytes(n: number | bigint): Uint8Array<ArrayBuffer> {
  const b = new Uint8Array(8);
  new DataView(b.buffer).setBigUint64(0, BigInt(n), true);
  return b;
}

/** Concatenates byte arrays. */
export function concatBytes(parts: Uint8Array[]): Uint8Array<ArrayBuffer> {
  const out = new Uint8Array(parts.reduce((a, p) => a + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/** Writes tensors to `path` as a safetensors file. */
export async function writeSafetensors(
  path: string,
  tensors: Record<string, TestTensor>,
  metadata?: Record<string, string>,
): Promise<void> {
  await Deno.writeFile(path, encodeSafetensors(tensors, metadata));
}

/** A small seeded PRNG (mulberry32, schemas/prng.ts) returning floats in [0, 1). */
export const seededRandom: (seed: number) => () => number = mulberry32;

/** `n` random non-zero values in ±[0.05, 0.55). */
export function randomValues(rand: () => number, n: number): Float32Array {
  return Float32Array.from({ length: n }, () => (rand() < 0.5 ? -1 : 1) * (0.05 + rand() * 0.5));
}

/** Options for writeSyntheticCheckpoint. */
export interface SyntheticOptions {
  /** Store routed experts as transformers-v5 packed tensors (default false). */
  packed?: boolean;
  /** Storage dtype of every tensor (default "F32"). */
  dtype?: "F32" | "F16" | "BF16";
  /** PRNG seed (default 1). */
  seed?: number;
  /** Split tensors over this many shards with an index (default 1: a single model.safetensors). */
  shards?: number;
}

/**
 * Writes a random-weight checkpoint (config.json + safetensors) for a raw config.json object of a
 * supported family, using transformers' tensor names. Returns tensor name → f32 values as written
 * (before dtype rounding). Deliberately independent of the adapters, so it can test them.
 */
export async function writeSyntheticCheckpoint(
  dir: string,
  config: Record<string, unknown>,
  options: SyntheticOptions = {},
): Promise<Map<string, { shape: number[]; values: Float32Array }>> {
  const c = config as Record<string, number & boolean & number[] & string>;
  const rand = seededRandom(options.seed ?? 1);
  const H = c.hidden_size, V = c.vocab_size, L = c.num_hidden_layers;
  const nh = c.num_attention_heads, nkv = c.num_key_value_heads ?? nh;
  const hd = c.head_dim ?? H / nh;
  const type = c.model_type;
  const E = type === "mixtral" ? c.num_local_experts : c.num_experts;
  const I = type === "mixtral" || type === "olmoe" ? c.intermediate_size : c.moe_intermediate_size;
  const step = c.decoder_sparse_step ?? 1;
  const mlpOnly: number[] = c.mlp_only_layers ?? [];
  const tensors = new Map<string, { shape: number[]; values: Float32Array }>();
  const add = (name: string, shape: number[]) =>
    tensors.set(name, { shape, values: randomValues(rand, shape.reduce((a, b) => a * b, 1)) });

  add("model.embed_tokens.weight", [V, H]);
  if (!c.tie_word_embeddings) add("lm_head.weight", [V, H]);
  add("model.norm.weight", [H]);
  for (let l = 0; l < L; l++) {
    const p = `model.layers.${l}`;
    add(`${p}.input_layernorm.weight`, [H]);
    add(`${p}.post_attention_layernorm.weight`, [H]);
    add(`${p}.self_attn.q_proj.weight`, [nh * hd, H]);
    add(`${p}.self_attn.k_proj.weight`, [nkv * hd, H]);
    add(`${p}.self_attn.v_proj.weight`, [nkv * hd, H]);
    add(`${p}.self_attn.o_proj.weight`, [H, nh * hd]);
    if (type === "qwen2_moe" && c.qkv_bias !== false) {
      add(`${p}.self_attn.q_proj.bias`, [nh * hd]);
      add(`${p}.self_attn.k_proj.bias`, [nkv * hd]);
      add(`${p}.self_attn.v_proj.bias`, [nkv * hd]);
    }
    if (type === "qwen3_moe") {
      add(`${p}.self_attn.q_norm.weight`, [hd]);
      add(`${p}.self_attn.k_norm.weight`, [hd]);
    }
    if (type === "olmoe") {
      add(`${p}.self_attn.q_norm.weight`, [nh * hd]);
      add(`${p}.self_attn.k_norm.weight`, [nkv * hd]);
    }
    const isMoe = type === "mixtral" || type === "olmoe" ||
      (!mlpOnly.includes(l) && (l + 1) % step === 0);
    if (!isMoe) {
      const D = c.intermediate_size;
      add(`${p}.mlp.gate_proj.weight`, [D, H]);
      add(`${p}.mlp.up_proj.weight`, [D, H]);
      add(`${p}.mlp.down_proj.weight`, [H, D]);
      continue;
    }
    if (options.packed) {
      add(`${p}.mlp.gate.weight`, [E, H]);
      add(`${p}.mlp.experts.gate_up_proj`, [E, 2 * I, H]);
      add(`${p}.mlp.experts.down_proj`, [E, H, I]);
    } else if (type === "mixtral") {
      add(`${p}.block_sparse_moe.gate.weight`, [E, H]);
      for (let e = 0; e < E; e++) {
        add(`${p}.block_sparse_moe.experts.${e}.w1.weight`, [I, H]);
        add(`${p}.block_sparse_moe.experts.${e}.w2.weight`, [H, I]);
        add(`${p}.block_sparse_moe.experts.${e}.w3.weight`, [I, H]);
      }
    } else {
      add(`${p}.mlp.gate.weight`, [E, H]);
      for (let e = 0; e < E; e++) {
        add(`${p}.mlp.experts.${e}.gate_proj.weight`, [I, H]);
        add(`${p}.mlp.experts.${e}.up_proj.weight`, [I, H]);
        add(`${p}.mlp.experts.${e}.down_proj.weight`, [H, I]);
      }
    }
    if (type === "qwen2_moe") {
      const S = c.shared_expert_intermediate_size;
      add(`${p}.mlp.shared_expert.gate_proj.weight`, [S, H]);
      add(`${p}.mlp.shared_expert.up_proj.weight`, [S, H]);
      add(`${p}.mlp.shared_expert.down_proj.weight`, [H, S]);
      add(`${p}.mlp.shared_expert_gate.weight`, [1, H]);
    }
  }

  await Deno.mkdir(dir, { recursive: true });
  await Deno.writeTextFile(join(dir, "config.json"), JSON.stringify(config, null, 2));
  const dtype = options.dtype ?? "F32";
  const shards = options.shards ?? 1;
  const names = [...tensors.keys()];
  if (shards === 1) {
    const all: Record<string, TestTensor> = {};
    for (const [name, t] of tensors) all[name] = { dtype, shape: t.shape, data: t.values };
    await writeSafetensors(join(dir, "model.safetensors"), all);
    return tensors;
  }
  const weightMap: Record<string, string> = {};
  for (let s = 0; s < shards; s++) {
    const file = `model-${String(s + 1).padStart(5, "0")}-of-${String(shards).padStart(5, "0")}` +
      ".safetensors";
    const part: Record<string, TestTensor> = {};
    names.forEach((name, i) => {
      if (i % shards !== s) return;
      const t = tensors.get(name)!;
      part[name] = { dtype, shape: t.shape, data: t.values };
      weightMap[name] = file;
    });
    await writeSafetensors(join(dir, file), part);
  }
  await Deno.writeTextFile(
    join(dir, "model.safetensors.index.json"),
    JSON.stringify({ metadata: {}, weight_map: weightMap }, null, 2),
  );
  return tensors;
}

/** Calls and awaits `fn`, asserting it throws `cls` with a one-line message matching every pattern. */
export async function assertFails(
  fn: () => unknown,
  cls: new (...args: never[]) => MoeqError,
  ...patterns: (string | RegExp)[]
): Promise<MoeqError> {
  let caught: unknown = null;
  try {
    await fn();
  } catch (err) {
    caught = err;
  }
  assert.ok(caught !== null, "expected an error, got none");
  assert.ok(
    caught instanceof cls,
    `expected ${cls.name}, got ${(caught as Error)?.constructor?.name}: ${caught}`,
  );
  const msg = (caught as Error).message;
  assert.ok(!msg.includes("\n"), `message is not one line: ${msg}`);
  for (const p of patterns) {
    if (typeof p === "string") assert.ok(msg.includes(p), `"${msg}" does not mention ${p}`);
    else assert.match(msg, p);
  }
  return caught as MoeqError;
}
