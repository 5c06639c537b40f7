/**
 * The compiler's back end: ModelIR → artifact file (schemas/ARTIFACT.md): the model description
 * goes into the header, every tensor it implies is written in `expectedTensors` order. And
 * artifact → ModelIR (artifact_to_ir.ts) for running the CPU reference on compiled models.
 *
 * @example
 * ```ts
 * const ir = await loadCheckpoint("model-dir");
 * await emitArtifact(ir, "model.moeq", {
 *   encode: (t) => isExpertMatrixRole(t.role)
 *     ? { storage: "q", bits: 4, groupSize: 64, method: "hqq" }
 *     : { storage: "f16" },
 * });
 * ```
 *
 * @module
 */

import { maxVariance } from "../passes/sensitivity.ts";
import type { ModelIR, PlacedTensor, TensorRef } from "../ir.ts";
import { decodeRaw } from "../checkpoint/raw.ts";
import {
  type BlockJob,
  type BlockResult,
  type BlockRunner,
  inlineRunner,
} from "../parallel/block.ts";
import { MomentAccumulator, momentShift } from "./stats.ts";
import {
  pack,
  quantizeUnpacked,
  type QuantMethod,
  reconstruct,
  squaredError,
} from "../quantize/mod.ts";
import {
  type AssembledTensor,
  CHUNK_ROWS,
  type ChunkOptions,
  isChunkable,
  quantizeChunked,
} from "../parallel/chunked.ts";
import type { QuantizePool } from "../parallel/pool.ts";
import {
  type ArtifactHeader,
  type ExpertReport,
  type FloatStorage,
  summarize,
  type TensorRecord,
} from "../../schemas/artifact.ts";
import { InputError, UsageError } from "../../schemas/errors.ts";
import { parseModelSpec } from "../../schemas/model_parse.ts";
import { describeKey, expectedTensors, keyString } from "../../schemas/tensors.ts";
import {
  dequantize,
  groupsPerRow,
  MXFP4_GROUP,
  type QuantBits,
  type ScaleType,
} from "../../schemas/packing.ts";
import { quantizeMxfp4 } from "../quantize/mxfp4.ts";
import { encodeHeader } from "../../schemas/header.ts";
import { ArtifactWriter, type TensorMeta, type WrittenArtifact } from "./writer.ts";

export { encodeHeader } from "../../schemas/header.ts";
export {
  ArtifactWriter,
  DEFAULT_HEADER_RESERVE,
  type FinishOptions,
  type TensorMeta,
  type WriterFile,
  type WriterOptions,
  type WrittenArtifact,
} from "./writer.ts";
export { artifactToIR } from "./artifact_to_ir.ts";

/** How one tensor is stored: a float type, or quantized by a method of compiler/quantize. */
export type TensorEncoding =
  | { storage: FloatStorage }
  | {
    storage: "q";
    bits: QuantBits;
    groupSize: number;
    method: QuantMethod;
    scaleType?: ScaleType;
    /** GPTQ's Hessian for this matrix ([cols, cols]), or a function computing it when needed. */
    hessian?: Float64Array | (() => Promise<Float64Array>);
  }
  | Mxfp4Encoding;

/**
 * MXFP4 (schemas/packing.ts, scale type e8m0): the released codes verbatim when the source is an
 * MXFP4 release (`released`, its ref has `readMxfp4`), else quantized by compiler/quantize/mxfp4.
 */
export interface Mxfp4Encoding {
  storage: "mxfp4";
  released: boolean;
}

/** The quantizer name an MXFP4 record carries. */
export function mxfp4Quantizer(enc: Mxfp4Encoding): string {
  return enc.released ? "mxfp4-release" : "mxfp4";
}

