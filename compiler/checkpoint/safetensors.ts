/**
 * A streaming, validating safetensors reader.
 *
 * `openSafetensors` reads only the 8-byte header length and the JSON header, checks every entry
 * (dtype, shape, offsets, overlaps, exact coverage of the data region) and returns a handle whose
 * reads go to disk on demand, by offset. Nothing else of the file is ever held in memory.
 *
 * File layout: u64 little-endian header length N, N bytes of UTF-8 JSON, then the data region.
 * Each header entry is `name: {dtype, shape, data_offsets: [begin, end]}` with offsets relative to
 * the start of the data region; an optional `__metadata__` entry maps strings to strings.
 *
 * @module
 */

import { InputError, IoError, LimitError, UnsupportedError } from "../../schemas/errors.ts";
import { f16ToF32 } from "../../schemas/half.ts";

/** Largest header we accept (the reference implementation's limit too). */
export const MAX_HEADER_BYTES = 100_000_000;

/** Bytes per element of every dtype the format defines. */
export const DTYPE_SIZES: Readonly<Record<string, number>> = {
  F64: 8,
  F32: 4,
  F16: 2,
  BF16: 2,
  F8_E4M3: 1,
  F8_E5M2: 1,
  I64: 8,
  I32: 4,
  I16: 2,
  I8: 1,
  U64: 8,
  U32: 4,
  U16: 2,
  U8: 1,
  BOOL: 1,
};

/** The dtypes that can be read as floating-point weights. */
export const FLOAT_DTYPES: readonly string[] = ["F64", "F32", "F16", "BF16"];

/** One tensor's header entry, validated. Offsets are absolute positions in the file. */
export interface TensorInfo {
  /** The tensor's name in the header. */
  readonly name: string;
  /** One of the keys of DTYPE_SIZES. */
  readonly dtype: string;
  /** Dimensions (empty for a scalar). */
  readonly shape: readonly number[];
  /** Number of elements: product of shape. */
  readonly numel: number;
  /** Absolute file offset of the first byte. */
  readonly begin: number;
  /** Absolute file offset one past the last byte. */
  readonly end: number;
}

/** Options for reading tensor values. */
export interface ReadOptions {
  /** Read NaN/±Inf values as 0 instead of throwing an InputError (default false). */
  allowNonFinite?: boolean;
}

/** An opened, validated safetensors file. Reads open the file anew, so no handle is kept. */
export interface SafetensorsFile {
  /** The path it was opened from. */
  readonly path: string;
  /** Total file size in bytes. */
  readonly fileSize: number;
  /** Absolute offset of the data region (8 + header length). */
  readonly dataStart: number;
  /** The `__metadata__` map, or null when absent. */
  readonly metadata: Readonly<Record<string, string>> | null;
  /** Every tensor by name, in header order. */
  readonly tensors: ReadonlyMap<string, TensorInfo>;
  /** The entry for `name`; InputError naming the tensor when absent. */
  info(name: string): TensorInfo;
  /** Reads a whole tensor as f32, row-major. */
  read(name: string, options?: ReadOptions): Promise<Float32Array>;
  /** The raw bytes of `count` elements from flat element index `start` of a float tensor. */
  readBytes(name: string, start: number, count: number): Promise<Uint8Array>;
  /** Bytes [start, start + count) of a U8 tensor (MXFP4 blocks and scales). */
  readU8(name: string, start: number, count: number): Promise<Uint8Array>;
  /** Reads `count` elements starting at flat element index `start` as f32. */
  readElements(
    name: string,
    start: number,
    count: number,
    options?: ReadOptions,
  ): Promise<Float32Array>;
  /**
   * Reads rows `[rowStart, rowStart + rowCount)` of the tensor viewed as a matrix whose rows are
   * its last dimension (e.g. rows e·2I … e·2I+I−1 of a packed `[E, 2I, H]` tensor).
   */
  readRows(
    name: string,
    rowStart: number,
    rowCount: number,
    options?: ReadOptions,
  ): Promise<Float32Array>;
}

/** Product of a shape as a safe integer, or null when it would exceed 2^53. */
function safeProduct(shape: readonly number[]): number | null {
  let n = 1;
  for (const d of shape) {
    if (d !== 0 && n > Number.MAX_SAFE_INTEGER / d) return null;
    n *= d;
  }
  return n;
}

