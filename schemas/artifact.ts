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
 * preamble, the header checksum, a FlatBuffers verifier pass, the config, every tensor's shape
 * against its segment sizes, segment bounds/alignment/overlap) before returning; every problem
 * is a one-line InputError (UnsupportedError for a well-formed but unknown family). Segment
 * bytes are checked against their CRC32C on every `read`, and `verifyAll` streams the whole file.
 *
 * This module is shipped with the runtime: it must not import the compiler.
 *
 * @module
 */

import * as flatbuffers from "flatbuffers";
import * as fb from "./generated/artifact_generated.ts";
import type { Family, ModelConfig } from "./model_legacy.ts";
import {
  checkGroupSize,
  dequantize,
  isQuantBits,
  packedByteSizes,
  type QuantBits,
  type QuantizedTensor,
  type ScaleType,
} from "./packing.ts";
import { bf16ToF32, f16ToF32 } from "./half.ts";
import { crc32c, crc32cUpdate } from "./crc32c.ts";
import { InputError, IoError, LimitError, MoeqError, UnsupportedError } from "./errors.ts";
import { verifyHeaderBuffer } from "./artifact_verify.ts";

// ---------------------------------------------------------------------------------------------
// Layout constants and the preamble

/** The 4 magic bytes every artifact starts with. */
export const MAGIC = "MOEQ";
/** The format version this code writes and the newest it reads. */
export const FORMAT_VERSION = 1;
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
  if (version > FORMAT_VERSION || version === 0) {
    throw new InputError(
      `unsupported artifact format version ${version} (this moeq reads up to ${FORMAT_VERSION})`,
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
    safeNumber(dv.getBigUint64(at, true), `preamble ${what}`, file);
  return {
    version,
    headerOffset: u64(8, "header offset"),
    headerLength: u64(16, "header length"),
    fileLength: u64(24, "file length"),
    headerCrc32c: dv.getUint32(32, true),
  };
}

function safeNumber(v: bigint, what: string, file: string): number {
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) {
    throw new InputError(`${what} ${v} exceeds 2^53`, file);
  }
  return Number(v);
}

// ---------------------------------------------------------------------------------------------
// The decoded header as plain objects

/** A byte range of the file holding weight bytes. */
export interface Segment {
  offset: number;
  length: number;
  crc32c: number;
}

/** Float storage types. */
export type FloatStorage = "f32" | "f16" | "bf16";
/** How a tensor's values are stored. */
export type Storage = FloatStorage | "q";

/** Bytes per value of each float storage type. */
export const FLOAT_BYTES: Record<FloatStorage, number> = { f32: 4, f16: 2, bf16: 2 };

/** Quantization parameters and segments of a "q" tensor. */
export interface QuantRecord {
  bits: QuantBits;
  groupSize: number;
  scaleType: ScaleType;
  /** The quantizer that produced it ("rtn", "hqq", "gptq", ...). */
  quantizer: string;
  codes: Segment;
  scales: Segment;
  zeros: Segment;
}

/** One tensor of the artifact. */
export interface TensorRecord {
  name: string;
  /** compiler/ir.ts TensorRole (kept a string so newer roles still load). */
  role: string;
  /** Decoder layer, -1 for globals. */
  layer: number;
  /** Routed expert index, -1 when not an expert tensor. */
  expert: number;
  /** [rows, cols] for matrices, [n] for vectors. */
  shape: number[];
  storage: Storage;
  /** The values for float storage; null for "q". */
  data: Segment | null;
  /** Parameters and segments for "q"; null for float storage. */
  quant: QuantRecord | null;
}

/** One compiler-report row: what a routed expert got. */
export interface ExpertReport {
  layer: number;
  expert: number;
  /** Mean code bits over the expert's matrices. */
  bits: number;
  /** Bytes of the expert's segments. */
  bytes: number;
  /** Importance rank within its layer (0 = most important), -1 when not ranked. */
  rank: number;
  /** Relative reconstruction error, -1 when not measured. */
  relError: number;
  /** Named allocator scores, in the order they were written. */
  scores: Record<string, number>;
}

/** Tokenizer material in the artifact. */
export interface TokenizerRecord {
  /** Segment holding tokenizer.json, or null for byte-level models (token = byte). */
  json: Segment | null;
  chatTemplate: string | null;
}

