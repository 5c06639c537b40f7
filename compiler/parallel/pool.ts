/**
 * A pool of Deno Workers quantizing one matrix at a time, block by block (see chunked.ts). The
 * matrix is copied once into a SharedArrayBuffer the workers read from; each block's packed
 * result comes back transferred. Output is byte-identical to {@link quantizeChunked} on one
 * thread, whatever the number of workers. Memory: the shared copy plus the packed output.
 *
 * @module
 */

import {
  type AssembledTensor,
  assembler,
  type ChunkOptions,
  chunkRanges,
  type ChunkResult,
} from "./chunked.ts";
import type { ChunkRequest } from "./quantize_worker.ts";
import { type BlockJob, type BlockResult, type BlockRunner, jobTransfers } from "./block.ts";
import {
  type CalibrationJob,
  calibrationJobTransfers,
  type CalibrationResult,
  type CalibrationRunner,
  type ExpertJob,
  type ExpertJobResult,
  type HeadJob,
} from "../calibration/jobs.ts";
import type { HeadBlock } from "../calibration/kernels.ts";
import type {
  AttentionGroupJob,
  AttentionGroupResult,
  LinearJob,
  LinearResult,
} from "../calibration/attention.ts";
import {
  InputError,
  LimitError,
  MoeqError,
  UnsupportedError,
  UsageError,
} from "../../schemas/errors.ts";

interface Pending {
  // deno-lint-ignore no-explicit-any
  resolve(r: any): void;
  reject(e: Error): void;
  worker: number;
}

/** Rebuilds a worker's error as the typed error it was (by name), else a plain Error. */
function rebuild(e: { name?: string; message: string }): Error {
  if (e.name === "LimitError") return new LimitError(e.message);
  if (e.name === "UsageError") return new UsageError(e.message);
  if (e.name === "InputError") return new InputError(e.message); // message has the file
  if (e.name === "UnsupportedError") return new UnsupportedError(e.message);
  return new Error(e.message);
}

/**
 * Quantizes matrices, and runs row-block jobs (block.ts), on `size` worker threads. Call
 * {@link close} when done.
 */
export class QuantizePool implements BlockRunner, CalibrationRunner {
  readonly size: number;
  readonly #workers: Worker[] = [];
  readonly #busy: number[] = [];
  readonly #pending = new Map<number, Pending>();
  #next = 0;
  #shared: SharedArrayBuffer | null = null;

  /** Starts `size` (≥ 1) workers. */
  constructor(size: number) {
    if (!Number.isInteger(size) || size < 1) {
      throw new UsageError(`workers must be a positive integer (got ${size})`);
    }
    this.size = size;
    for (let i = 0; i < size; i++) {
      const w = new Worker(new URL("./quantize_worker.ts", import.meta.url).href, {
        type: "module",
      });
      w.onmessage = (e: MessageEvent) => {
        const { id, result, error } = e.data;
        const p = this.#pending.get(id);
        if (!p) return;
        this.#pending.delete(id);
        this.#busy[p.worker]--;
        if (error) p.reject(rebuild(error));
        else p.resolve(result as ChunkResult);
      };
      w.onerror = (e: ErrorEvent) => {
        e.preventDefault();
        const err = new Error(`quantize worker failed: ${e.message}`);
        for (const p of this.#pending.values()) p.reject(err);
        this.#pending.clear();
      };
      this.#workers.push(w);
      this.#busy.push(0);
    }
  }

  /** Jobs worth keeping in flight: two per worker. */
  get lanes(): number {
    return 2 * this.size;
  }

  #post(worker: number, msg: unknown, transfer: ArrayBuffer[] = []): Promise<unknown> {
    const id = this.#next++;
    return new Promise((resolve, reject) => {
      this.#pending.set(id, { resolve, reject, worker });
      this.#busy[worker]++;
      this.#workers[worker].postMessage({ ...msg as object, id }, transfer);
    });
  }

  /** Runs one block job on the least busy worker; its input buffer is moved when it owns it. */
  run(job: BlockJob): Promise<BlockResult> {
    let w = 0;
    for (let i = 1; i < this.size; i++) if (this.#busy[i] < this.#busy[w]) w = i;
    return this.#post(w, { kind: "block", job }, jobTransfers(job)) as Promise<BlockResult>;
  }

  /** Runs one calibration job (compiler/calibration/jobs.ts) on the least busy worker. */
  runCalibration(job: ExpertJob): Promise<ExpertJobResult>;
  runCalibration(job: HeadJob): Promise<HeadBlock>;
  runCalibration(job: AttentionGroupJob): Promise<AttentionGroupResult>;
  runCalibration(job: LinearJob): Promise<LinearResult>;
  runCalibration(job: CalibrationJob): Promise<CalibrationResult> {
    let w = 0;
    for (let i = 1; i < this.size; i++) if (this.#busy[i] < this.#busy[w]) w = i;
    return this.#post(
      w,
      { kind: "calibration", job },
      calibrationJobTransfers(job),
    ) as Promise<CalibrationResult>;
  }

  /** A shared buffer of at least `bytes` bytes, reused across matrices (grown when needed). */
  #buffer(bytes: number): SharedArrayBuffer {
    if (!this.#shared || this.#shared.byteLength < bytes) {
      this.#shared = null; // let the old one go before allocating
      this.#shared = new SharedArrayBuffer(bytes);
    }
    return this.#shared;
  }

  /** Quantizes W [rows, cols] with the blocks spread over the workers. */
  async quantize(
    w: Float32Array,
    rows: number,
    cols: number,
    opts: ChunkOptions,
  ): Promise<AssembledTensor> {
    if (w.length !== rows * cols) {
      throw new UsageError(`${opts.name ?? "matrix"}: ${w.length} values for [${rows}, ${cols}]`);
    }
    const buffer = this.#buffer(w.byteLength);
    new Float32Array(buffer, 0, w.length).set(w);
    const out = assembler(rows, cols, opts);
    const ranges = chunkRanges(rows);
    // Keep every worker busy with at most two blocks queued each.
    let k = 0;
    const runOne = async (slot: number): Promise<void> => {
      while (k < ranges.length) {
        const [start, end] = ranges[k++];
        const req: Omit<ChunkRequest, "id"> = { kind: "chunk", buffer, cols, start, end, opts };
        const r = await this.#post(slot % this.size, req) as ChunkResult;
        out.put(start, r);
      }
    };
    const lanes = Array.from({ length: this.size * 2 }, (_, i) => runOne(i));
    const settled = await Promise.allSettled(lanes);
    const failed = settled.find((s) => s.status === "rejected") as
      | PromiseRejectedResult
      | undefined;
    if (failed) {
      throw failed.reason instanceof MoeqError ? failed.reason : failed.reason as Error;
    }
    return out.finish();
  }

  /** Stops the workers (pending work is rejected). */
  close(): void {
    for (const w of this.#workers) w.terminate();
    for (const p of this.#pending.values()) p.reject(new Error("quantize pool closed"));
    this.#pending.clear();
    this.#shared = null;
  }
}