/** Options of {@link emitArtifact}. */
export interface EmitOptions {
  /** Picks each tensor's storage; default: every tensor as f32. */
  encode?: (placed: PlacedTensor) => TensorEncoding;
  /**
   * Compiler report rows, one per routed expert (named by stack, layer and expert); or a function
   * returning them, called once before
   * writing (to size the header: it must already return the final rows and score names, with any
   * values) and once after the last tensor (the rows stored).
   */
  experts?: ExpertReport[] | (() => ExpertReport[]);
  /** Compile options, stored as JSON. */
  options?: unknown;
  /** Writer identification (default "moeq"). */
  generator?: string;
  /**
   * Called with each tensor's source values as they are read, before encoding. Needs whole
   * tensors: when given, nothing is streamed in row blocks (memory is then the largest tensor).
   */
  onValues?: (placed: PlacedTensor, values: Float32Array) => void;
  /**
   * The accumulator that should receive the moments of this tensor's values (or undefined):
   * computed block by block where the blocks are processed, added in row order.
   */
  moments?: (placed: PlacedTensor) => MomentAccumulator | undefined;
  /**
   * Where this matrix's MaxVar (largest row variance) should go, or undefined: taken block by
   * block where the blocks are processed, so a score nothing else needs costs no extra read.
   */
  rowVariance?: (placed: PlacedTensor) => ((maxVar: number) => void) | undefined;
  /**
   * Called for each quantized tensor with its source and dequantized values (error metrics).
   * Needs whole tensors, like `onValues`.
   */
  onQuantized?: (placed: PlacedTensor, original: Float32Array, dequantized: Float32Array) => void;
  /**
   * Called for each quantized tensor with Σ(w − ŵ)² and Σw² (ŵ as the runtime decodes it): the
   * cheap alternative to `onQuantized`, which needs the whole dequantized matrix.
   */
  onQuantError?: (placed: PlacedTensor, err: number, ref: number) => void;
  /**
   * Worker threads decoding, quantizing (RTN/HQQ) and casting row blocks (compiler/parallel/).
   * The artifact is byte-identical with or without a pool. The caller owns (and closes) it.
   */
  pool?: QuantizePool;
  /** Called after each tensor is written (progress). */
  onTensor?: (record: TensorRecord, index: number, total: number) => void;
}

function metaOf(p: PlacedTensor): TensorMeta {
  return {
    name: p.ref.name,
    stack: p.stack,
    role: p.role,
    layer: p.layer,
    expert: p.expert,
    shape: [...p.ref.shape],
  };
}

const ZERO_SEGMENT = { offset: 0, length: 0, crc32c: 0 };

/** A record with the right structure and zero segments: sizes the header before writing. */
function placeholderRecord(meta: TensorMeta, enc: TensorEncoding): TensorRecord {
  if (enc.storage === "mxfp4") {
    return {
      ...meta,
      storage: "q",
      data: null,
      quant: {
        bits: 4,
        groupSize: MXFP4_GROUP,
        scaleType: "e8m0",
        quantizer: mxfp4Quantizer(enc),
        codes: ZERO_SEGMENT,
        scales: ZERO_SEGMENT,
        zeros: ZERO_SEGMENT,
      },
    };
  }
  if (enc.storage !== "q") {
    return { ...meta, storage: enc.storage, data: ZERO_SEGMENT, quant: null };
  }
  return {
    ...meta,
    storage: "q",
    data: null,
    quant: {
      bits: enc.bits,
      groupSize: enc.groupSize,
      scaleType: enc.scaleType ?? "f16",
      quantizer: enc.method,
      codes: ZERO_SEGMENT,
      scales: ZERO_SEGMENT,
      zeros: ZERO_SEGMENT,
    },
  };
}

/** Rows per streamed block: the quantization blocks of chunked.ts, so results are identical. */
const BLOCK_ROWS = CHUNK_ROWS;

/**
 * The IR's tensors in `expectedTensors(ir.spec)` order, after checking that the description is
 * one the reader accepts and that the IR holds exactly the tensors it implies, with their shapes
 * (an InputError naming the source otherwise: nothing is written).
 */
