/**
 * Worker entry point of {@link QuantizePool}: quantizes blocks of rows read from a shared buffer
 * and sends each packed block back (its buffers transferred, not copied).
 *
 * @module
 */

import { type ChunkOptions, quantizeChunk } from "./chunked.ts";
import { type BlockJob, resultTransfers, runBlock } from "./block.ts";
import {
  type CalibrationJob,
  calibrationResultTransfers,
  runCalibrationJob,
} from "../calibration/jobs.ts";

/** A block to quantize: rows [start, end) of the matrix in `buffer`. */
export interface ChunkRequest {
  kind: "chunk";
  id: number;
  buffer: SharedArrayBuffer;
  cols: number;
  start: number;
  end: number;
  opts: ChunkOptions;
}

const self_ = globalThis as unknown as {
  onmessage:
    | ((e: MessageEvent<ChunkRequest | BlockRequest | CalibrationRequest>) => void)
    | null;
  postMessage(msg: unknown, transfer?: Transferable[]): void;
};

/** A row-block job (block.ts). */
export interface BlockRequest {
  kind: "block";
  id: number;
  job: BlockJob;
}

/** A calibration job (compiler/calibration/jobs.ts). */
export interface CalibrationRequest {
  kind: "calibration";
  id: number;
  job: CalibrationJob;
}

self_.onmessage = (e: MessageEvent<ChunkRequest | BlockRequest | CalibrationRequest>) => {
  if (e.data.kind === "calibration") {
    const { id, job } = e.data;
    try {
      const result = runCalibrationJob(job);
      self_.postMessage({ id, result }, calibrationResultTransfers(result));
    } catch (err) {
      const x = err as Error;
      self_.postMessage({ id, error: { name: x?.name, message: x?.message ?? String(err) } });
    }
    return;
  }
  if (e.data.kind === "block") {
    const { id, job } = e.data;
    try {
      const result = runBlock(job);
      self_.postMessage({ id, result }, resultTransfers(result));
    } catch (err) {
      const x = err as Error;
      self_.postMessage({ id, error: { name: x?.name, message: x?.message ?? String(err) } });
    }
    return;
  }
  const { id, buffer, cols, start, end, opts } = e.data;
  try {
    const w = new Float32Array(buffer, start * cols * 4, (end - start) * cols);
    const r = quantizeChunk(w as unknown as Float32Array, end - start, cols, opts);
    self_.postMessage({ id, result: r }, [
      r.codes.buffer as ArrayBuffer,
      r.scales.buffer as ArrayBuffer,
      r.zeros.buffer as ArrayBuffer,
    ]);
  } catch (err) {
    const x = err as Error;
    self_.postMessage({ id, error: { name: x?.name, message: x?.message ?? String(err) } });
  }
};
