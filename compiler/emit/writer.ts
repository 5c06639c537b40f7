/**
 * Streaming artifact writer. Weight segments are written to a temporary file in the destination
 * directory as tensors arrive, so memory is bounded by the largest tensor; `finish()` writes the
 * header and the preamble at the front and renames the temporary file over the destination.
 *
 * Header placement (strategy "reserve"): the header lives right after the 64-byte preamble in a
 * region of `headerReserve` bytes; segments start at the first 256-byte boundary after it.
 * `emitArtifact` sizes the region exactly by encoding a placeholder header up front (the encoded
 * size does not depend on offsets or checksums, see header.ts). Should a header still outgrow
 * its region (a caller that under-reserved), it is appended after the last segment instead and
 * the region stays zero: the preamble's header offset says where it is, so the file is valid
 * either way and no weight byte is ever moved.
 *
 * @module
 */

import { basename, dirname, join } from "node:path";
import {
  alignUp,
  type ArtifactHeader,
  encodePreamble,
  type ExpertReport,
  type FloatStorage,
  FORMAT_VERSION,
  PREAMBLE_SIZE,
  type Segment,
  SEGMENT_ALIGN,
  summarize,
  type TensorRecord,
} from "../../schemas/artifact.ts";
import { crc32c, crc32cUpdate } from "../../schemas/crc32c.ts";
import { InputError, IoError, MoeqError, UsageError } from "../../schemas/errors.ts";
import type { ModelSpec, StackName } from "../../schemas/model.ts";
import {
  packedByteSizes,
  type QuantizedTensor,
  type QuantLayout,
  wordsPerRow,
} from "../../schemas/packing.ts";
import { castMatrix } from "../quantize/cast.ts";
import { encodeHeader } from "../../schemas/header.ts";

/** Where a tensor sits in the model: everything in a TensorRecord except its storage. */
export interface TensorMeta {
  /** The source (checkpoint) name, for messages. */
  name: string;
  stack: StackName;
  /** A schemas/tensors.ts role. */
  role: string;
  layer: number;
  expert: number;
  shape: number[];
}

/** The minimal file interface the writer needs (a Deno.FsFile satisfies it). */
export interface WriterFile {
  write(p: Uint8Array): Promise<number>;
  seek(offset: number | bigint, whence: Deno.SeekMode): Promise<number>;
  close(): void;
}

/** Options of {@link ArtifactWriter.create}. */
export interface WriterOptions {
  /** Bytes reserved for the header after the preamble (default 64 KiB). */
  headerReserve?: number;
  /** Wraps the opened temp file (fault injection in tests). */
  wrapFile?: (file: Deno.FsFile) => WriterFile;
}

/** What `finish` needs besides the tensors. */
export interface FinishOptions {
  /** The model description; the tensors written must be exactly those it implies. */
  model: ModelSpec;
  experts?: ExpertReport[];
  /** Compile options as JSON (default "{}"). */
  optionsJson?: string;
  /** Default "moeq". */
  generator?: string;
}

/** The result of a finished write. */
export interface WrittenArtifact {
  path: string;
  /** File size in bytes. */
  bytes: number;
  header: ArtifactHeader;
}

/** A float tensor written in pieces (see {@link ArtifactWriter.beginFloatTensor}). */
export interface FloatTensorStream {
  /** Appends the next rows, already in the storage type's bytes (f32, f16 or bf16 patterns). */
  append(bytes: Uint8Array): Promise<void>;
  /** Checks that every byte arrived and records the tensor. */
  finish(): Promise<TensorRecord>;
}

/** A quantized matrix written in pieces (see {@link ArtifactWriter.beginQuantTensor}). */
export interface QuantTensorStream {
  /** Appends the packed code words of the next rows. */
  appendCodes(words: Uint32Array): Promise<void>;
  /** Writes the scales and zeros of all rows (after every code) and records the tensor. */
  finish(
    scales: Uint16Array | Float32Array | Uint8Array,
    zeros: Uint16Array | Float32Array | Uint8Array,
  ): Promise<TensorRecord>;
}

/** Default header region size. */
export const DEFAULT_HEADER_RESERVE = 64 << 10;

function ioError(e: unknown, what: string): MoeqError {
  if (e instanceof MoeqError) return e;
  return new IoError(`${what}: ${(e as Error).message}`, { cause: e });
}

/** Writes one artifact; see the module documentation for the layout strategy. */
export class ArtifactWriter {
  readonly destPath: string;
  readonly tempPath: string;
  readonly headerReserve: number;
  readonly #file: WriterFile;
  readonly #tensors: TensorRecord[] = [];
  readonly #names = new Set<string>();
  #tokenizer: ArtifactHeader["tokenizer"] = { json: null, chatTemplate: null };
  /** Offset where the next segment goes (always 256-aligned). */
  #pos: number;
  /** End of the last segment written. */
  #end = 0;
  #state: "open" | "done" | "failed" = "open";
  /** The file position (where the next write lands without a seek); -1 when unknown. */
  #filePos = -1;
  /** What is being streamed right now (a segment opened in pieces), or null. */
  #streaming: string | null = null;

