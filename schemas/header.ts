/**
 * The artifact header as plain objects, and its FlatBuffers encoding (schemas/artifact.fbs) in
 * both directions: {@link encodeHeader} (the writer), {@link decodeHeader} (the reader, after the
 * verifier of `header_verify.ts`) and {@link validateHeader}, which checks that the header is a
 * coherent description of one model — the tensor records are exactly the tensors the model
 * description implies (schemas/tensors.ts expectedTensors), with consistent storage and sizes.
 * Where the segments lie in the file (alignment, bounds, overlap) is checked by
 * schemas/artifact.ts, which knows the file.
 *
 * Every scalar is written even when it equals its default (`forceDefaults`), so the encoded size
 * depends only on the header's structure (which tensors, strings, vectors and optional tables are
 * present), never on the values of offsets, lengths or checksums. The writer relies on this: it
 * sizes the header region from a placeholder header before any weight is written.
 *
 * @module
 */

import * as flatbuffers from "flatbuffers";
import * as fb from "./generated/artifact_generated.ts";
import { InputError } from "./errors.ts";
import { verifyHeaderBuffer } from "./header_verify.ts";
import type { ModelSpec, StackName } from "./model.ts";
import { parseModelSpec } from "./model_parse.ts";
import {
  checkGroupSize,
  checkMxfp4Layout,
  isMxfp4,
  isQuantBits,
  MXFP4_WIDTH,
  packedByteSizes,
  type QuantBits,
  type ScaleType,
} from "./packing.ts";
import { describeKey, expectedTensors, isExpertMatrixRole, keyString } from "./tensors.ts";

// ---------------------------------------------------------------------------------------------
// The header as plain objects

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

/** One tensor of the artifact: its place in the model (schemas/tensors.ts key) and storage. */
export interface TensorRecord {
  /** Where it came from (the checkpoint tensor name), for messages; unique in an artifact. */
  name: string;
  stack: StackName;
  /** A schemas/tensors.ts role ("attn_q", "expert_up", ...). */
  role: string;
  /** Layer within the stack, −1 for model- and stack-level tensors. */
  layer: number;
  /** Routed expert index, −1 when not an expert tensor. */
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
  /** The stack and layer of its MoE block. */
  stack: StackName;
  layer: number;
  expert: number;
  /** Mean code bits over the expert's matrices. */
  bits: number;
  /** Bytes of the expert's segments. */
  bytes: number;
  /** Importance rank within its layer (0 = most important), −1 when not ranked. */
  rank: number;
  /** Relative reconstruction error, −1 when not measured. */
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
  /**
   * Parameter-weighted mean code bits over routed-expert matrices (f16 counts as 16, MXFP4 as
   * its 4.25 bits per weight, the width allocators use for it).
   */
  avgExpertBits: number;
  /** expertBytes · 8 / expertParams: includes scales and zeros. */
  expertBitsPerWeight: number;
}

/** Everything the header says, as plain objects. */
export interface ArtifactHeader {
  /** Who wrote it (e.g. "moeq"). */
  generator: string;
  /** The model description. */
  model: ModelSpec;
  /** Every tensor `expectedTensors(model)` lists (the writer keeps that order). */
  tensors: TensorRecord[];
  experts: ExpertReport[];
  tokenizer: TokenizerRecord;
  /** Compile options as a JSON string. */
  optionsJson: string;
  summary: ArtifactSummary;
}

/** True for a routed expert's matrix (what the allocator gives bits to). */
export function isRoutedExpertMatrix(t: Pick<TensorRecord, "role" | "expert">): boolean {
  return t.expert >= 0 && isExpertMatrixRole(t.role);
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
  if (t.quant && isMxfp4(t.quant)) return MXFP4_WIDTH;
  return t.quant ? t.quant.bits : FLOAT_BYTES[t.storage as FloatStorage] * 8;
}

/** Byte sizes of a quantized tensor's codes, scales and zeros per the packing spec. */
export function quantSizes(
  rows: number,
  cols: number,
  q: Pick<QuantRecord, "bits" | "groupSize" | "scaleType">,
): { codes: number; scales: number; zeros: number; total: number } {
  return packedByteSizes({
    rows,
    cols,
    bits: q.bits,
    groupSize: q.groupSize,
    scaleType: q.scaleType,
  });
}