function isNonNegativeInteger(v: unknown): v is number {
  return typeof v === "number" && Number.isSafeInteger(v) && v >= 0;
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

/**
 * Returns the first key that appears twice in the same JSON object anywhere in `text`, or null.
 * `text` must already be valid JSON (JSON.parse silently keeps the last duplicate).
 */
export function findDuplicateKey(text: string): string | null {
  // One entry per open container: the keys seen so far for objects, null for arrays.
  const stack: (Set<string> | null)[] = [];
  let expectKey = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (c === '"') {
      let j = i + 1;
      while (text[j] !== '"') j += text[j] === "\\" ? 2 : 1;
      const keys = stack[stack.length - 1];
      if (keys && expectKey) {
        const key = JSON.parse(text.slice(i, j + 1)) as string;
        if (keys.has(key)) return key;
        keys.add(key);
        expectKey = false;
      }
      i = j;
    } else if (c === "{") {
      stack.push(new Set());
      expectKey = true;
    } else if (c === "[") {
      stack.push(null);
    } else if (c === "}" || c === "]") {
      stack.pop();
    } else if (c === ",") {
      expectKey = stack[stack.length - 1] != null;
    }
  }
  return null;
}

/** Maps an OS error to InputError (missing/not a file) or IoError (anything else). */
export function osError(err: unknown, path: string, action: string): Error {
  if (err instanceof Deno.errors.NotFound) return new InputError("file not found", path);
  if (err instanceof Deno.errors.IsADirectory) return new InputError("is a directory", path);
  const msg = err instanceof Error ? err.message : String(err);
  return new IoError(`${path}: ${action} failed: ${msg}`, { cause: err });
}

/** The error of a read of `length` bytes at `offset` that met the end of `path` after `got`. */
function endOfFile(path: string, offset: number, got: number, length: number): InputError {
  return new InputError(
    `unexpected end of file at byte ${offset + got} (wanted ${length} bytes at ${offset})`,
    path,
  );
}

/** A failed read as its one-line error: an InputError as it is, anything else via osError. */
function readFailure(err: unknown, path: string): Error {
  return err instanceof InputError ? err : osError(err, path, "read");
}

/** Reads exactly `length` bytes at absolute `offset`; InputError if the file ends early. */
export async function readAt(path: string, offset: number, length: number): Promise<Uint8Array> {
  const out = new Uint8Array(length);
  let file: Deno.FsFile;
  try {
    file = await Deno.open(path, { read: true });
  } catch (err) {
    throw osError(err, path, "open");
  }
  try {
    await file.seek(offset, Deno.SeekMode.Start);
    let got = 0;
    while (got < length) {
      const n = await file.read(out.subarray(got));
      if (n === null) throw endOfFile(path, offset, got, length);
      got += n;
    }
  } catch (err) {
    throw readFailure(err, path);
  } finally {
    file.close();
  }
  return out;
}

/**
 * Fills `into` with the bytes at absolute `offset`, synchronously (for worker jobs that read
 * their own rows, calibration/raw_read.ts); InputError if the file ends early.
 */
export function readIntoSync(path: string, offset: number, into: Uint8Array): void {
  let file: Deno.FsFile;
  try {
    file = Deno.openSync(path, { read: true });
  } catch (err) {
    throw osError(err, path, "open");
  }
  try {
    file.seekSync(offset, Deno.SeekMode.Start);
    let got = 0;
    while (got < into.length) {
      const n = file.readSync(into.subarray(got));
      if (n === null || n === 0) throw endOfFile(path, offset, got, into.length);
      got += n;
    }
  } catch (err) {
    throw readFailure(err, path);
  } finally {
    file.close();
  }
}

let f16Table: Float32Array | null = null;

/** Decodes little-endian raw bytes of a float dtype into f32. */
export function decodeFloats(bytes: Uint8Array, dtype: string): Float32Array {
  // `bytes` is always a fresh, offset-0 buffer from readAt, so typed views are aligned.
  const n = bytes.byteLength / DTYPE_SIZES[dtype];
  switch (dtype) {
    case "F32":
      return new Float32Array(bytes.buffer, bytes.byteOffset, n);
    case "F64":
      return Float32Array.from(new Float64Array(bytes.buffer, bytes.byteOffset, n));
    case "BF16": {
      const src = new Uint16Array(bytes.buffer, bytes.byteOffset, n);
      const out = new Float32Array(n);
      const bits = new Uint32Array(out.buffer);
      for (let i = 0; i < n; i++) bits[i] = src[i] << 16;
      return out;
    }
    case "F16": {
      if (!f16Table) {
        f16Table = new Float32Array(65536);
        for (let h = 0; h < 65536; h++) f16Table[h] = f16ToF32(h);
      }
      const src = new Uint16Array(bytes.buffer, bytes.byteOffset, n);
      const out = new Float32Array(n);
      for (let i = 0; i < n; i++) out[i] = f16Table[src[i]];
      return out;
    }
  }
  throw new UnsupportedError(`dtype ${dtype} cannot be read as floating point`);
}