  private constructor(destPath: string, tempPath: string, file: WriterFile, reserve: number) {
    this.destPath = destPath;
    this.tempPath = tempPath;
    this.#file = file;
    this.headerReserve = reserve;
    this.#pos = alignUp(PREAMBLE_SIZE + reserve, SEGMENT_ALIGN);
  }

  /** Creates `<dest>.tmp-<random>` next to `destPath` and positions it after the header region. */
  static async create(destPath: string, opts: WriterOptions = {}): Promise<ArtifactWriter> {
    const reserve = opts.headerReserve ?? DEFAULT_HEADER_RESERVE;
    if (!Number.isSafeInteger(reserve) || reserve < 0) {
      throw new UsageError(`headerReserve ${reserve} is not a non-negative integer`);
    }
    const rand = crypto.getRandomValues(new Uint32Array(2));
    const tempPath = join(
      dirname(destPath),
      `${basename(destPath)}.tmp-${rand[0].toString(36)}${rand[1].toString(36)}`,
    );
    let file: Deno.FsFile;
    try {
      file = await Deno.open(tempPath, { write: true, createNew: true });
    } catch (e) {
      throw ioError(e, `${destPath}: cannot create ${tempPath}`);
    }
    return new ArtifactWriter(destPath, tempPath, opts.wrapFile?.(file) ?? file, reserve);
  }

  /** The tensors written so far. */
  get tensors(): readonly TensorRecord[] {
    return this.#tensors;
  }

