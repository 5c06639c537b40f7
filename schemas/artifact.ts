/**
 * Reads moeq artifacts: the compiled, quantized model the runtime loads. The layout is described
 * in `schemas/ARTIFACT.md`; in short:
 *
 * ```
 * [0, 64)        preamble: "MOEQ", version, header offset/length, file length, header CRC32C,
 *                reserved zeros, preamble CRC32C
 * [64, ...)      FlatBuffers header (schemas/artifact.fbs), then zero padding
 * 256-aligned    weight segments (offset, length, CRC32C recorded in the header), zero padding
 * ```
 *
 * `openArtifact` validates everything that can be validated without reading the weights (the
 * preamble, the header checksum, then schemas/header.ts: a FlatBuffers verifier pass, the model
 * description, the tensor records against the tensors it implies and their segment sizes; then
 * here: segment bounds, alignment and overlap) before returning; every problem is a one-line
 * InputError (UnsupportedError for a model variant this moeq does not know). Segment bytes are
 * checked against their CRC32C on every `read`, and `verifyAll` streams the whole file.
 *
 * Part of the format layer: it imports neither the compiler nor the runtime.
 *
 * @module
 */

import { dequantize, type QuantizedTensor } from "./packing.ts";
import { bf16ToF32, f16ToF32 } from "./half.ts";
import { crc32c, crc32cUpdate } from "./crc32c.ts";
import { InputError, IoError, LimitError, MoeqError } from "./errors.ts";
import {
  type ArtifactHeader,
  type ArtifactSummary,
  decodeHeader,
  type ExpertReport,
  FLOAT_BYTES,
  type FloatStorage,
  numelOf,
  quantSizes,
  type Segment,
  segmentsOf,
  type TensorRecord,
  type TokenizerRecord,
  u64ToNumber,
} from "./header.ts";
import type { ModelSpec } from "./model.ts";
import { keyString, type TensorKey } from "./tensors.ts";

export {
  type ArtifactHeader,
  type ArtifactSummary,
  encodeHeader,
  type ExpertReport,
  FLOAT_BYTES,
  type FloatStorage,
  isRoutedExpertMatrix,
  numelOf,
  type QuantRecord,
  type Segment,
  segmentsOf,
  type Storage,
  storageBits,
  summarize,
  type TensorRecord,
  type TokenizerRecord,
} from "./header.ts";

// ---------------------------------------------------------------------------------------------
// Layout constants and the preamble

/** The 4 magic bytes every artifact starts with. */
export const MAGIC = "MOEQ";
/**
 * The format version this code writes, and the only one it reads. Version 1 described the model
 * with a fixed config of four families; version 2 stores the model description (ModelSpec) and
 * names every tensor by stack. A version-1 artifact is refused with a message saying to recompile
 * it (see ARTIFACT.md).
 */
export const FORMAT_VERSION = 2;
/** Size of the fixed preamble; the header normally starts right after it. */
export const PREAMBLE_SIZE = 64;
/** Every weight segment starts at a multiple of this many bytes. */
export const SEGMENT_ALIGN = 256;
/** Headers larger than this are refused before being read (a LimitError). */
export const MAX_HEADER_BYTES = 1 << 30;

/** The decoded preamble. */
export interface Preamble {
  version: number;
  headerOffset: number;
  headerLength: number;
  /** Total size of the artifact file in bytes. */
  fileLength: number;
  headerCrc32c: number;
}

/** Rounds `n` up to a multiple of `align`. */
export function alignUp(n: number, align: number): number {
  return Math.ceil(n / align) * align;
}