/** Validates one header entry; returns it with absolute offsets. */
function parseEntry(
  path: string,
  name: string,
  raw: unknown,
  dataStart: number,
  dataSize: number,
): TensorInfo {
  const bad = (what: string) => new InputError(`tensor "${name}": ${what}`, path);
  if (!isPlainObject(raw)) throw bad("header entry is not an object");
  const { dtype, shape, data_offsets: offsets } = raw;
  if (typeof dtype !== "string") throw bad('"dtype" missing or not a string');
  if (!Object.hasOwn(DTYPE_SIZES, dtype)) throw bad(`unknown dtype ${JSON.stringify(dtype)}`);
  const size = DTYPE_SIZES[dtype];
  if (!Array.isArray(shape)) throw bad('"shape" missing or not an array');
  for (const d of shape) {
    if (!isNonNegativeInteger(d)) {
      throw bad(
        `shape ${JSON.stringify(shape)} has a dimension that is not a non-negative integer`,
      );
    }
  }
  if (!Array.isArray(offsets) || offsets.length !== 2) {
    throw bad('"data_offsets" missing or not [begin, end]');
  }
  const [begin, end] = offsets;
  if (!isNonNegativeInteger(begin) || !isNonNegativeInteger(end)) {
    throw bad(`data_offsets ${JSON.stringify(offsets)} are not non-negative integers`);
  }
  if (begin > end) throw bad(`data_offsets [${begin}, ${end}] has begin > end`);
  if (end > dataSize) {
    throw bad(`data_offsets [${begin}, ${end}] run past the data region (${dataSize} bytes)`);
  }
  const numel = safeProduct(shape);
  if (numel === null || numel > Number.MAX_SAFE_INTEGER / size) {
    throw bad(`shape ${JSON.stringify(shape)} is too large`);
  }
  if (numel * size !== end - begin) {
    throw bad(
      `${dtype} shape ${JSON.stringify(shape)} needs ${numel * size} bytes but data_offsets ` +
        `span ${end - begin}`,
    );
  }
  return {
    name,
    dtype,
    shape: shape as number[],
    numel,
    begin: dataStart + begin,
    end: dataStart + end,
  };
}

/** Checks that tensors tile the data region exactly: no overlap, no gap, no trailing bytes. */
function checkCoverage(path: string, infos: TensorInfo[], dataStart: number, fileSize: number) {
  const sorted = [...infos].sort((a, b) => a.begin - b.begin || a.end - b.end);
  let pos = dataStart;
  let prev: TensorInfo | null = null;
  for (const t of sorted) {
    if (t.begin < pos) {
      throw new InputError(`tensor "${t.name}" overlaps tensor "${prev!.name}"`, path);
    }
    if (t.begin > pos) {
      throw new InputError(
        `gap of ${t.begin - pos} bytes before tensor "${t.name}" in the data region`,
        path,
      );
    }
    pos = t.end;
    prev = t;
  }
  if (pos !== fileSize) {
    throw new InputError(`${fileSize - pos} trailing bytes after the last tensor`, path);
  }
}