/** Totals over the tensors, computed by {@link summarize}. */
export interface ArtifactSummary {
  numTensors: number;
  /** Bytes of all weight segments (tokenizer excluded). */
  totalBytes: number;
  /** Bytes of routed-expert segments. */
  expertBytes: number;
  /** Weights in routed-expert matrices. */
  expertParams: number;
  /** Parameter-weighted mean code bits over routed-expert matrices (f16 counts as 16). */
  avgExpertBits: number;
  /** expertBytes · 8 / expertParams: includes scales and zeros. */
  expertBitsPerWeight: number;
}

/** Everything the header says, as plain objects. */
export interface ArtifactHeader {
  /** Who wrote it (e.g. "moeq 0.1"). */
  generator: string;
  config: ModelConfig;
  tensors: TensorRecord[];
  experts: ExpertReport[];
  tokenizer: TokenizerRecord;
  /** Compile options as a JSON string. */
  optionsJson: string;
  summary: ArtifactSummary;
}

/** Byte sizes of a quantized tensor's codes, scales and zeros per the packing spec. */
function quantSizes(rows: number, cols: number, q: QuantRecord) {
  return packedByteSizes({
    rows,
    cols,
    bits: q.bits,
    groupSize: q.groupSize,
    scaleType: q.scaleType,
  });
}

/** True for the roles of routed-expert matrices (mirrors compiler/ir.ts isExpertRole). */
export function isExpertTensorRole(role: string): boolean {
  return role === "expert_gate" || role === "expert_up" || role === "expert_down";
}

/** The segments of a tensor, in a fixed order (data, or codes/scales/zeros). */
export function segmentsOf(t: TensorRecord): Segment[] {
  if (t.quant) return [t.quant.codes, t.quant.scales, t.quant.zeros];
  return t.data ? [t.data] : [];
}