  /** Writes one segment at the next aligned offset. */
  async #segment(bytes: Uint8Array, what: string): Promise<Segment> {
    this.#checkIdle(what);
    if (bytes.length === 0) return { offset: 0, length: 0, crc32c: 0 }; // MXFP4 zeros
    const offset = this.#pos;
    await this.#write(offset, bytes, what);
    this.#end = offset + bytes.length;
    this.#pos = alignUp(this.#end, SEGMENT_ALIGN);
    return { offset, length: bytes.length, crc32c: crc32c(bytes) };
  }

  async #write(offset: number, bytes: Uint8Array, what: string): Promise<void> {
    try {
      // Segments are mostly written back to back: seek only when the file is elsewhere.
      if (offset !== this.#filePos) {
        this.#filePos = -1;
        await this.#file.seek(offset, Deno.SeekMode.Start);
      }
      this.#filePos = -1;
      let done = 0;
      while (done < bytes.length) done += await this.#file.write(bytes.subarray(done));
      this.#filePos = offset + bytes.length;
    } catch (e) {
      throw ioError(e, `${this.tempPath}: writing ${what} failed`);
    }
  }

  /** Runs a write step; any failure removes the temp file and leaves the writer unusable. */
  async #guard<T>(step: () => Promise<T>): Promise<T> {
    if (this.#state !== "open") {
      throw new UsageError(`artifact writer for ${this.destPath} is ${this.#state}`);
    }
    try {
      return await step();
    } catch (e) {
      await this.abort();
      this.#state = "failed";
      throw ioError(e, this.tempPath);
    }
  }

  #checkMeta(meta: TensorMeta, numel: number): void {
    if (this.#names.has(meta.name)) {
      throw new UsageError(`tensor ${JSON.stringify(meta.name)} is written twice`);
    }
    if (meta.shape.length < 1 || meta.shape.some((d) => !Number.isSafeInteger(d) || d < 1)) {
      throw new UsageError(`tensor ${JSON.stringify(meta.name)}: bad shape [${meta.shape}]`);
    }
    const n = meta.shape.reduce((a, b) => a * b, 1);
    if (n !== numel) {
      throw new InputError(
        `tensor ${JSON.stringify(meta.name)}: ${numel} values for shape [${meta.shape}]`,
      );
    }
    this.#names.add(meta.name);
  }

  /** Writes a float tensor stored as f32, f16 or bf16 (round to nearest even). */
  addFloatTensor(
    meta: TensorMeta,
    data: Float32Array,
    storage: FloatStorage,
  ): Promise<TensorRecord> {
    return this.#guard(async () => {
      this.#checkMeta(meta, data.length);
      const bytes = storage === "f32"
        ? new Uint8Array(data.buffer, data.byteOffset, data.byteLength)
        : storage === "f16" || storage === "bf16"
        ? new Uint8Array(castMatrix(data, storage, meta.name).buffer)
        : (() => {
          throw new UsageError(`tensor ${JSON.stringify(meta.name)}: unknown storage ${storage}`);
        })();
      const rec: TensorRecord = {
        ...meta,
        shape: [...meta.shape],
        storage,
        data: await this.#segment(bytes, `tensor ${meta.name}`),
        quant: null,
      };
      this.#tensors.push(rec);
      return rec;
    });
  }

  /** Writes a quantized matrix (codes, scales, zeros as three segments). */
  addQuantTensor(meta: TensorMeta, q: QuantizedTensor, quantizer: string): Promise<TensorRecord> {
    return this.#guard(async () => {
      this.#checkMeta(meta, q.rows * q.cols);
      if (meta.shape.length !== 2 || meta.shape[0] !== q.rows || meta.shape[1] !== q.cols) {
        throw new InputError(
          `tensor ${
            JSON.stringify(meta.name)
          }: shape [${meta.shape}] but quantized ${q.rows}x${q.cols}`,
        );
      }
      const want = packedByteSizes(q);
      const bytesOf = (a: Uint32Array | Uint16Array | Float32Array | Uint8Array) =>
        new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
      const parts = { codes: bytesOf(q.codes), scales: bytesOf(q.scales), zeros: bytesOf(q.zeros) };
      for (const p of ["codes", "scales", "zeros"] as const) {
        if (parts[p].length !== want[p]) {
          throw new InputError(
            `tensor ${JSON.stringify(meta.name)}: ${p} has ${parts[p].length} bytes, layout needs ${
              want[p]
            }`,
          );
        }
      }
      const rec: TensorRecord = {
        ...meta,
        shape: [...meta.shape],
        storage: "q",
        data: null,
        quant: {
          bits: q.bits,
          groupSize: q.groupSize,
          scaleType: q.scaleType,
          quantizer,
          codes: await this.#segment(parts.codes, `tensor ${meta.name} codes`),
          scales: await this.#segment(parts.scales, `tensor ${meta.name} scales`),
          zeros: await this.#segment(parts.zeros, `tensor ${meta.name} zeros`),
        },
      };
      this.#tensors.push(rec);
      return rec;
    });
  }

  /**
   * Opens a segment of exactly `length` bytes written in pieces, its CRC32C computed as they
   * arrive. Nothing else may be written until `close` returns the segment.
   */
  #openSegment(length: number, what: string) {
    const offset = this.#pos;
    let done = 0;
    let crc = 0;
    this.#streaming = what;
    return {
      append: async (bytes: Uint8Array) => {
        if (done + bytes.length > length) {
          throw new UsageError(
            `${what}: ${done + bytes.length} bytes for a ${length}-byte segment`,
          );
        }
        await this.#write(offset + done, bytes, what);
        crc = crc32cUpdate(crc, bytes);
        done += bytes.length;
      },
      close: (): Segment => {
        if (done !== length) {
          throw new UsageError(`${what}: ${done} of ${length} bytes written`);
        }
        this.#streaming = null;
        this.#end = offset + length;
        this.#pos = alignUp(this.#end, SEGMENT_ALIGN);
        return { offset, length, crc32c: crc };
      },
    };
  }

  /** Runs a step of an open stream; failures abort the writer like any other write. */
  #streamStep<T>(step: () => Promise<T> | T): Promise<T> {
    if (this.#state !== "open") {
      return Promise.reject(
        new UsageError(`artifact writer for ${this.destPath} is ${this.#state}`),
      );
    }
    return this.#guard(async () => await step());
  }

  #checkIdle(name: string): void {
    if (this.#streaming !== null) {
      throw new UsageError(
        `tensor ${JSON.stringify(name)}: ${this.#streaming} is still being written`,
      );
    }
  }

  /**
   * Starts a float tensor whose bytes arrive in pieces (row blocks, in order): the segment
   * and its CRC32C are produced without ever holding the whole tensor. The result is byte for
   * byte what {@link addFloatTensor} writes for the concatenated data.
   */
  beginFloatTensor(meta: TensorMeta, storage: FloatStorage): FloatTensorStream {
    this.#checkIdle(meta.name);
    const size = storage === "f32" ? 4 : storage === "f16" || storage === "bf16" ? 2 : 0;
    if (!size) {
      throw new UsageError(`tensor ${JSON.stringify(meta.name)}: unknown storage ${storage}`);
    }
    const numel = meta.shape.reduce((a, b) => a * b, 1);
    this.#checkMeta(meta, numel);
    const seg = this.#openSegment(numel * size, `tensor ${meta.name}`);
    return {
      append: (bytes) => this.#streamStep(() => seg.append(bytes)),
      finish: () =>
        this.#streamStep(() => {
          const rec: TensorRecord = {
            ...meta,
            shape: [...meta.shape],
            storage,
            data: seg.close(),
            quant: null,
          };
          this.#tensors.push(rec);
          return rec;
        }),
    };
  }

  /**
   * Starts a quantized matrix whose packed codes arrive in row blocks (in order); the scales and
   * zeros (small) come at the end. Byte for byte what {@link addQuantTensor} writes.
   */
  beginQuantTensor(meta: TensorMeta, layout: QuantLayout, quantizer: string): QuantTensorStream {
    this.#checkIdle(meta.name);
    const { rows, cols } = layout;
    this.#checkMeta(meta, rows * cols);
    if (meta.shape.length !== 2 || meta.shape[0] !== rows || meta.shape[1] !== cols) {
      throw new InputError(
        `tensor ${JSON.stringify(meta.name)}: shape [${meta.shape}] but quantized ${rows}x${cols}`,
      );
    }
    const want = packedByteSizes(layout);
    if (want.codes !== rows * wordsPerRow(cols, layout.bits) * 4) {
      throw new Error(`internal: code layout of ${meta.name}`);
    }
    const codes = this.#openSegment(want.codes, `tensor ${meta.name} codes`);
    const bytesOf = (a: Uint32Array | Uint16Array | Float32Array | Uint8Array) =>
      new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
    return {
      appendCodes: (words) => this.#streamStep(() => codes.append(bytesOf(words))),
      finish: (scales, zeros) =>
        this.#streamStep(async () => {
          const parts = { scales: bytesOf(scales), zeros: bytesOf(zeros) };
          for (const p of ["scales", "zeros"] as const) {
            if (parts[p].length !== want[p]) {
              throw new InputError(
                `tensor ${JSON.stringify(meta.name)}: ${p} has ${
                  parts[p].length
                } bytes, layout needs ${want[p]}`,
              );
            }
          }
          const codeSeg = codes.close();
          const rec: TensorRecord = {
            ...meta,
            shape: [...meta.shape],
            storage: "q",
            data: null,
            quant: {
              bits: layout.bits,
              groupSize: layout.groupSize,
              scaleType: layout.scaleType,
              quantizer,
              codes: codeSeg,
              scales: await this.#segment(parts.scales, `tensor ${meta.name} scales`),
              zeros: await this.#segment(parts.zeros, `tensor ${meta.name} zeros`),
            },
          };
          this.#tensors.push(rec);
          return rec;
        }),
    };
  }

  /** Stores tokenizer.json (as a segment; null for byte-level) and the chat template. */
  setTokenizer(tokenizerJson: Uint8Array | null, chatTemplate: string | null): Promise<void> {
    return this.#guard(async () => {
      this.#tokenizer = {
        json: tokenizerJson && tokenizerJson.length
          ? await this.#segment(tokenizerJson, "tokenizer.json")
          : null,
        chatTemplate,
      };
    });
  }

  /** Writes header + preamble, syncs and renames the temp file over the destination. */
  finish(opts: FinishOptions): Promise<WrittenArtifact> {
    return this.#guard(async () => {
      this.#checkIdle("header");
      const header: ArtifactHeader = {
        generator: opts.generator ?? "moeq",
        model: opts.model,
        tensors: this.#tensors,
        experts: opts.experts ?? [],
        tokenizer: this.#tokenizer,
        optionsJson: opts.optionsJson ?? "{}",
        summary: summarize(this.#tensors),
      };
      const headerBytes = encodeHeader(header);
      let headerOffset = PREAMBLE_SIZE;
      let end = this.#pos;
      if (headerBytes.length > this.headerReserve) {
        headerOffset = this.#pos; // outgrew its region: append it (see module docs)
        end = headerOffset + headerBytes.length;
      }
      // The file ends right after the last segment (or the appended header): no trailing padding.
      const fileLength = headerOffset === PREAMBLE_SIZE
        ? Math.max(PREAMBLE_SIZE + headerBytes.length, this.#end)
        : end;
      await this.#write(headerOffset, headerBytes, "header");
      const preamble = encodePreamble({
        version: FORMAT_VERSION,
        headerOffset,
        headerLength: headerBytes.length,
        fileLength,
        headerCrc32c: crc32c(headerBytes),
      });
      await this.#write(0, preamble, "preamble");
      try {
        const f = this.#file as Partial<Deno.FsFile>;
        if (typeof f.truncate === "function") await f.truncate(fileLength);
        if (typeof f.syncData === "function") await f.syncData();
        this.#file.close();
        await Deno.rename(this.tempPath, this.destPath);
      } catch (e) {
        throw ioError(e, `${this.destPath}: finishing failed`);
      }
      this.#state = "done";
      return { path: this.destPath, bytes: fileLength, header };
    });
  }

  /** Closes and removes the temp file (idempotent; errors while cleaning up are ignored). */
  async abort(): Promise<void> {
    if (this.#state === "done") return;
    this.#state = "failed";
    try {
      this.#file.close();
    } catch {
      // already closed
    }
    try {
      await Deno.remove(this.tempPath);
    } catch {
      // already gone
    }
  }
}