/** Computes the summary totals of a tensor list (the writer stores it; the reader re-checks). */
export function summarize(tensors: readonly TensorRecord[]): ArtifactSummary {
  let totalBytes = 0, expertBytes = 0, expertParams = 0, bitSum = 0;
  for (const t of tensors) {
    const bytes = segmentsOf(t).reduce((a, s) => a + s.length, 0);
    totalBytes += bytes;
    if (isRoutedExpertMatrix(t)) {
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
// Encoding

type Builder = flatbuffers.Builder;

function encodeSegment(b: Builder, s: Segment): flatbuffers.Offset {
  return fb.Segment.createSegment(b, BigInt(s.offset), BigInt(s.length), s.crc32c);
}

function encodeTensor(b: Builder, t: TensorRecord): flatbuffers.Offset {
  const name = b.createString(t.name);
  const role = b.createString(t.role);
  const storage = b.createString(t.storage);
  const stack = b.createString(t.stack);
  const shape = fb.Tensor.createShapeVector(b, t.shape.map((d) => BigInt(d)));
  let quant = 0;
  if (t.quant) {
    const q = t.quant;
    const scaleType = b.createString(q.scaleType);
    const quantizer = b.createString(q.quantizer);
    fb.Quant.startQuant(b);
    fb.Quant.addBits(b, q.bits);
    fb.Quant.addGroupSize(b, q.groupSize);
    fb.Quant.addScaleType(b, scaleType);
    fb.Quant.addQuantizer(b, quantizer);
    fb.Quant.addCodes(b, encodeSegment(b, q.codes));
    fb.Quant.addScales(b, encodeSegment(b, q.scales));
    fb.Quant.addZeros(b, encodeSegment(b, q.zeros));
    quant = fb.Quant.endQuant(b);
  }
  fb.Tensor.startTensor(b);
  fb.Tensor.addName(b, name);
  fb.Tensor.addRole(b, role);
  fb.Tensor.addLayer(b, t.layer);
  fb.Tensor.addExpert(b, t.expert);
  fb.Tensor.addShape(b, shape);
  fb.Tensor.addStorage(b, storage);
  if (t.data) fb.Tensor.addData(b, encodeSegment(b, t.data));
  if (quant) fb.Tensor.addQuant(b, quant);
  fb.Tensor.addStack(b, stack);
  return fb.Tensor.endTensor(b);
}

function encodeExpertReport(b: Builder, e: ExpertReport): flatbuffers.Offset {
  const scores = fb.ExpertReport.createScoresVector(
    b,
    Object.entries(e.scores).map(([k, v]) => fb.Score.createScore(b, b.createString(k), v)),
  );
  return fb.ExpertReport.createExpertReport(
    b,
    e.layer,
    e.expert,
    e.bits,
    BigInt(e.bytes),
    e.rank,
    e.relError,
    scores,
    b.createString(e.stack),
  );
}

/** Encodes a header; the result's size does not depend on segment offsets/lengths/CRCs. */
export function encodeHeader(h: ArtifactHeader): Uint8Array {
  const b = new flatbuffers.Builder(1024);
  b.forceDefaults(true);
  const generator = b.createString(h.generator);
  const tensors = fb.Header.createTensorsVector(b, h.tensors.map((t) => encodeTensor(b, t)));
  const experts = fb.Header.createExpertsVector(b, h.experts.map((e) => encodeExpertReport(b, e)));
  const template = h.tokenizer.chatTemplate === null ? 0 : b.createString(h.tokenizer.chatTemplate);
  fb.Tokenizer.startTokenizer(b);
  if (h.tokenizer.json) fb.Tokenizer.addJson(b, encodeSegment(b, h.tokenizer.json));
  if (template) fb.Tokenizer.addChatTemplate(b, template);
  const tokenizer = fb.Tokenizer.endTokenizer(b);
  const options = b.createString(h.optionsJson);
  const s = h.summary;
  const summary = fb.Summary.createSummary(
    b,
    s.numTensors,
    BigInt(s.totalBytes),
    BigInt(s.expertBytes),
    BigInt(s.expertParams),
    s.avgExpertBits,
    s.expertBitsPerWeight,
  );
  const model = b.createString(JSON.stringify(h.model));
  fb.Header.startHeader(b);
  fb.Header.addGenerator(b, generator);
  fb.Header.addTensors(b, tensors);
  fb.Header.addExperts(b, experts);
  fb.Header.addTokenizer(b, tokenizer);
  fb.Header.addOptionsJson(b, options);
  fb.Header.addSummary(b, summary);
  fb.Header.addModelJson(b, model);
  fb.Header.finishHeaderBuffer(b, fb.Header.endHeader(b));
  return b.asUint8Array().slice();
}

// ---------------------------------------------------------------------------------------------
// Decoding

/** Caps on per-record vector lengths (a header sharing one huge vector cannot blow up decode). */
const MAX_DIMS = 4;
const MAX_SCORES = 256;
const STACKS: readonly StackName[] = ["decoder", "encoder"];

/** A u64 read from the file as a number; an InputError beyond 2^53. */
export function u64ToNumber(v: bigint, what: string, file: string): number {
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new InputError(`${what} ${v} exceeds 2^53`, file);
  return Number(v);
}

/**
 * Decodes a header buffer (verified first by `verifyHeaderBuffer`) into plain objects and checks
 * it with {@link validateHeader}. Throws InputError (UnsupportedError for a model variant this
 * moeq does not know) naming `file` and the bad field.
 */
export function decodeHeader(bytes: Uint8Array, file: string): ArtifactHeader {
  verifyHeaderBuffer(bytes, file);
  const h = fb.Header.getRootAsHeader(new flatbuffers.ByteBuffer(bytes));
  const bad = (msg: string): never => {
    throw new InputError(msg, file);
  };
  const str = (v: string | null, what: string): string =>
    v ?? bad(`header field ${what} is missing`);
  const stackOf = (v: string | null, what: string): StackName => {
    const s = str(v, `${what} stack`);
    return STACKS.includes(s as StackName)
      ? s as StackName
      : bad(`${what}: stack ${JSON.stringify(s)} is unknown`);
  };
  const u64 = (v: bigint, what: string) => u64ToNumber(v, `header field ${what}`, file);
  const seg = (s: fb.Segment | null, what: string): Segment | null =>
    s &&
    {
      offset: u64(s.offset(), `${what}.offset`),
      length: u64(s.length(), `${what}.length`),
      crc32c: s.crc32c(),
    };
  const needSeg = (s: fb.Segment | null, what: string): Segment =>
    seg(s, what) ?? bad(`${what}: segment is missing`);

  const modelJson = h.modelJson() ?? bad("header has no model_json (the model description)");
  let modelValue: unknown;
  try {
    modelValue = JSON.parse(modelJson);
  } catch {
    bad("header model_json is not valid JSON");
  }
  const model = parseModelSpec(modelValue, file);

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
      if (scaleType !== "f16" && scaleType !== "f32" && scaleType !== "e8m0") {
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
      stack: stackOf(t.stack(), where),
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
      stack: stackOf(e.stack(), where),
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
    model,
    tensors,
    experts,
    tokenizer,
    optionsJson: h.optionsJson() ?? "{}",
    summary,
  };
  validateHeader(header, file);
  return header;
}

// ---------------------------------------------------------------------------------------------
// Semantic validation

/**
 * A lower bound of `expectedTensors(spec).length` computed without building the list (every
 * block has a norm, every expert at least two matrices): a header describing a huge model with
 * few records is refused before the list is built.
 */
function minimumTensorCount(spec: ModelSpec): number {
  let n = 1; // embed
  for (const s of [spec.encoder, spec.decoder]) {
    for (const layer of s?.layers ?? []) {
      for (const b of layer.blocks) {
        n += 1 + (b.kind === "ffn" && b.ffn.kind === "moe" ? 2 * b.ffn.numExperts : 0);
      }
    }
  }
  return n;
}

/**
 * Checks a decoded header (its model description already parsed): the tensor records are exactly
 * the tensors the description implies, by key and shape (vectors never quantized), each with the
 * storage its segments need (sizes from the shape, packedByteSizes for "q"); names are unique;
 * report rows name real MoE layers and experts, once each; the summary matches the tensors.
 */
export function validateHeader(h: ArtifactHeader, file: string): void {
  const bad = (msg: string): never => {
    throw new InputError(msg, file);
  };
  const atLeast = minimumTensorCount(h.model);
  if (atLeast > h.tensors.length) {
    bad(
      `the model description implies at least ${atLeast} tensors, the header lists ` +
        `${h.tensors.length}`,
    );
  }
  const expected = new Map(expectedTensors(h.model).map((e) => [keyString(e), e]));
  const names = new Set<string>();
  const seen = new Set<string>();
  for (const t of h.tensors) {
    const where = `tensor ${JSON.stringify(t.name)} (${describeKey(t)})`;
    if (names.has(t.name)) bad(`${where}: the name appears twice`);
    names.add(t.name);
    const key = keyString(t);
    const e = expected.get(key) ?? bad(`${where} is not part of the model description`);
    if (seen.has(key)) bad(`${where} appears twice`);
    seen.add(key);
    if (e.shape.length !== t.shape.length || e.shape.some((d, i) => d !== t.shape[i])) {
      bad(`${where}: shape [${t.shape}], the model description implies [${e.shape}]`);
    }
    if (t.storage === "q") {
      if (e.vector) bad(`${where}: a vector cannot be quantized`);
      if (!t.quant || t.data) bad(`${where}: storage "q" needs quant segments and no data segment`);
      const q = t.quant!;
      const [rows, cols] = t.shape;
      try {
        checkGroupSize(cols, q.groupSize);
        checkMxfp4Layout(q);
      } catch (err) {
        bad(`${where}: ${(err as Error).message}`);
      }
      const want = quantSizes(rows, cols, q);
      for (const part of ["codes", "scales", "zeros"] as const) {
        if (q[part].length !== want[part]) {
          bad(
            `${where}: ${part} segment is ${q[part].length} bytes, shape [${t.shape}] at ` +
              `${q.bits} bits needs ${want[part]}`,
          );
        }
      }
    } else {
      if (!t.data || t.quant) {
        bad(`${where}: storage "${t.storage}" needs one data segment and no quant`);
      }
      const want = numelOf(t.shape) * FLOAT_BYTES[t.storage];
      if (t.data!.length !== want) {
        bad(
          `${where}: data segment is ${t.data!.length} bytes, shape [${t.shape}] as ` +
            `${t.storage} needs ${want}`,
        );
      }
    }
  }
  for (const [key, e] of expected) {
    if (!seen.has(key)) {
      bad(`the model description implies ${describeKey(e)} [${e.shape}], which the header lacks`);
    }
  }

  const moeExperts = new Map<string, number>();
  for (const [stack, s] of [["encoder", h.model.encoder], ["decoder", h.model.decoder]] as const) {
    s?.layers.forEach((layer, l) => {
      for (const b of layer.blocks) {
        if (b.kind === "ffn" && b.ffn.kind === "moe") {
          moeExperts.set(`${stack}/${l}`, b.ffn.numExperts);
        }
      }
    });
  }
  const rows = new Set<string>();
  for (const [i, e] of h.experts.entries()) {
    const where = `experts[${i}] (${e.stack} layer ${e.layer}, expert ${e.expert})`;
    const E = moeExperts.get(`${e.stack}/${e.layer}`) ??
      bad(`${where}: that layer has no MoE block`);
    if (!(e.expert >= 0 && e.expert < E)) bad(`${where}: the layer has ${E} experts`);
    const key = `${e.stack}/${e.layer}/${e.expert}`;
    if (rows.has(key)) bad(`${where}: a second row for the same expert`);
    rows.add(key);
  }

  const s = summarize(h.tensors);
  for (const k of Object.keys(s) as (keyof ArtifactSummary)[]) {
    if (s[k] !== h.summary[k]) bad(`summary.${k} is ${h.summary[k]}, the tensors give ${s[k]}`);
  }
}