/** Encodes the 64-byte preamble (including its own trailing CRC32C over bytes [0, 60)). */
export function encodePreamble(p: Preamble): Uint8Array {
  const out = new Uint8Array(PREAMBLE_SIZE);
  const dv = new DataView(out.buffer);
  out.set(new TextEncoder().encode(MAGIC), 0);
  dv.setUint32(4, p.version, true);
  dv.setBigUint64(8, BigInt(p.headerOffset), true);
  dv.setBigUint64(16, BigInt(p.headerLength), true);
  dv.setBigUint64(24, BigInt(p.fileLength), true);
  dv.setUint32(32, p.headerCrc32c, true);
  dv.setUint32(60, crc32c(out.subarray(0, 60)), true);
  return out;
}

/** Decodes and checks a preamble (magic, version, its CRC, reserved bytes). */
export function decodePreamble(bytes: Uint8Array, file: string): Preamble {
  if (bytes.length < PREAMBLE_SIZE) {
    throw new InputError(
      `truncated artifact: ${bytes.length} bytes, the preamble alone needs ${PREAMBLE_SIZE}`,
      file,
    );
  }
  const magic = String.fromCharCode(...bytes.subarray(0, 4));
  if (magic !== MAGIC) {
    throw new InputError(`not a moeq artifact: magic is ${JSON.stringify(magic)}`, file);
  }
  const dv = new DataView(bytes.buffer, bytes.byteOffset, PREAMBLE_SIZE);
  const version = dv.getUint32(4, true);
  if (version === 1) {
    throw new InputError(
      "artifact format version 1 is no longer read (it predates model descriptions): " +
        "recompile the checkpoint with this moeq (`moeq compile`)",
      file,
    );
  }
  if (version !== FORMAT_VERSION) {
    throw new InputError(
      `unsupported artifact format version ${version} (this moeq reads version ${FORMAT_VERSION})`,
      file,
    );
  }
  if (dv.getUint32(60, true) !== crc32c(bytes.subarray(0, 60))) {
    throw new InputError("preamble CRC32C mismatch (corrupt preamble)", file);
  }
  if (bytes.subarray(36, 60).some((b) => b !== 0)) {
    throw new InputError("preamble reserved bytes are not zero", file);
  }
  const u64 = (at: number, what: string) =>
    u64ToNumber(dv.getBigUint64(at, true), `preamble ${what}`, file);
  return {
    version,
    headerOffset: u64(8, "header offset"),
    headerLength: u64(16, "header length"),
    fileLength: u64(24, "file length"),
    headerCrc32c: dv.getUint32(32, true),
  };
}

// ---------------------------------------------------------------------------------------------
// Where the segments lie

/** Every segment of a header with what it holds (for messages), tokenizer.json included. */
function allSegments(h: ArtifactHeader): { seg: Segment; what: string }[] {
  const out = h.tensors.flatMap((t) =>
    t.quant
      ? [
        { seg: t.quant.codes, what: `tensor ${JSON.stringify(t.name)} codes` },
        { seg: t.quant.scales, what: `tensor ${JSON.stringify(t.name)} scales` },
        // MXFP4 has no zeros: its zeros segment is empty (validateHeader checks the length).
        ...(t.quant.scaleType === "e8m0"
          ? []
          : [{ seg: t.quant.zeros, what: `tensor ${JSON.stringify(t.name)} zeros` }]),
      ]
      : [{ seg: t.data!, what: `tensor ${JSON.stringify(t.name)} data` }]
  );
  if (h.tokenizer.json) out.push({ seg: h.tokenizer.json, what: "tokenizer.json" });
  return out;
}