function tensorsInOrder(ir: ModelIR): PlacedTensor[] {
  const bad = (msg: string): never => {
    throw new InputError(msg, ir.source);
  };
  parseModelSpec(JSON.parse(JSON.stringify(ir.spec)), `${ir.source} (model description)`);
  const expected = expectedTensors(ir.spec);
  const wanted = new Set(expected.map(keyString));
  const byKey = new Map<string, PlacedTensor>();
  for (const t of ir.tensors) {
    const key = keyString(t);
    if (!wanted.has(key)) bad(`${describeKey(t)} is not part of the model description`);
    if (byKey.has(key)) bad(`${describeKey(t)} appears twice in the IR`);
    byKey.set(key, t);
  }
  return expected.map((e) => {
    const t = byKey.get(keyString(e)) ??
      bad(`the model description implies ${describeKey(e)}, which the IR lacks`);
    const shape = t.ref.shape;
    if (shape.length !== e.shape.length || e.shape.some((d, i) => d !== shape[i])) {
      bad(`${describeKey(e)} (${t.ref.name}) is [${shape}], the description implies [${e.shape}]`);
    }
    return t;
  });
}

/**
 * Writes `ir` as an artifact at `destPath`, tensor by tensor in `expectedTensors` order. Matrices
 * stored as floats or quantized by RTN/HQQ stream in 512-row blocks: each block is read raw,
 * then decoded, quantized or cast (and its moments taken) on a worker of `pool` or on this
 * thread, and written in order with incremental CRC32C, with a few blocks in flight. Memory is
 * then a few blocks per worker whatever the tensor sizes. Vectors, GPTQ matrices and refs
 * without row reads (or when `onValues`/`onQuantized` want whole matrices) are read whole. The header region is sized exactly from a placeholder header,
 * so the header always sits right after the preamble. On any failure the temp file is removed.
 */
