/**
 * The GGUF container (version 3), as llama.cpp reads it: magic "GGUF", version, tensor and
 * key-value counts, the key-values, the tensor infos (name, dims innermost first, ggml type, offset
 * into the data section), then the data section aligned to `general.alignment` (32 by default),
 * every tensor at an aligned offset. Little-endian throughout; strings are a u64 length + UTF-8.
 *
 * {@link writeGguf} streams tensor data from a callback (one tensor in memory at a time);
 * {@link readGgufHeader} parses the header back (for tests and `bench peer`'s own checks).
 *
 * @module
 */

import { GGML_TYPE, type GgmlTypeName, typeBytes } from "./quant.ts";
import { InputError } from "../../schemas/errors.ts";

/** GGUF value type codes. */
export const GGUF_VALUE = {
  u8: 0,
  i8: 1,
  u16: 2,
  i16: 3,
  u32: 4,
  i32: 5,
  f32: 6,
  bool: 7,
  string: 8,
  array: 9,
  u64: 10,
  i64: 11,
  f64: 12,
} as const;

/** A scalar kind this writer emits. */
export type ScalarKind = "u32" | "i32" | "f32" | "bool" | "string" | "u64";

/** A metadata value: a typed scalar or a typed array. */
export type GgufValue =
  | { kind: ScalarKind; value: number | boolean | string }
  | { kind: "array"; of: ScalarKind; values: readonly (number | boolean | string)[] };

/** A tensor's description: `dims` innermost (contiguous) first, as ggml's ne[]. */
export interface GgufTensor {
  name: string;
  dims: number[];
  type: GgmlTypeName;
}

/** A parsed GGUF header. */
export interface GgufHeader {
  version: number;
  metadata: Map<string, unknown>;
  tensors: (GgufTensor & { offset: number })[];
  /** Absolute file offset of the data section. */
  dataOffset: number;
  alignment: number;
}

const MAGIC = 0x46554747; // "GGUF" little-endian
const ALIGNMENT = 32;