/** Checks segments are aligned, non-empty, inside [PREAMBLE_SIZE, fileLength) and disjoint. */
function checkSegments(segs: { seg: Segment; what: string }[], file: string, fileLength: number) {
  for (const { seg, what } of segs) {
    if (seg.offset % SEGMENT_ALIGN !== 0) {
      throw new InputError(
        `${what}: segment offset ${seg.offset} is not ${SEGMENT_ALIGN}-byte aligned`,
        file,
      );
    }
    if (seg.length === 0) throw new InputError(`${what}: segment is empty`, file);
    if (seg.offset < PREAMBLE_SIZE || seg.offset + seg.length > fileLength) {
      throw new InputError(
        `${what}: segment [${seg.offset}, ${
          seg.offset + seg.length
        }) is outside the ${fileLength}-byte file`,
        file,
      );
    }
  }
  const sorted = [...segs].sort((a, b) => a.seg.offset - b.seg.offset);
  for (let i = 1; i < sorted.length; i++) {
    const prev = sorted[i - 1], cur = sorted[i];
    if (cur.seg.offset < prev.seg.offset + prev.seg.length) {
      throw new InputError(`${cur.what}: segment at ${cur.seg.offset} overlaps ${prev.what}`, file);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Byte sources and the Artifact object

/** Random-access bytes: a file or an in-memory buffer. */
interface ByteSource {
  readonly size: number;
  readAt(offset: number, length: number): Promise<Uint8Array>;
  close(): void;
}

function allocate(length: number, what: string): Uint8Array {
  try {
    return new Uint8Array(length);
  } catch (e) {
    throw new LimitError(`cannot allocate ${length} bytes for ${what}`, { cause: e });
  }
}

class MemorySource implements ByteSource {
  constructor(readonly bytes: Uint8Array) {}
  get size() {
    return this.bytes.length;
  }
  readAt(offset: number, length: number): Promise<Uint8Array> {
    return Promise.resolve(this.bytes.slice(offset, offset + length));
  }
  close() {}
}

class FileSource implements ByteSource {
  #queue: Promise<unknown> = Promise.resolve();
  constructor(readonly file: Deno.FsFile, readonly size: number, readonly path: string) {}

  /** Reads exactly [offset, offset + length); reads are serialised (seek + read is not atomic). */
  readAt(offset: number, length: number): Promise<Uint8Array> {
    const run = async () => {
      const out = allocate(length, `a read of ${this.path}`);
      try {
        await this.file.seek(offset, Deno.SeekMode.Start);
        let got = 0;
        while (got < length) {
          const n = await this.file.read(out.subarray(got));
          if (n === null) {
            throw new InputError(
              `truncated artifact: ended at ${
                offset + got
              } while reading ${length} bytes at ${offset}`,
              this.path,
            );
          }
          got += n;
        }
      } catch (e) {
        if (e instanceof MoeqError) throw e;
        throw new IoError(`${this.path}: read failed: ${(e as Error).message}`, { cause: e });
      }
      return out;
    };
    const p = this.#queue.then(run, run);
    this.#queue = p.catch(() => {});
    return p;
  }

  close() {
    try {
      this.file.close();
    } catch {
      // already closed
    }
  }
}

/** An opened, validated artifact. */
export interface Artifact extends ArtifactHeader {
  /** The path it was opened from ("<memory>" for openArtifactBytes). */
  readonly path: string;
  /** Format version of the file. */
  readonly version: number;
  /** Size of the file in bytes. */
  readonly fileLength: number;
  /** Where the header lies in the file. */
  readonly headerOffset: number;
  readonly headerLength: number;
  /** The compile options (parsed optionsJson). */
  readonly options: unknown;
  /** The decoded header as one object (the same values as the fields above). */
  readonly header: ArtifactHeader;
  /** Tensors by name. */
  readonly tensorsByName: ReadonlyMap<string, TensorRecord>;
  /** The tensor at a (stack, layer, expert, role) key, if the model has it. */
  tensorAt(key: TensorKey): TensorRecord | undefined;
  /** Reads one segment and checks its CRC32C; `what` names it in errors. */
  read(segment: Segment, what?: string): Promise<Uint8Array>;
  /** Reads the tokenizer.json bytes, or null for byte-level models. */
  readTokenizerJson(): Promise<Uint8Array | null>;
  /** Reads a tensor's values as f32 (dequantized for "q"). */
  readF32(tensor: TensorRecord): Promise<Float32Array>;
  /** Reads a "q" tensor as its packed arrays. */
  readQuantized(tensor: TensorRecord): Promise<QuantizedTensor>;
  /** Streams the whole file: every segment's CRC32C, and all padding must be zero. */
  verifyAll(): Promise<void>;
  /** Closes the file. */
  close(): void;
}

/** Opens and validates an artifact file (nothing beyond the header is read). */
export async function openArtifact(path: string): Promise<Artifact> {
  let file: Deno.FsFile;
  try {
    file = await Deno.open(path, { read: true });
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) throw new InputError("no such artifact file", path);
    throw new IoError(`${path}: cannot open: ${(e as Error).message}`, { cause: e });
  }
  try {
    const st = await file.stat();
    if (!st.isFile) throw new InputError("not a regular file", path);
    return await openSource(new FileSource(file, st.size, path), path);
  } catch (e) {
    file.close();
    throw e;
  }
}

/** Opens and validates an artifact held in memory. */
export function openArtifactBytes(bytes: Uint8Array, name = "<memory>"): Promise<Artifact> {
  return openSource(new MemorySource(bytes), name);
}

async function openSource(src: ByteSource, path: string): Promise<Artifact> {
  const pre = decodePreamble(await src.readAt(0, Math.min(PREAMBLE_SIZE, src.size)), path);
  if (src.size < pre.fileLength) {
    throw new InputError(
      `truncated artifact: ${src.size} bytes, the preamble says ${pre.fileLength}`,
      path,
    );
  }
  if (src.size > pre.fileLength) {
    throw new InputError(
      `artifact has ${
        src.size - pre.fileLength
      } trailing bytes beyond its recorded length ${pre.fileLength}`,
      path,
    );
  }
  const { headerOffset, headerLength } = pre;
  if (headerLength > MAX_HEADER_BYTES) {
    throw new LimitError(
      `${path}: header of ${headerLength} bytes exceeds the ${MAX_HEADER_BYTES}-byte limit`,
    );
  }
  if (
    headerOffset < PREAMBLE_SIZE || headerOffset % 8 !== 0 || headerLength < 8 ||
    headerOffset + headerLength > pre.fileLength
  ) {
    throw new InputError(
      `header [${headerOffset}, ${
        headerOffset + headerLength
      }) is not inside the ${pre.fileLength}-byte file`,
      path,
    );
  }
  const headerBytes = await src.readAt(headerOffset, headerLength);
  if (crc32c(headerBytes) !== pre.headerCrc32c) {
    throw new InputError("header CRC32C mismatch (corrupt header)", path);
  }
  const header = decodeHeader(headerBytes, path);
  checkSegments(allSegments(header), path, pre.fileLength);
  for (const s of allSegments(header)) {
    if (s.seg.offset < headerOffset + headerLength && headerOffset < s.seg.offset + s.seg.length) {
      throw new InputError(`${s.what}: segment at ${s.seg.offset} overlaps the header`, path);
    }
  }
  let options: unknown;
  try {
    options = JSON.parse(header.optionsJson);
  } catch {
    throw new InputError("header options_json is not valid JSON", path);
  }
  return new OpenedArtifact(src, path, pre, header, options);
}

/** Chunk size for streaming verification. */
const VERIFY_CHUNK = 16 << 20;

class OpenedArtifact implements Artifact {
  readonly generator: string;
  readonly model: ModelSpec;
  readonly tensors: TensorRecord[];
  readonly experts: ExpertReport[];
  readonly tokenizer: TokenizerRecord;
  readonly optionsJson: string;
  readonly summary: ArtifactSummary;
  readonly version: number;
  readonly fileLength: number;
  readonly headerOffset: number;
  readonly headerLength: number;
  readonly tensorsByName: ReadonlyMap<string, TensorRecord>;
  readonly header: ArtifactHeader;
  readonly #byKey: ReadonlyMap<string, TensorRecord>;

  constructor(
    readonly src: ByteSource,
    readonly path: string,
    pre: Preamble,
    h: ArtifactHeader,
    readonly options: unknown,
  ) {
    this.header = h;
    this.generator = h.generator;
    this.model = h.model;
    this.tensors = h.tensors;
    this.experts = h.experts;
    this.tokenizer = h.tokenizer;
    this.optionsJson = h.optionsJson;
    this.summary = h.summary;
    this.version = pre.version;
    this.fileLength = pre.fileLength;
    this.headerOffset = pre.headerOffset;
    this.headerLength = pre.headerLength;
    this.tensorsByName = new Map(h.tensors.map((t) => [t.name, t]));
    this.#byKey = new Map(h.tensors.map((t) => [keyString(t), t]));
  }

  tensorAt(key: TensorKey): TensorRecord | undefined {
    return this.#byKey.get(keyString(key));
  }

  async read(segment: Segment, what = `segment at ${segment.offset}`): Promise<Uint8Array> {
    if (segment.length === 0) return new Uint8Array(0); // an MXFP4 record's zeros
    if (
      !Number.isSafeInteger(segment.offset) || !Number.isSafeInteger(segment.length) ||
      segment.offset < 0 || segment.length < 0 || segment.offset + segment.length > this.fileLength
    ) {
      throw new InputError(
        `${what}: [${segment.offset}, +${segment.length}) is outside the file`,
        this.path,
      );
    }
    const bytes = await this.src.readAt(segment.offset, segment.length);
    if (crc32c(bytes) !== segment.crc32c) {
      throw new InputError(`${what}: CRC32C mismatch (corrupt weights)`, this.path);
    }
    return bytes;
  }

  async readTokenizerJson(): Promise<Uint8Array | null> {
    return this.tokenizer.json ? await this.read(this.tokenizer.json, "tokenizer.json") : null;
  }

  async readF32(t: TensorRecord): Promise<Float32Array> {
    const what = `tensor ${JSON.stringify(t.name)}`;
    const parts = [];
    for (const [i, seg] of segmentsOf(t).entries()) {
      parts.push(await this.read(seg, t.quant ? `${what} ${QUANT_PARTS[i]}` : what));
    }
    return decodeTensor(t, parts);
  }

  async readQuantized(t: TensorRecord): Promise<QuantizedTensor> {
    if (!t.quant) {
      throw new InputError(
        `tensor ${JSON.stringify(t.name)} is ${t.storage}, not quantized`,
        this.path,
      );
    }
    const what = `tensor ${JSON.stringify(t.name)}`;
    return toQuantizedTensor(t, {
      codes: await this.read(t.quant.codes, `${what} codes`),
      scales: await this.read(t.quant.scales, `${what} scales`),
      zeros: await this.read(t.quant.zeros, `${what} zeros`),
    }, true);
  }

  async verifyAll(): Promise<void> {
    // Every byte of the file is the preamble, the header, a segment or zero padding.
    const regions = allSegments(this).sort((a, b) => a.seg.offset - b.seg.offset);
    let pos = PREAMBLE_SIZE;
    const zeroGap = async (from: number, to: number) => {
      for (let at = from; at < to; at += VERIFY_CHUNK) {
        const n = Math.min(VERIFY_CHUNK, to - at);
        const bytes = await this.src.readAt(at, n);
        const i = bytes.findIndex((b) => b !== 0);
        if (i >= 0) throw new InputError(`non-zero padding byte at offset ${at + i}`, this.path);
      }
    };
    const header = {
      seg: { offset: this.headerOffset, length: this.headerLength, crc32c: -1 },
      what: "header",
    };
    for (const { seg, what } of [header, ...regions].sort((a, b) => a.seg.offset - b.seg.offset)) {
      await zeroGap(pos, seg.offset);
      pos = seg.offset + seg.length;
      if (seg.crc32c === -1) continue; // the header's CRC was checked at open
      let crc = 0;
      for (let at = seg.offset; at < pos; at += VERIFY_CHUNK) {
        crc = crc32cUpdate(crc, await this.src.readAt(at, Math.min(VERIFY_CHUNK, pos - at)));
      }
      if (crc !== seg.crc32c) {
        throw new InputError(`${what}: CRC32C mismatch (corrupt weights)`, this.path);
      }
    }
    await zeroGap(pos, this.fileLength);
  }

  close(): void {
    this.src.close();
  }
}

// ---------------------------------------------------------------------------------------------
// Segment bytes → values

function aligned(bytes: Uint8Array, align: number): Uint8Array {
  return bytes.byteOffset % align === 0 ? bytes : bytes.slice();
}

/** Converts float storage bytes (little-endian) to f32 values. */
export function floatBytesToF32(bytes: Uint8Array, storage: FloatStorage): Float32Array {
  const b = aligned(bytes, 4);
  if (storage === "f32") return new Float32Array(b.buffer, b.byteOffset, b.byteLength / 4).slice();
  const h = new Uint16Array(b.buffer, b.byteOffset, b.byteLength / 2);
  const out = new Float32Array(h.length);
  const conv = storage === "f16" ? f16ToF32 : bf16ToF32;
  for (let i = 0; i < h.length; i++) out[i] = conv(h[i]);
  return out;
}

const QUANT_PARTS = ["codes", "scales", "zeros"] as const;

/**
 * A tensor's values as f32 from its segments' bytes, given in `segmentsOf` order (data, or
 * codes/scales/zeros): float storage is widened, "q" is dequantized through schemas/packing.ts.
 */
export function decodeTensor(t: TensorRecord, parts: Uint8Array[]): Float32Array {
  if (t.quant) {
    return dequantize(toQuantizedTensor(t, { codes: parts[0], scales: parts[1], zeros: parts[2] }));
  }
  const want = numelOf(t.shape) * FLOAT_BYTES[t.storage as FloatStorage];
  if (parts.length !== 1 || parts[0].length !== want) {
    throw new InputError(
      `tensor ${JSON.stringify(t.name)}: data has ${parts[0]?.length ?? 0} bytes, expected ${want}`,
    );
  }
  return floatBytesToF32(parts[0], t.storage as FloatStorage);
}

/**
 * Builds the QuantizedTensor of a "q" record from its three segments' bytes: copied, or with
 * `owned` (fresh arrays the caller hands over) kept as they are when each spans its own buffer.
 */
export function toQuantizedTensor(
  t: TensorRecord,
  parts: { codes: Uint8Array; scales: Uint8Array; zeros: Uint8Array },
  owned = false,
): QuantizedTensor {
  const q = t.quant;
  if (!q) throw new InputError(`tensor ${JSON.stringify(t.name)} is ${t.storage}, not quantized`);
  const [rows, cols] = t.shape;
  const want = quantSizes(rows, cols, q);
  for (const part of ["codes", "scales", "zeros"] as const) {
    if (parts[part].length !== want[part]) {
      throw new InputError(
        `tensor ${JSON.stringify(t.name)}: ${part} has ${parts[part].length} bytes, expected ${
          want[part]
        }`,
      );
    }
  }
  // An array that is its whole buffer can be viewed as words; anything else is copied.
  const whole = (b: Uint8Array) =>
    owned && b.byteOffset === 0 && b.byteLength === b.buffer.byteLength ? b : b.slice();
  const codes = whole(parts.codes);
  const param = (b: Uint8Array) => {
    const c = whole(b);
    if (q.scaleType === "e8m0") return c;
    return q.scaleType === "f16" ? new Uint16Array(c.buffer) : new Float32Array(c.buffer);
  };
  return {
    rows,
    cols,
    bits: q.bits,
    groupSize: q.groupSize,
    scaleType: q.scaleType,
    codes: new Uint32Array(codes.buffer),
    scales: param(parts.scales),
    zeros: param(parts.zeros),
  };
}