/** Number of values of a shape. */
export function numelOf(shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

/** Code bits per weight of a tensor record (32/16/16 for float storage). */
export function storageBits(t: TensorRecord): number {
  return t.quant ? t.quant.bits : FLOAT_BYTES[t.storage as FloatStorage] * 8;
}

/** Computes the summary totals of a tensor list (the writer stores it; the reader re-checks). */
export function summarize(tensors: readonly TensorRecord[]): ArtifactSummary {
  let totalBytes = 0, expertBytes = 0, expertParams = 0, bitSum = 0;
  for (const t of tensors) {
    const bytes = segmentsOf(t).reduce((a, s) => a + s.length, 0);
    totalBytes += bytes;
    if (isExpertTensorRole(t.role)) {
      const n = numelOf(t.shape);
      expertBytes += bytes;
      expertParams += n;
      bitSum += n * storageBits(t);
    }
  }
  return {
    numTensors: tensors.length,
    totalBytes,
    expertBytes,
    expertParams,
    avgExpertBits: expertParams ? bitSum / expertParams : 0,
    expertBitsPerWeight: expertParams ? (expertBytes * 8) / expertParams : 0,
  };
}

// ---------------------------------------------------------------------------------------------
// Header decoding (after verifyHeaderBuffer) and semantic validation

const FAMILIES: readonly Family[] = ["mixtral", "qwen2_moe", "qwen3_moe", "olmoe"];
/** Caps on per-record vector lengths (a header sharing one huge vector cannot blow up decode). */
const MAX_DIMS = 4;
const MAX_SCORES = 256;
const MAX_EOS = 1024;

/**
 * Decodes a header buffer into plain objects and validates it. `fileLength` bounds the
 * segments. Throws InputError (or UnsupportedError) naming `file` and the bad field.
 */
export function decodeHeader(bytes: Uint8Array, file: string, fileLength: number): ArtifactHeader {
  verifyHeaderBuffer(bytes, file);
  const bb = new flatbuffers.ByteBuffer(bytes);
  const h = fb.Header.getRootAsHeader(bb);
  const bad = (msg: string): never => {
    throw new InputError(msg, file);
  };
  const str = (v: string | null, what: string): string =>
    v ?? bad(`header field ${what} is missing`);
  const u64 = (v: bigint, what: string) => safeNumber(v, `header field ${what}`, file);
  const seg = (s: fb.Segment | null, what: string): Segment | null =>
    s &&
    {
      offset: u64(s.offset(), `${what}.offset`),
      length: u64(s.length(), `${what}.length`),
      crc32c: s.crc32c(),
    };
  const needSeg = (s: fb.Segment | null, what: string): Segment =>
    seg(s, what) ?? bad(`${what}: segment is missing`);

  const config = decodeConfig(h.config() ?? bad("header has no config"), str, bad, file);

  const tensors: TensorRecord[] = [];
  for (let i = 0; i < h.tensorsLength(); i++) {
    const t = h.tensors(i)!;
    const name = str(t.name(), `tensors[${i}].name`);
    const where = `tensor ${JSON.stringify(name)}`;
    if (t.shapeLength() < 1 || t.shapeLength() > MAX_DIMS) {
      bad(`${where}: shape has ${t.shapeLength()} dims (1..${MAX_DIMS} allowed)`);
    }
    const shape: number[] = [];
    for (let d = 0; d < t.shapeLength(); d++) {
      const n = u64(t.shape(d)!, `${where} shape`);
      if (n < 1) bad(`${where}: shape dim ${d} is 0`);
      shape.push(n);
    }
    if (numelOf(shape) > Number.MAX_SAFE_INTEGER) bad(`${where}: shape is too large`);
    const storage = str(t.storage(), `${where} storage`);
    if (!["f32", "f16", "bf16", "q"].includes(storage)) {
      bad(`${where}: unknown storage ${JSON.stringify(storage)}`);
    }
    const q = t.quant();
    let quant: QuantRecord | null = null;
    if (q) {
      const bits = q.bits();
      if (!isQuantBits(bits)) bad(`${where}: unsupported bit width ${bits}`);
      const scaleType = str(q.scaleType(), `${where} scale_type`);
      if (scaleType !== "f16" && scaleType !== "f32") {
        bad(`${where}: unknown scale type ${JSON.stringify(scaleType)}`);
      }
      quant = {
        bits: bits as QuantBits,
        groupSize: q.groupSize(),
        scaleType: scaleType as ScaleType,
        quantizer: str(q.quantizer(), `${where} quantizer`),
        codes: needSeg(q.codes(), `${where} codes`),
        scales: needSeg(q.scales(), `${where} scales`),
        zeros: needSeg(q.zeros(), `${where} zeros`),
      };
    }
    tensors.push({
      name,
      role: str(t.role(), `${where} role`),
      layer: t.layer(),
      expert: t.expert(),
      shape,
      storage: storage as Storage,
      data: seg(t.data(), `${where} data`),
      quant,
    });
  }

  const experts: ExpertReport[] = [];
  for (let i = 0; i < h.expertsLength(); i++) {
    const e = h.experts(i)!;
    const where = `experts[${i}]`;
    if (e.scoresLength() > MAX_SCORES) {
      bad(`${where}: ${e.scoresLength()} scores (max ${MAX_SCORES})`);
    }
    const scores: Record<string, number> = {};
    for (let s = 0; s < e.scoresLength(); s++) {
      const sc = e.scores(s)!;
      const key = str(sc.name(), `${where}.scores[${s}].name`);
      if (Object.hasOwn(scores, key)) bad(`${where}: duplicate score ${JSON.stringify(key)}`);
      scores[key] = sc.value();
    }
    experts.push({
      layer: e.layer(),
      expert: e.expert(),
      bits: e.bits(),
      bytes: u64(e.bytes(), `${where}.bytes`),
      rank: e.rank(),
      relError: e.relError(),
      scores,
    });
  }

  const tok = h.tokenizer();
  const tokenizer: TokenizerRecord = {
    json: tok ? seg(tok.json(), "tokenizer.json") : null,
    chatTemplate: tok?.chatTemplate() ?? null,
  };
  const s = h.summary() ?? bad("header has no summary");
  const summary: ArtifactSummary = {
    numTensors: s.numTensors(),
    totalBytes: u64(s.totalBytes(), "summary.total_bytes"),
    expertBytes: u64(s.expertBytes(), "summary.expert_bytes"),
    expertParams: u64(s.expertParams(), "summary.expert_params"),
    avgExpertBits: s.avgExpertBits(),
    expertBitsPerWeight: s.expertBitsPerWeight(),
  };
  const header: ArtifactHeader = {
    generator: h.generator() ?? "",
    config,
    tensors,
    experts,
    tokenizer,
    optionsJson: h.optionsJson() ?? "{}",
    summary,
  };
  validateHeader(header, file, fileLength);
  return header;
}

function decodeConfig(
  c: fb.Config,
  str: (v: string | null, what: string) => string,
  bad: (msg: string) => never,
  file: string,
): ModelConfig {
  const family = str(c.family(), "config.family");
  if (!FAMILIES.includes(family as Family)) {
    throw new UnsupportedError(`${file}: unsupported model family ${JSON.stringify(family)}`);
  }
  const r = c.routing() ?? bad("config.routing is missing");
  const scoring = str(r.scoring(), "config.routing.scoring");
  if (scoring !== "softmax") {
    throw new UnsupportedError(`${file}: unsupported routing scoring ${JSON.stringify(scoring)}`);
  }
  const activation = str(c.activation(), "config.activation");
  if (activation !== "silu") {
    throw new UnsupportedError(`${file}: unsupported activation ${JSON.stringify(activation)}`);
  }
  const qkNorm = str(c.qkNorm(), "config.qk_norm");
  if (qkNorm !== "none" && qkNorm !== "head" && qkNorm !== "full") {
    bad(`config.qk_norm is ${JSON.stringify(qkNorm)}`);
  }
  const numLayers = c.numLayers();
  if (c.layerKindsLength() !== numLayers) {
    bad(`config.layer_kinds has ${c.layerKindsLength()} entries for ${numLayers} layers`);
  }
  const layerKinds: ("moe" | "dense")[] = [];
  for (let i = 0; i < c.layerKindsLength(); i++) {
    const k = c.layerKinds(i);
    if (k !== "moe" && k !== "dense") bad(`config.layer_kinds[${i}] is ${JSON.stringify(k)}`);
    layerKinds.push(k as "moe" | "dense");
  }
  if (c.eosTokenIdsLength() > MAX_EOS) {
    bad(`config.eos_token_ids has ${c.eosTokenIdsLength()} entries`);
  }
  const eosTokenIds: number[] = [];
  for (let i = 0; i < c.eosTokenIdsLength(); i++) eosTokenIds.push(Number(c.eosTokenIds(i)!));
  const bos = Number(c.bosTokenId());
  return {
    family: family as Family,
    vocabSize: c.vocabSize(),
    hiddenSize: c.hiddenSize(),
    numLayers,
    numHeads: c.numHeads(),
    numKvHeads: c.numKvHeads(),
    headDim: c.headDim(),
    expertIntermediateSize: c.expertIntermediateSize(),
    denseIntermediateSize: c.denseIntermediateSize(),
    sharedIntermediateSize: c.sharedIntermediateSize(),
    sharedExpertGated: c.sharedExpertGated(),
    ropeTheta: c.ropeTheta(),
    rmsNormEps: c.rmsNormEps(),
    maxPositions: c.maxPositions(),
    tieWordEmbeddings: c.tieWordEmbeddings(),
    qkvBias: c.qkvBias(),
    qkNorm,
    activation: "silu",
    routing: {
      scoring: "softmax",
      numExperts: r.numExperts(),
      topK: r.topK(),
      normTopK: r.normTopK(),
    },
    layerKinds,
    bosTokenId: bos < 0 ? null : bos,
    eosTokenIds,
  };
}

/**
 * Semantic checks of a decoded header: config sanity, unique tensor names, layer/expert indices,
 * storage vs segments, shape vs segment sizes (packedByteSizes for "q"), segment alignment,
 * bounds and overlap, report rows, summary totals.
 */
export function validateHeader(h: ArtifactHeader, file: string, fileLength: number): void {
  const bad = (msg: string): never => {
    throw new InputError(msg, file);
  };
  const c = h.config;
  for (
    const k of [
      "vocabSize",
      "hiddenSize",
      "numLayers",
      "numHeads",
      "numKvHeads",
      "headDim",
    ] as const
  ) {
    if (!(c[k] >= 1)) bad(`config.${k} is ${c[k]}, must be positive`);
  }
  if (c.numHeads % c.numKvHeads !== 0) {
    bad(`config.numHeads ${c.numHeads} is not a multiple of numKvHeads ${c.numKvHeads}`);
  }
  const r = c.routing;
  if (!(r.numExperts >= 1 && r.topK >= 1 && r.topK <= r.numExperts)) {
    bad(`config.routing: topK ${r.topK} of ${r.numExperts} experts is invalid`);
  }
  if (!(c.rmsNormEps > 0 && Number.isFinite(c.rmsNormEps))) {
    bad(`config.rmsNormEps is ${c.rmsNormEps}`);
  }
  if (!(c.ropeTheta > 0 && Number.isFinite(c.ropeTheta))) bad(`config.ropeTheta is ${c.ropeTheta}`);
  for (const id of [...c.eosTokenIds, c.bosTokenId ?? 0]) {
    if (!(id >= 0 && id < c.vocabSize)) bad(`config token id ${id} is outside the vocabulary`);
  }

  const segs: { seg: Segment; what: string }[] = [];
  const names = new Set<string>();
  for (const t of h.tensors) {
    const where = `tensor ${JSON.stringify(t.name)}`;
    if (names.has(t.name)) bad(`${where} appears twice`);
    names.add(t.name);
    if (!(t.layer >= -1 && t.layer < c.numLayers)) {
      bad(`${where}: layer ${t.layer} is out of range`);
    }
    if (!(t.expert >= -1 && t.expert < r.numExperts)) {
      bad(`${where}: expert ${t.expert} is out of range`);
    }
    if (t.storage === "q") {
      if (!t.quant || t.data) bad(`${where}: storage "q" needs quant segments and no data segment`);
      const q = t.quant!;
      if (t.shape.length !== 2) {
        bad(`${where}: a quantized tensor must be 2-D, shape is [${t.shape}]`);
      }
      const [rows, cols] = t.shape;
      try {
        checkGroupSize(cols, q.groupSize);
      } catch (e) {
        bad(`${where}: ${(e as Error).message}`);
      }
      const want = quantSizes(rows, cols, q);
      for (const part of ["codes", "scales", "zeros"] as const) {
        if (q[part].length !== want[part]) {
          bad(
            `${where}: ${part} segment is ${
              q[part].length
            } bytes, shape [${t.shape}] at ${q.bits} bits needs ${want[part]}`,
          );
        }
        segs.push({ seg: q[part], what: `${where} ${part}` });
      }
    } else {
      if (!t.data || t.quant) {
        bad(`${where}: storage "${t.storage}" needs one data segment and no quant`);
      }
      const want = numelOf(t.shape) * FLOAT_BYTES[t.storage];
      if (t.data!.length !== want) {
        bad(
          `${where}: data segment is ${
            t.data!.length
          } bytes, shape [${t.shape}] as ${t.storage} needs ${want}`,
        );
      }
      segs.push({ seg: t.data!, what: `${where} data` });
    }
  }
  if (h.tokenizer.json) segs.push({ seg: h.tokenizer.json, what: "tokenizer.json" });
  checkSegments(segs, file, fileLength);

  for (const [i, e] of h.experts.entries()) {
    if (!(e.layer >= 0 && e.layer < c.numLayers && e.expert >= 0 && e.expert < r.numExperts)) {
      bad(`experts[${i}]: (layer ${e.layer}, expert ${e.expert}) is out of range`);
    }
  }
  const s = summarize(h.tensors);
  for (const k of Object.keys(s) as (keyof ArtifactSummary)[]) {
    if (s[k] !== h.summary[k]) bad(`summary.${k} is ${h.summary[k]}, the tensors give ${s[k]}`);
  }
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
  const header = decodeHeader(headerBytes, path, pre.fileLength);
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

function allSegments(h: ArtifactHeader): { seg: Segment; what: string }[] {
  const out = h.tensors.flatMap((t) =>
    t.quant
      ? [
        { seg: t.quant.codes, what: `tensor ${JSON.stringify(t.name)} codes` },
        { seg: t.quant.scales, what: `tensor ${JSON.stringify(t.name)} scales` },
        { seg: t.quant.zeros, what: `tensor ${JSON.stringify(t.name)} zeros` },
      ]
      : [{ seg: t.data!, what: `tensor ${JSON.stringify(t.name)} data` }]
  );
  if (h.tokenizer.json) out.push({ seg: h.tokenizer.json, what: "tokenizer.json" });
  return out;
}

/** Chunk size for streaming verification. */
const VERIFY_CHUNK = 16 << 20;

class OpenedArtifact implements Artifact {
  readonly generator: string;
  readonly config: ModelConfig;
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

  constructor(
    readonly src: ByteSource,
    readonly path: string,
    pre: Preamble,
    h: ArtifactHeader,
    readonly options: unknown,
  ) {
    this.header = h;
    this.generator = h.generator;
    this.config = h.config;
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
  }

  async read(segment: Segment, what = `segment at ${segment.offset}`): Promise<Uint8Array> {
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
    });
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

/** Builds the QuantizedTensor of a "q" record from its three segments' bytes (copied). */
export function toQuantizedTensor(
  t: TensorRecord,
  parts: { codes: Uint8Array; scales: Uint8Array; zeros: Uint8Array },
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
  const codes = parts.codes.slice();
  const param = (b: Uint8Array) => {
    const c = b.slice();
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