/** Opens and validates a safetensors file, reading only its header. */
export async function openSafetensors(path: string): Promise<SafetensorsFile> {
  let fileSize: number;
  try {
    const st = await Deno.stat(path);
    if (!st.isFile) throw new InputError("not a regular file", path);
    fileSize = st.size;
  } catch (err) {
    if (err instanceof InputError) throw err;
    throw osError(err, path, "stat");
  }
  if (fileSize < 8) {
    throw new InputError(`file is ${fileSize} bytes, too small for a safetensors header`, path);
  }
  const lenBytes = await readAt(path, 0, 8);
  const headerLen = new DataView(lenBytes.buffer).getBigUint64(0, true);
  if (headerLen > BigInt(MAX_HEADER_BYTES)) {
    throw new LimitError(
      `${path}: header length ${headerLen} exceeds the ${MAX_HEADER_BYTES}-byte limit`,
    );
  }
  const n = Number(headerLen);
  if (n > fileSize - 8) {
    throw new InputError(
      `header length ${n} exceeds the ${fileSize - 8} bytes after the length field (truncated?)`,
      path,
    );
  }
  const headerBytes = await readAt(path, 8, n);
  let text: string;
  try {
    text = new TextDecoder("utf-8", { fatal: true }).decode(headerBytes);
  } catch {
    throw new InputError("header is not valid UTF-8", path);
  }
  let header: unknown;
  try {
    header = JSON.parse(text);
  } catch (err) {
    throw new InputError(`header is not valid JSON (${(err as Error).message})`, path);
  }
  if (!isPlainObject(header)) throw new InputError("header is not a JSON object", path);
  const dup = findDuplicateKey(text);
  if (dup !== null) throw new InputError(`header has duplicate key "${dup}"`, path);

  const dataStart = 8 + n;
  const dataSize = fileSize - dataStart;
  let metadata: Record<string, string> | null = null;
  const tensors = new Map<string, TensorInfo>();
  for (const [name, raw] of Object.entries(header)) {
    if (name === "__metadata__") {
      if (!isPlainObject(raw) || !Object.values(raw).every((v) => typeof v === "string")) {
        throw new InputError('"__metadata__" is not a map of strings to strings', path);
      }
      metadata = raw as Record<string, string>;
      continue;
    }
    tensors.set(name, parseEntry(path, name, raw, dataStart, dataSize));
  }
  checkCoverage(path, [...tensors.values()], dataStart, fileSize);
  return new SafetensorsHandle(path, fileSize, dataStart, metadata, tensors);
}

class SafetensorsHandle implements SafetensorsFile {
  constructor(
    readonly path: string,
    readonly fileSize: number,
    readonly dataStart: number,
    readonly metadata: Readonly<Record<string, string>> | null,
    readonly tensors: ReadonlyMap<string, TensorInfo>,
  ) {}

  info(name: string): TensorInfo {
    const t = this.tensors.get(name);
    if (!t) throw new InputError(`tensor "${name}" not found`, this.path);
    return t;
  }

  read(name: string, options?: ReadOptions): Promise<Float32Array> {
    return this.readElements(name, 0, this.info(name).numel, options);
  }

  readU8(name: string, start: number, count: number): Promise<Uint8Array> {
    const t = this.info(name);
    if (t.dtype !== "U8") {
      throw new InputError(`tensor "${name}" has dtype ${t.dtype}, expected U8`, this.path);
    }
    if (
      !Number.isSafeInteger(start) || !Number.isSafeInteger(count) || start < 0 || count < 0 ||
      start + count > t.numel
    ) {
      throw new RangeError(`bytes [${start}, ${start + count}) outside tensor "${name}"`);
    }
    return readAt(this.path, t.begin + start, count);
  }

  readBytes(name: string, start: number, count: number): Promise<Uint8Array> {
    const t = this.info(name);
    // F8_E4M3 codes are read raw and decoded with their block scales (fp8.ts).
    if (!FLOAT_DTYPES.includes(t.dtype) && t.dtype !== "F8_E4M3") {
      throw new UnsupportedError(
        `${this.path}: tensor "${name}" has dtype ${t.dtype}, which cannot be read as floating point`,
      );
    }
    if (
      !Number.isSafeInteger(start) || !Number.isSafeInteger(count) || start < 0 || count < 0 ||
      start + count > t.numel
    ) {
      throw new RangeError(`elements [${start}, ${start + count}) outside tensor "${name}"`);
    }
    const size = DTYPE_SIZES[t.dtype];
    return readAt(this.path, t.begin + start * size, count * size);
  }

  async readElements(
    name: string,
    start: number,
    count: number,
    options: ReadOptions = {},
  ): Promise<Float32Array> {
    const t = this.info(name);
    const bytes = await this.readBytes(name, start, count);
    const values = decodeFloats(bytes, t.dtype);
    for (let i = 0; i < values.length; i++) {
      if (!Number.isFinite(values[i])) {
        if (options.allowNonFinite) {
          values[i] = 0;
          continue;
        }
        throw new InputError(
          `tensor "${name}" has a non-finite value (${values[i]}) at element ${start + i}`,
          this.path,
        );
      }
    }
    return values;
  }

  readRows(
    name: string,
    rowStart: number,
    rowCount: number,
    options?: ReadOptions,
  ): Promise<Float32Array> {
    const t = this.info(name);
    const cols = t.shape.length ? t.shape[t.shape.length - 1] : 1;
    return this.readElements(name, rowStart * cols, rowCount * cols, options);
  }
}
