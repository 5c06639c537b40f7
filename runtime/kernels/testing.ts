/**
 * Test helpers for the kernel parity tests: random matrices in every weight format together with
 * the exact values the GPU must compute with.
 *
 * @module
 */

import { bf16ToF32, f16ToF32, f32ToF16 } from "../../schemas/half.ts";
import {
  dequantize,
  encodeParams,
  groupsPerRow,
  packCodes,
  type QuantizedTensor,
} from "../../schemas/packing.ts";
import type { HostMatrix, WeightFormat } from "./weights.ts";
import { bindKernel, getKernel, type KernelSource, readBuffer, STEP_BYTES } from "./kernel.ts";

/** A random matrix in `format`, with its exact f32 values (what the GPU must use). */
export function randomMatrix(
  format: WeightFormat,
  rows: number,
  cols: number,
  rand: () => number,
): { host: HostMatrix; values: Float64Array } {
  const n = rows * cols;
  const values = new Float64Array(n);
  if (format.kind === "q") {
    const codes = new Uint8Array(n);
    for (let i = 0; i < n; i++) codes[i] = Math.floor(rand() * (1 << format.bits));
    const ng = rows * groupsPerRow(cols, format.groupSize);
    if (format.scaleType === "e8m0") {
      // MXFP4: e8m0 scales 2^-9 .. 2^0, no zeros.
      const q: QuantizedTensor = {
        rows,
        cols,
        bits: 4,
        groupSize: 32,
        scaleType: "e8m0",
        codes: packCodes(codes, rows, cols, 4),
        scales: Uint8Array.from({ length: ng }, () => 118 + Math.floor(rand() * 10)),
        zeros: new Uint8Array(0),
      };
      dequantize(q).forEach((v, i) => values[i] = v);
      return { host: q, values };
    }
    const sc = Array.from({ length: ng }, () => 0.01 + 0.05 * rand());
    const ze = Array.from({ length: ng }, () => rand() * ((1 << format.bits) - 1));
    const q: QuantizedTensor = {
      rows,
      cols,
      bits: format.bits,
      groupSize: format.groupSize,
      scaleType: format.scaleType,
      codes: packCodes(codes, rows, cols, format.bits),
      scales: encodeParams(sc, format.scaleType),
      zeros: encodeParams(ze, format.scaleType),
    };
    dequantize(q).forEach((v, i) => values[i] = v);
    return { host: q, values };
  }
  if (format.kind === "f32") {
    const a = new Float32Array(n);
    for (let i = 0; i < n; i++) values[i] = a[i] = rand() * 2 - 1;
    return { host: { raw: new Uint8Array(a.buffer) }, values };
  }
  const a = new Uint16Array(n);
  for (let i = 0; i < n; i++) {
    const v = rand() * 2 - 1;
    if (format.kind === "f16") {
      a[i] = f32ToF16(v);
      values[i] = f16ToF32(a[i]);
    } else {
      const f = new Float32Array([v]);
      a[i] = new Uint32Array(f.buffer)[0] >>> 16;
      values[i] = bf16ToF32(a[i]);
    }
  }
  return { host: { raw: new Uint8Array(a.buffer) }, values };
}

/** A Step uniform holding `T` tokens starting at position `pos0`. */
export function stepBuffer(device: GPUDevice, T: number, pos0 = 0): GPUBuffer {
  const b = device.createBuffer({
    size: STEP_BYTES,
    usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST,
  });
  device.queue.writeBuffer(b, 0, new Uint32Array([T, pos0, 0, 0]));
  return b;
}

/** Reads the first `n` f32 values of a buffer back to the host. */
export async function readF32(device: GPUDevice, buf: GPUBuffer, n: number): Promise<Float32Array> {
  const b = await readBuffer(device, buf, n * 4);
  return new Float32Array(b.buffer, b.byteOffset, n).slice();
}

/** Dispatches one kernel once with the named buffers and submits it. */
export function dispatchOnce(
  device: GPUDevice,
  src: KernelSource,
  bufs: Record<string, GPUBuffer>,
  groups: [number, number, number],
): void {
  const kernel = getKernel(device, src);
  const enc = device.createCommandEncoder();
  const pass = enc.beginComputePass();
  pass.setPipeline(kernel.pipeline);
  pass.setBindGroup(0, bindKernel(device, kernel, bufs));
  pass.dispatchWorkgroups(...groups);
  pass.end();
  device.queue.submit([enc.finish()]);
}