export async function emitArtifact(
  ir: ModelIR,
  destPath: string,
  opts: EmitOptions = {},
): Promise<WrittenArtifact> {
  const encode = opts.encode ?? (() => ({ storage: "f32" as const }));
  const plan = tensorsInOrder(ir).map((placed) => ({
    placed,
    meta: metaOf(placed),
    enc: encode(placed),
  }));
  for (const { meta, enc, placed } of plan) {
    if (enc.storage === "mxfp4" && enc.released && !placed.ref.readMxfp4) {
      throw new UsageError(`tensor ${JSON.stringify(meta.name)} is not an MXFP4 release`);
    }
    if ((enc.storage === "q" || enc.storage === "mxfp4") && meta.shape.length !== 2) {
      throw new UsageError(
        `tensor ${
          JSON.stringify(meta.name)
        } is ${meta.shape.length}-D: only matrices can be quantized`,
      );
    }
  }
  const optionsJson = JSON.stringify(opts.options ?? {});
  const reportRows = (): ExpertReport[] =>
    typeof opts.experts === "function" ? opts.experts() : opts.experts ?? [];
  const tok = ir.tokenizer;
  const tokJson = tok.tokenizerJson && tok.tokenizerJson.length ? tok.tokenizerJson : null;
  const placeholders = plan.map(({ meta, enc }) => placeholderRecord(meta, enc));
  const placeholder: ArtifactHeader = {
    generator: opts.generator ?? "moeq",
    model: ir.spec,
    tensors: placeholders,
    experts: reportRows(),
    tokenizer: { json: tokJson ? ZERO_SEGMENT : null, chatTemplate: tok.chatTemplate },
    optionsJson,
    summary: summarize(placeholders),
  };
  const headerReserve = encodeHeader(placeholder).length;

  const w = await ArtifactWriter.create(destPath, { headerReserve });
  const accs = plan.map(({ placed }) => opts.moments?.(placed));
  const rvs = plan.map(({ placed }) => opts.rowVariance?.(placed));
  const streamed = plan.map((item) => isStreamable(item, opts));
  const runner: BlockRunner = opts.pool ?? inlineRunner;
  // Blocks in flight (read, queued or being processed): enough to keep every lane busy while
  // the main thread writes; memory is a few raw blocks and their results per lane.
  const window = opts.pool ? opts.pool.lanes + 2 : 2;
  const queue: { start: number; end: number; result: Promise<BlockResult> }[] = [];
  const shifts = new Map<MomentAccumulator, Promise<number>>();
  let ci = 0; // next block to submit: tensor ci, row cr
  let cr = 0;

  /** The accumulator's shift: the mean of the first ≤ 4096 values of its first tensor. */
  const shiftOf = (acc: MomentAccumulator, ref: TensorRef, cols: number): Promise<number> => {
    if (!Number.isNaN(acc.shift)) return Promise.resolve(acc.shift);
    let p = shifts.get(acc);
    if (!p) {
      const n = Math.min(ref.shape[0], Math.ceil(4096 / cols));
      p = readBlockValues(ref, 0, n).then((v) => {
        acc.setShift(momentShift(v));
        return acc.shift;
      });
      shifts.set(acc, p);
    }
    return p;
  };

  const submit = async (i: number, start: number, end: number): Promise<BlockResult> => {
    const { placed, meta, enc } = plan[i];
    const ref = placed.ref;
    const cols = meta.shape[1];
    const acc = accs[i];
    const shift = acc ? shiftOf(acc, ref, cols) : undefined;
    const job: BlockJob = {
      ...(ref.readRawRows
        ? { raw: await ref.readRawRows(start, end - start) }
        : { values: await ref.readRows!(start, end - start) }),
      rows: end - start,
      cols,
      name: meta.name,
      offset: start * cols,
    };
    if (enc.storage === "q") {
      job.quant = {
        bits: enc.bits,
        groupSize: enc.groupSize,
        method: enc.method as ChunkOptions["method"],
        scaleType: enc.scaleType,
      };
    } else if (enc.storage !== "mxfp4") job.cast = enc.storage;
    else throw new Error(`internal: MXFP4 ${meta.name} is not streamed`);
    if (shift) job.momentShift = await shift;
    if (rvs[i]) job.rowVariance = true;
    return runner.run(job);
  };

  /** Tops the queue up, in plan order, stopping at a tensor that is not streamed. */
  const fill = () => {
    while (queue.length < window && ci < plan.length && streamed[ci]) {
      const rows = plan[ci].meta.shape[0];
      const end = Math.min(rows, cr + BLOCK_ROWS);
      const result = submit(ci, cr, end);
      result.catch(() => {}); // handled when consumed (or irrelevant after a failure)
      queue.push({ start: cr, end, result });
      cr = end;
      if (cr >= rows) {
        ci++;
        cr = 0;
      }
    }
  };

  try {
    fill();
    for (const [i, { placed, meta, enc }] of plan.entries()) {
      let rec: TensorRecord;
      if (streamed[i]) {
        let maxVar = 0;
        rec = await streamTensor(w, placed, meta, enc, accs[i], async () => {
          const head = queue.shift();
          if (!head) throw new Error(`internal: no block queued for ${meta.name}`);
          const r = await head.result;
          if (r.rowVariance !== undefined && r.rowVariance > maxVar) maxVar = r.rowVariance;
          fill();
          return { start: head.start, end: head.end, r };
        }, opts);
        rvs[i]?.(maxVar);
      } else {
        rec = await wholeTensor(w, placed, meta, enc, accs[i], rvs[i], opts);
        ci = i + 1;
        cr = 0;
        fill();
      }
      opts.onTensor?.(rec, i, plan.length);
    }
    await w.setTokenizer(tokJson, tok.chatTemplate);
    return await w.finish({
      model: ir.spec,
      experts: reportRows(),
      optionsJson,
      generator: opts.generator,
    });
  } catch (e) {
    await w.abort();
    throw e;
  }
}

/** Rows of `ref` as f32 (decoded here). */
async function readBlockValues(
  ref: TensorRef,
  start: number,
  count: number,
): Promise<Float32Array> {
  if (ref.readRows) return await ref.readRows(start, count);
  return decodeRaw(await ref.readRawRows!(start, count));
}

/** True when the tensor goes through the row-block pipeline (else it is read whole). */
function isStreamable(
  item: { placed: PlacedTensor; meta: TensorMeta; enc: TensorEncoding },
  opts: EmitOptions,
): boolean {
  if (opts.onValues || opts.onQuantized) return false; // these hooks want whole matrices
  if (item.enc.storage === "mxfp4") return false;
  const ref = item.placed.ref;
  if (item.meta.shape.length !== 2 || !(ref.readRawRows || ref.readRows)) return false;
  return item.enc.storage !== "q" || isChunkable(item.enc.method);
}