/** Growable little-endian byte sink. */
class Sink {
  #buf = new Uint8Array(1 << 16);
  #dv = new DataView(this.#buf.buffer);
  length = 0;
  #need(n: number) {
    if (this.length + n <= this.#buf.length) return;
    let size = this.#buf.length * 2;
    while (size < this.length + n) size *= 2;
    const b = new Uint8Array(size);
    b.set(this.#buf.subarray(0, this.length));
    this.#buf = b;
    this.#dv = new DataView(b.buffer);
  }
  u8(v: number) {
    this.#need(1);
    this.#dv.setUint8(this.length++, v);
  }
  u32(v: number) {
    this.#need(4);
    this.#dv.setUint32(this.length, v, true);
    this.length += 4;
  }
  i32(v: number) {
    this.#need(4);
    this.#dv.setInt32(this.length, v, true);
    this.length += 4;
  }
  f32(v: number) {
    this.#need(4);
    this.#dv.setFloat32(this.length, v, true);
    this.length += 4;
  }
  u64(v: number) {
    this.#need(8);
    this.#dv.setBigUint64(this.length, BigInt(v), true);
    this.length += 8;
  }
  bytes(b: Uint8Array) {
    this.#need(b.length);
    this.#buf.set(b, this.length);
    this.length += b.length;
  }
  string(s: string) {
    const b = new TextEncoder().encode(s);
    this.u64(b.length);
    this.bytes(b);
  }
  scalar(kind: ScalarKind, v: number | boolean | string) {
    switch (kind) {
      case "u32":
        return this.u32(v as number);
      case "i32":
        return this.i32(v as number);
      case "f32":
        return this.f32(v as number);
      case "bool":
        return this.u8(v ? 1 : 0);
      case "string":
        return this.string(v as string);
      case "u64":
        return this.u64(v as number);
    }
  }
  view(): Uint8Array {
    return this.#buf.subarray(0, this.length);
  }
}

function pad(n: number, a: number): number {
  return (a - (n % a)) % a;
}

/** Bytes of a tensor's data. */
export function tensorBytes(t: GgufTensor): number {
  return typeBytes(t.type, t.dims.reduce((a, b) => a * b, 1));
}

/** The header bytes (through the padding before the data section) and each tensor's offset. */
export function encodeHeader(
  metadata: readonly [string, GgufValue][],
  tensors: readonly GgufTensor[],
): { header: Uint8Array; offsets: number[] } {
  const s = new Sink();
  s.u32(MAGIC);
  s.u32(3);
  s.u64(tensors.length);
  s.u64(metadata.length);
  for (const [key, v] of metadata) {
    s.string(key);
    if (v.kind === "array") {
      s.u32(GGUF_VALUE.array);
      s.u32(GGUF_VALUE[v.of]);
      s.u64(v.values.length);
      for (const x of v.values) s.scalar(v.of, x);
    } else {
      s.u32(GGUF_VALUE[v.kind]);
      s.scalar(v.kind, v.value);
    }
  }
  const offsets: number[] = [];
  let off = 0;
  for (const t of tensors) {
    s.string(t.name);
    s.u32(t.dims.length);
    for (const d of t.dims) s.u64(d);
    s.u32(GGML_TYPE[t.type]);
    s.u64(off);
    offsets.push(off);
    off += tensorBytes(t);
    off += pad(off, ALIGNMENT);
  }
  for (let i = pad(s.length, ALIGNMENT); i > 0; i--) s.u8(0);
  return { header: s.view().slice(), offsets };
}

/**
 * Writes a GGUF file to `path` (via `path.tmp`, renamed at the end): the header, then each
 * tensor's bytes as `data(tensor, index)` returns them (checked against the declared size).
 */
export async function writeGguf(
  path: string,
  metadata: readonly [string, GgufValue][],
  tensors: readonly GgufTensor[],
  data: (t: GgufTensor, index: number) => Promise<Uint8Array>,
): Promise<number> {
  const { header, offsets } = encodeHeader(metadata, tensors);
  const tmp = `${path}.tmp`;
  const f = await Deno.open(tmp, { write: true, create: true, truncate: true });
  let written = 0;
  const put = async (b: Uint8Array) => {
    for (let done = 0; done < b.length;) done += await f.write(b.subarray(done));
    written += b.length;
  };
  try {
    await put(header);
    for (const [i, t] of tensors.entries()) {
      const b = await data(t, i);
      if (b.length !== tensorBytes(t)) {
        throw new RangeError(`${t.name}: ${b.length} bytes, expected ${tensorBytes(t)}`);
      }
      if (written !== header.length + offsets[i]) throw new RangeError(`${t.name}: misplaced`);
      await put(b);
      const gap = pad(b.length, ALIGNMENT);
      if (gap && i + 1 < tensors.length) await put(new Uint8Array(gap));
    }
  } finally {
    f.close();
  }
  await Deno.rename(tmp, path);
  return written;
}

/** Parses a GGUF header from the file's first bytes (enough to hold the whole header). */
export function readGgufHeader(bytes: Uint8Array, file = "gguf"): GgufHeader {
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let p = 0;
  const need = (n: number) => {
    if (p + n > bytes.length) throw new InputError(`header truncated at byte ${p}`, file);
  };
  const u32 = () => (need(4), p += 4, dv.getUint32(p - 4, true));
  const u64 = () => {
    need(8);
    p += 8;
    const v = dv.getBigUint64(p - 8, true);
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new InputError(`u64 too large at ${p}`, file);
    return Number(v);
  };
  const str = () => {
    const n = u64();
    need(n);
    p += n;
    return new TextDecoder().decode(bytes.subarray(p - n, p));
  };
  const value = (type: number): unknown => {
    switch (type) {
      case GGUF_VALUE.u8:
        return (need(1), dv.getUint8(p++));
      case GGUF_VALUE.i8:
        return (need(1), dv.getInt8(p++));
      case GGUF_VALUE.u16:
        return (need(2), p += 2, dv.getUint16(p - 2, true));
      case GGUF_VALUE.i16:
        return (need(2), p += 2, dv.getInt16(p - 2, true));
      case GGUF_VALUE.u32:
        return u32();
      case GGUF_VALUE.i32:
        return (need(4), p += 4, dv.getInt32(p - 4, true));
      case GGUF_VALUE.f32:
        return (need(4), p += 4, dv.getFloat32(p - 4, true));
      case GGUF_VALUE.bool:
        return (need(1), dv.getUint8(p++) !== 0);
      case GGUF_VALUE.string:
        return str();
      case GGUF_VALUE.u64:
        return u64();
      case GGUF_VALUE.i64:
        return (need(8), p += 8, Number(dv.getBigInt64(p - 8, true)));
      case GGUF_VALUE.f64:
        return (need(8), p += 8, dv.getFloat64(p - 8, true));
      case GGUF_VALUE.array: {
        const of = u32();
        const n = u64();
        const out: unknown[] = [];
        for (let i = 0; i < n; i++) out.push(value(of));
        return out;
      }
      default:
        throw new InputError(`unknown value type ${type} at byte ${p}`, file);
    }
  };
  if (u32() !== MAGIC) throw new InputError("not a GGUF file (bad magic)", file);
  const version = u32();
  if (version !== 3) throw new InputError(`GGUF version ${version} (only 3)`, file);
  const nTensors = u64(), nKv = u64();
  const metadata = new Map<string, unknown>();
  for (let i = 0; i < nKv; i++) {
    const key = str();
    metadata.set(key, value(u32()));
  }
  const names = Object.fromEntries(Object.entries(GGML_TYPE).map(([k, v]) => [v, k]));
  const tensors: GgufHeader["tensors"] = [];
  for (let i = 0; i < nTensors; i++) {
    const name = str();
    const nd = u32();
    const dims: number[] = [];
    for (let d = 0; d < nd; d++) dims.push(u64());
    const code = u32();
    const type = names[code] as GgmlTypeName | undefined;
    if (!type) throw new InputError(`tensor ${name}: ggml type ${code} not supported here`, file);
    tensors.push({ name, dims, type, offset: u64() });
  }
  const alignment = Number(metadata.get("general.alignment") ?? ALIGNMENT);
  return { version, metadata, tensors, dataOffset: p + pad(p, alignment), alignment };
}
