/**
 * GPU timing helpers for the benchmarks: a copy kernel (the bandwidth yardstick), dispatch
 * timing with timestamp queries when the device has `timestamp-query` (else wall clock over
 * many dispatches in one submission), and the fixed cost of one dispatch.
 *
 * @module
 */

import {
  bindKernel,
  getKernel,
  type KernelSource,
  readBuffer,
  storageBuffer,
} from "../kernels/kernel.ts";

/** One timed kernel: its dispatch arguments. */
export interface TimedDispatch {
  src: KernelSource;
  bufs: Record<string, GPUBuffer>;
  groups: [number, number, number];
}

/** How a measurement was taken. */
export type TimerKind = "timestamp-query" | "wall-clock";

/** The timer a device supports. */
export function timerKind(device: GPUDevice): TimerKind {
  return device.features.has("timestamp-query") ? "timestamp-query" : "wall-clock";
}

/**
 * Mean milliseconds per dispatch of `d`, over `iters` dispatches recorded in one compute pass
 * (after one untimed warm-up pass, which also triggers any lazy shader compilation).
 */
export async function timeDispatch(
  device: GPUDevice,
  d: TimedDispatch,
  iters: number,
): Promise<number> {
  const kernel = getKernel(device, d.src);
  const bindGroup = bindKernel(device, kernel, d.bufs);
  const ts = timerKind(device) === "timestamp-query";
  const querySet = ts ? device.createQuerySet({ type: "timestamp", count: 2 }) : null;
  const resolve = ts
    ? storageBuffer(device, 16, "ts", undefined, GPUBufferUsage.QUERY_RESOLVE)
    : null;
  const encode = (n: number, timed: boolean) => {
    const enc = device.createCommandEncoder();
    const pass = enc.beginComputePass(
      timed && querySet
        ? { timestampWrites: { querySet, beginningOfPassWriteIndex: 0, endOfPassWriteIndex: 1 } }
        : {},
    );
    pass.setPipeline(kernel.pipeline);
    pass.setBindGroup(0, bindGroup);
    for (let i = 0; i < n; i++) pass.dispatchWorkgroups(...d.groups);
    pass.end();
    if (timed && querySet) enc.resolveQuerySet(querySet, 0, 2, resolve!, 0);
    return enc.finish();
  };
  device.queue.submit([encode(1, false)]);
  await device.queue.onSubmittedWorkDone();
  const t0 = performance.now();
  device.queue.submit([encode(iters, true)]);
  await device.queue.onSubmittedWorkDone();
  const wall = performance.now() - t0;
  if (!querySet) return wall / iters;
  const b = await readBuffer(device, resolve!, 16);
  const v = new BigUint64Array(b.buffer, b.byteOffset, 2);
  querySet.destroy();
  resolve!.destroy();
  const ns = Number(v[1] - v[0]);
  // A zero or negative span means the implementation did not write timestamps: use the clock.
  return ns > 0 ? ns / 1e6 / iters : wall / iters;
}

/** The copy kernel: dst[i] = src[i] over vec4<f32> elements, one element per invocation. */
export function copySource(): KernelSource {
  return {
    label: "copy",
    bindings: ["src", "dst"],
    code: `@group(0) @binding(0) var<storage, read> src: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read_write> dst: array<vec4<f32>>;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>) {
  let i = id.y * nw.x * 64u + id.x;
  if (i < arrayLength(&dst)) { dst[i] = src[i]; }
}`,
  };
}

/** Copy bandwidth in bytes per second (bytes read + bytes written) over a `bytes`-byte buffer. */
export async function copyBandwidth(
  device: GPUDevice,
  bytes: number,
  iters: number,
): Promise<{ bytesPerSecond: number; ms: number }> {
  const n = Math.ceil(bytes / 16);
  const src = storageBuffer(device, n * 16, "copy.src");
  const dst = storageBuffer(device, n * 16, "copy.dst");
  const wgs = Math.ceil(n / 64);
  const x = Math.min(wgs, 65535);
  const ms = await timeDispatch(device, {
    src: copySource(),
    bufs: { src, dst },
    groups: [x, Math.ceil(wgs / x), 1],
  }, iters);
  src.destroy();
  dst.destroy();
  return { bytesPerSecond: (2 * n * 16) / (ms / 1000), ms };
}

/** Milliseconds of one empty dispatch of a 64-invocation workgroup (the per-dispatch cost). */
export async function dispatchOverhead(device: GPUDevice, iters = 50): Promise<number> {
  const x = storageBuffer(device, 16, "empty");
  const src: KernelSource = {
    label: "empty",
    bindings: ["x"],
    code: `@group(0) @binding(0) var<storage, read_write> x: array<f32>;
@compute @workgroup_size(64)
fn main(@builtin(local_invocation_index) li: u32) { if (li == 999u) { x[0] = 1.0; } }`,
  };
  const ms = await timeDispatch(device, { src, bufs: { x }, groups: [1, 1, 1] }, iters);
  x.destroy();
  return ms;
}
