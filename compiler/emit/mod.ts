/**
 * The compiler's back end: ModelIR → artifact file (schemas/ARTIFACT.md), and artifact →
 * ModelIR for running the CPU reference on compiled models.
 *
 * @example
 * ```ts
 * const ir = await loadCheckpoint("model-dir");
 * await emitArtifact(ir, "model.moeq", {
 *   encode: (t) => isExpertRole(t.role)
 *     ? { storage: "q", bits: 4, groupSize: 64, method: "hqq" }
 *     : { storage: "f16" },
 * });
 * ```
 *
 * @module
 */

import type { PlacedTensor } from "../ir.ts";
import { type ModelIR, tensorsOf } from "../ir.ts";
import { pack, quantizeUnpacked, type QuantMethod, reconstruct } from "../quantize/mod.ts";
import { type AssembledTensor, isChunkable, quantizeChunked } from "../parallel/chunked.ts";
import type { QuantizePool } from "../parallel/pool.ts";
import {
  type ArtifactHeader,
  type ExpertReport,
  type FloatStorage,
  summarize,
  type TensorRecord,
} from "../../runtime/artifact.ts";
import { UsageError } from "../../runtime/errors.ts";
import { dequantize, type QuantBits, type ScaleType } from "../../schemas/packing.ts";
import { encodeHeader } from "./header.ts";
import { ArtifactWriter, type TensorMeta, type WrittenArtifact } from "./writer.ts";

export { encodeHeader } from "./header.ts";
export {
  ArtifactWriter,
  DEFAULT_HEADER_RESERVE,
  type FinishOptions,
  type TensorMeta,
  type WriterFile,
  type WriterOptions,
  type WrittenArtifact,
} from "./writer.ts";
export { artifactToIR } from "./ir.ts";

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
  };

/** Options of {@link emitArtifact}. */
export interface EmitOptions {
  /** Picks each tensor's storage; default: every tensor as f32. */
  encode?: (placed: PlacedTensor) => TensorEncoding;
  /**
   * Compiler report rows, one per routed expert; or a function returning them, called once before
   * writing (to size the header: it must already return the final rows and score names, with any
   * values) and once after the last tensor (the rows stored).
   */
  experts?: ExpertReport[] | (() => ExpertReport[]);
  /** Compile options, stored as JSON. */
  options?: unknown;
  /** Writer identification (default "moeq"). */
  generator?: string;
  /** Called with each tensor's source values as they are read, before encoding. */
  onValues?: (placed: PlacedTensor, values: Float32Array) => void;
  /** Called for each quantized tensor with its source and dequantized values (error metrics). */
  onQuantized?: (placed: PlacedTensor, original: Float32Array, dequantized: Float32Array) => void;
  /**
   * Called for each quantized tensor with Σ(w − ŵ)² and Σw² (ŵ as the runtime decodes it): the
   * cheap alternative to `onQuantized`, which needs the whole dequantized matrix.
   */
  onQuantError?: (placed: PlacedTensor, err: number, ref: number) => void;
  /**
   * Worker threads quantizing RTN/HQQ matrices block by block (compiler/parallel/). The artifact
   * is byte-identical with or without a pool. The caller owns (and closes) the pool.
   */
  pool?: QuantizePool;
  /** Called after each tensor is written (progress). */
  onTensor?: (record: TensorRecord, index: number, total: number) => void;
}

function metaOf(p: PlacedTensor): TensorMeta {
  return {
    name: p.ref.name,
    role: p.role,
    layer: p.layer,
    expert: p.expert,
    shape: [...p.ref.shape],
  };
}

const ZERO_SEGMENT = { offset: 0, length: 0, crc32c: 0 };

/** A record with the right structure and zero segments: sizes the header before writing. */
function placeholderRecord(meta: TensorMeta, enc: TensorEncoding): TensorRecord {
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

/** Most elements (f32) of the tensor being quantized plus the one read ahead: 2 expert matrices. */
const PREFETCH_ELEMENTS = 128 << 20;

/** Σ(a − b)² and Σa², in float64. */
function squaredSums(a: Float32Array, b: Float32Array): { err: number; ref: number } {
  let err = 0;
  let ref = 0;
  for (let i = 0; i < a.length; i++) {
    const d = a[i] - b[i];
    err += d * d;
    ref += a[i] * a[i];
  }
  return { err, ref };
}

/**
 * Writes `ir` as an artifact at `destPath`, tensor by tensor in `tensorsOf` order (memory is
 * bounded by the largest tensor). The header region is sized exactly from a placeholder header,
 * so the header always sits right after the preamble. On any failure the temp file is removed.
 */
export async function emitArtifact(
  ir: ModelIR,
  destPath: string,
  opts: EmitOptions = {},
): Promise<WrittenArtifact> {
  const encode = opts.encode ?? (() => ({ storage: "f32" as const }));
  const plan = [...tensorsOf(ir)].map((placed) => ({
    placed,
    meta: metaOf(placed),
    enc: encode(placed),
  }));
  for (const { meta, enc } of plan) {
    if (enc.storage === "q" && meta.shape.length !== 2) {
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
    config: ir.config,
    tensors: placeholders,
    experts: reportRows(),
    tokenizer: { json: tokJson ? ZERO_SEGMENT : null, chatTemplate: tok.chatTemplate },
    optionsJson,
    summary: summarize(placeholders),
  };
  const headerReserve = encodeHeader(placeholder).length;

  const w = await ArtifactWriter.create(destPath, { headerReserve });
  let next: Promise<Float32Array> | null = null;
  try {
    // The next tensor is read while the current one is quantized (at most two in flight).
    next = plan.length ? plan[0].placed.ref.read() : null;
    for (const [i, { placed, meta, enc }] of plan.entries()) {
      const values = await next!;
      next = null;
      opts.onValues?.(placed, values);
      let rec: TensorRecord;
      if (enc.storage === "q") {
        const [rows, cols] = meta.shape;
        let done: AssembledTensor;
        if (isChunkable(enc.method)) {
          const copts = {
            bits: enc.bits,
            groupSize: enc.groupSize,
            method: enc.method,
            scaleType: enc.scaleType,
            name: meta.name,
          };
          if (opts.pool) {
            const job = opts.pool.quantize(values, rows, cols, copts);
            // Read ahead only when both tensors are modest (an embedding-sized pair would not be).
            const numel = (k: number) => plan[k].meta.shape.reduce((x, y) => x * y, 1);
            if (i + 1 < plan.length && numel(i) + numel(i + 1) <= PREFETCH_ELEMENTS) {
              next = plan[i + 1].placed.ref.read();
            }
            done = await job;
          } else {
            done = quantizeChunked(values, rows, cols, copts);
          }
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
          done = { tensor: pack(u), ...squaredSums(values, dq) };
          opts.onQuantized?.(placed, values, dq);
        }
        opts.onQuantError?.(placed, done.err, done.ref);
        rec = await w.addQuantTensor(meta, done.tensor, enc.method);
      } else {
        rec = await w.addFloatTensor(meta, values, enc.storage);
      }
      if (!next && i + 1 < plan.length) next = plan[i + 1].placed.ref.read();
      opts.onTensor?.(rec, i, plan.length);
    }
    await w.setTokenizer(tokJson, tok.chatTemplate);
    return await w.finish({
      config: ir.config,
      experts: reportRows(),
      optionsJson,
      generator: opts.generator,
    });
  } catch (e) {
    next?.catch(() => {}); // a read still in flight: its failure no longer matters
    await w.abort();
    throw e;
  }
}