/** Writes a streamed tensor from its blocks (taken in row order from `next`). */
async function streamTensor(
  w: ArtifactWriter,
  placed: PlacedTensor,
  meta: TensorMeta,
  enc: TensorEncoding,
  acc: MomentAccumulator | undefined,
  next: () => Promise<{ start: number; end: number; r: BlockResult }>,
  opts: EmitOptions,
): Promise<TensorRecord> {
  const [rows, cols] = meta.shape;
  if (enc.storage === "mxfp4") throw new Error(`internal: MXFP4 ${meta.name} is not streamed`);
  if (enc.storage !== "q") {
    const s = w.beginFloatTensor(meta, enc.storage);
    for (let done = 0; done < rows;) {
      const { end, r } = await next();
      if (acc) acc.addSums(r.moments!);
      await s.append(r.bytes!);
      done = end;
    }
    return await s.finish();
  }
  const scaleType = enc.scaleType ?? "f16";
  const gpr = groupsPerRow(cols, enc.groupSize);
  const s = w.beginQuantTensor(
    meta,
    { rows, cols, bits: enc.bits, groupSize: enc.groupSize, scaleType },
    enc.method,
  );
  const Params = scaleType === "f32" ? Float32Array : Uint16Array;
  const scales = new Params(rows * gpr);
  const zeros = new Params(rows * gpr);
  // Summed per block, then over the blocks in order: the figures of quantizeChunked.
  let err = 0;
  let ref = 0;
  for (let done = 0; done < rows;) {
    const { start, end, r } = await next();
    const q = r.quant!;
    if (acc) acc.addSums(r.moments!);
    await s.appendCodes(q.codes);
    scales.set(q.scales, start * gpr);
    zeros.set(q.zeros, start * gpr);
    err += q.err;
    ref += q.ref;
    done = end;
  }
  const rec = await s.finish(scales, zeros);
  opts.onQuantError?.(placed, err, ref);
  return rec;
}

/** Reads, encodes and writes a tensor in one piece (vectors, GPTQ, whole-matrix hooks). */
async function wholeTensor(
  w: ArtifactWriter,
  placed: PlacedTensor,
  meta: TensorMeta,
  enc: TensorEncoding,
  acc: MomentAccumulator | undefined,
  rv: ((maxVar: number) => void) | undefined,
  opts: EmitOptions,
): Promise<TensorRecord> {
  const values = await placed.ref.read();
  opts.onValues?.(placed, values);
  acc?.add(values, placed.ref.name);
  if (rv) rv(maxVariance(values, meta.shape[0], meta.shape[1], meta.name));
  const [rows, cols] = meta.shape;
  if (enc.storage === "mxfp4") {
    const t = enc.released
      ? await placed.ref.readMxfp4!()
      : quantizeMxfp4(values, rows, cols, meta.name);
    const dq = dequantize(t);
    opts.onQuantized?.(placed, values, dq);
    const e = squaredError(values, dq);
    opts.onQuantError?.(placed, e.err, e.ref);
    return await w.addQuantTensor(meta, t, mxfp4Quantizer(enc));
  }
  if (enc.storage !== "q") return await w.addFloatTensor(meta, values, enc.storage);
  let done: AssembledTensor;
  if (isChunkable(enc.method)) {
    const copts = {
      bits: enc.bits,
      groupSize: enc.groupSize,
      method: enc.method,
      scaleType: enc.scaleType,
      name: meta.name,
    };
    done = opts.pool
      ? await opts.pool.quantize(values, rows, cols, copts)
      : quantizeChunked(values, rows, cols, copts);
    if (opts.onQuantized) opts.onQuantized(placed, values, dequantize(done.tensor));
  } else {
    const u = quantizeUnpacked(values, rows, cols, {
      bits: enc.bits,
      groupSize: enc.groupSize,
      method: enc.method,
      scaleType: enc.scaleType,
      hessian: typeof enc.hessian === "function" ? await enc.hessian() : enc.hessian,
      name: meta.name,
    });
    // reconstruct(u) is bit-identical to dequantize(pack(u)), and much cheaper.
    const dq = reconstruct(u);
    done = { tensor: pack(u), ...squaredError(values, dq) };
    opts.onQuantized?.(placed, values, dq);
  }
  opts.onQuantError?.(placed, done.err, done.ref);
  return await w.addQuantTensor(meta, done.tensor, enc.method);
}
