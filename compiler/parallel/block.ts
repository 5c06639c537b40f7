/**
 * One row block of one tensor, processed wherever there is a free core: decoded from the raw
 * checkpoint bytes (or given as f32), then any of: quantized and packed (as in chunked.ts),
 * cast to its float storage bytes, its moment sums taken (compiler/emit/stats.ts), its largest
 * row variance taken (MaxVar). Pure: the same job gives the same result on any thread, so the
 * artifact never depends on the number of workers.
 *
 * @module
 */

import type { RawElements } from "../ir.ts";
import type { FloatStorage } from "../../schemas/artifact.ts";
import { UsageError } from "../../schemas/errors.ts";
import { decodeRaw } from "../checkpoint/raw.ts";
import { type MomentSums, momentSums } from "../emit/stats.ts";
import { maxVariance } from "../passes/sensitivity.ts";
import { castMatrix } from "../quantize/cast.ts";
import { type ChunkOptions, type ChunkResult, quantizeChunk } from "./chunked.ts";

/** What to do with one block of rows. */
export interface BlockJob {
  /** Raw source bytes, decoded where the job runs... */
  raw?: RawElements;
  /** ...or the values themselves. */
  values?: Float32Array;
  rows: number;
  cols: number;
  /** Tensor name for messages. */
  name: string;
  /** Quantize and pack the block. */
  quant?: ChunkOptions;
  /** Cast the block to this float storage's bytes. */
  cast?: FloatStorage;
  /** Flat index of the block's first element in its tensor (cast messages). */
  offset?: number;
  /** Moment sums about this shift. */
  momentShift?: number;
  /** The largest row variance. */
  rowVariance?: boolean;
}

/** What a {@link BlockJob} produced (fields present as requested). */
export interface BlockResult {
  quant?: ChunkResult;
  bytes?: Uint8Array;
  moments?: MomentSums;
  rowVariance?: number;
}

/** Runs a job on this thread. */
export function runBlock(job: BlockJob): BlockResult {
  const { rows, cols, name } = job;
  const w = job.raw ? decodeRaw(job.raw) : job.values;
  if (!w || w.length !== rows * cols) {
    throw new UsageError(`${name}: block of ${w?.length ?? 0} values for [${rows}, ${cols}]`);
  }
  const out: BlockResult = {};
  if (job.momentShift !== undefined) out.moments = momentSums(w, job.momentShift, name);
  if (job.rowVariance) out.rowVariance = maxVariance(w, rows, cols, name);
  if (job.quant) out.quant = quantizeChunk(w, rows, cols, { ...job.quant, name });
  if (job.cast === "f32") {
    out.bytes = new Uint8Array(w.buffer, w.byteOffset, w.byteLength);
  } else if (job.cast === "f16" || job.cast === "bf16") {
    const h = castMatrix(w, job.cast, name, job.offset ?? 0);
    out.bytes = new Uint8Array(h.buffer, h.byteOffset, h.byteLength);
  } else if (job.cast !== undefined) {
    throw new UsageError(`tensor ${JSON.stringify(name)}: unknown storage ${job.cast}`);
  }
  return out;
}

/** The buffers of a result that can be moved (not copied) to another thread. */
export function resultTransfers(r: BlockResult): ArrayBuffer[] {
  const list: ArrayBufferLike[] = [];
  if (r.quant) list.push(r.quant.codes.buffer, r.quant.scales.buffer, r.quant.zeros.buffer);
  if (r.bytes) list.push(r.bytes.buffer);
  return [...new Set(list)].filter((b): b is ArrayBuffer => b instanceof ArrayBuffer);
}

/** The buffer of a job's input, when the job owns all of it (then it can be moved). */
export function jobTransfers(job: BlockJob): ArrayBuffer[] {
  const a = job.raw?.bytes ?? job.values;
  if (!a || !(a.buffer instanceof ArrayBuffer)) return [];
  return a.byteOffset === 0 && a.byteLength === a.buffer.byteLength ? [a.buffer] : [];
}

/** Something that runs block jobs: a worker pool, or {@link inlineRunner}. */
export interface BlockRunner {
  /** Jobs worth keeping in flight to keep it busy. */
  readonly lanes: number;
  /** Runs a job (moving its input buffer when it owns it). */
  run(job: BlockJob): Promise<BlockResult>;
}

/** Runs jobs on this thread (the 0-worker path), one at a time as they are awaited. */
export const inlineRunner: BlockRunner = {
  lanes: 1,
  run: (job) => Promise.resolve().then(() => runBlock(job)),
};
