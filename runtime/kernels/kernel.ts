/**
 * The small framework every moeq kernel uses: generated WGSL with named bindings, pipelines
 * cached per device and per generated source, and bind groups built from a name → buffer map.
 *
 * @module
 */

import { DeviceError } from "../../schemas/errors.ts";

/** Generated WGSL plus the names of its bindings (binding i of group 0 is `bindings[i]`). */
export interface KernelSource {
  /** Short label for errors and profiling. */
  label: string;
  code: string;
  /** Binding names in binding-index order; "step" is the shared uniform. */
  bindings: string[];
}

/**
 * A kernel's bindings in binding-index order (all in group 0), rendering their WGSL
 * declarations: the one place binding indices are assigned.
 */
export class BindingList {
  /** Binding names; binding i is `names[i]`. */
  readonly names: string[] = [];
  readonly #decls: string[] = [];

  /** Appends a binding: `var<space> name: type` (default space: read-only storage). */
  add(name: string, type: string, space = "storage, read"): void {
    this.#decls.push(`@group(0) @binding(${this.names.length}) var<${space}> ${name}: ${type};`);
    this.names.push(name);
  }

  /** The WGSL declarations, one per line. */
  get wgsl(): string {
    return this.#decls.join("\n");
  }
}

/** One binding of {@link kernelSource}: name, WGSL type, address space (default read-only storage). */
export type BindingDecl = [name: string, type: string, space?: string];

/**
 * A kernel from its bindings and its WGSL body (constants, workgroup variables, `main`), with the
 * Step uniform struct declared: what every non-matmul kernel generator returns.
 */
export function kernelSource(label: string, decls: BindingDecl[], body: string): KernelSource {
  const list = new BindingList();
  for (const [name, type, space] of decls) list.add(name, type, space);
  return { label, code: `${STEP_WGSL}\n${list.wgsl}\n${body}`, bindings: list.names };
}

/** A compiled kernel. */
export interface Kernel extends KernelSource {
  pipeline: GPUComputePipeline;
}

/**
 * The per-forward uniform every kernel may read: number of tokens in the batch, the position
 * of the first one (the KV-cache row it writes), in multi-slot engines the slot (sequence) a
 * one-sequence forward runs for (kernels/slots.ts), and in encoder–decoder engines the encoder
 * length, the keys of encoder self-attention and cross-attention (kernels/seq2seq_attention.ts).
 */
export const STEP_WGSL = `struct Step { T: u32, pos0: u32, slot: u32, encoderLength: u32 }`;

/** Byte size of the Step uniform. */
export const STEP_BYTES = 16;

const caches = new WeakMap<GPUDevice, Map<string, Kernel>>();

/** Compiles (or fetches from the cache) the pipeline for a generated kernel. */
export function getKernel(device: GPUDevice, src: KernelSource): Kernel {
  let cache = caches.get(device);
  if (!cache) caches.set(device, cache = new Map());
  const hit = cache.get(src.code);
  if (hit) return hit;
  const module = device.createShaderModule({ label: src.label, code: src.code });
  let pipeline: GPUComputePipeline;
  try {
    pipeline = device.createComputePipeline({
      label: src.label,
      layout: "auto",
      compute: { module, entryPoint: "main" },
    });
  } catch (e) {
    throw new DeviceError(`kernel ${src.label} failed to compile: ${(e as Error).message}`, {
      cause: e,
    });
  }
  const k = { ...src, pipeline };
  cache.set(src.code, k);
  return k;
}

/**
 * Compiles the pipelines of many kernels at once with `createComputePipelineAsync` (in parallel
 * where the implementation allows) and caches them, so that later {@link getKernel} calls for
 * the same sources are cache hits and no pipeline is created at first use.
 */
export async function prepareKernels(device: GPUDevice, sources: KernelSource[]): Promise<void> {
  let cache = caches.get(device);
  if (!cache) caches.set(device, cache = new Map());
  const todo = new Map<string, KernelSource>();
  for (const s of sources) if (!cache.has(s.code)) todo.set(s.code, s);
  await Promise.all([...todo.values()].map(async (src) => {
    const module = device.createShaderModule({ label: src.label, code: src.code });
    let pipeline: GPUComputePipeline;
    try {
      pipeline = await device.createComputePipelineAsync({
        label: src.label,
        layout: "auto",
        compute: { module, entryPoint: "main" },
      });
    } catch (e) {
      throw new DeviceError(`kernel ${src.label} failed to compile: ${(e as Error).message}`, {
        cause: e,
      });
    }
    cache!.set(src.code, { ...src, pipeline });
  }));
}

/** Builds a bind group binding each named buffer of the kernel. */
export function bindKernel(
  device: GPUDevice,
  kernel: Kernel,
  buffers: Record<string, GPUBuffer>,
): GPUBindGroup {
  const entries = kernel.bindings.map((name, binding) => {
    const buffer = buffers[name];
    if (!buffer) throw new DeviceError(`kernel ${kernel.label}: no buffer for binding "${name}"`);
    return { binding, resource: { buffer } };
  });
  return device.createBindGroup({
    label: kernel.label,
    layout: kernel.pipeline.getBindGroupLayout(0),
    entries,
  });
}

/** One recorded dispatch: a kernel, its bind group and its workgroup counts for T tokens. */
export interface Dispatch {
  kernel: Kernel;
  bindGroup: GPUBindGroup;
  /** Workgroup counts for a batch of `T` tokens. */
  groups(T: number): [number, number, number];
}

/** Records the dispatches into one compute pass. */
export function encodeDispatches(pass: GPUComputePassEncoder, list: Dispatch[], T: number): void {
  for (const d of list) {
    const [x, y, z] = d.groups(T);
    if (x === 0 || y === 0 || z === 0) continue;
    pass.setPipeline(d.kernel.pipeline);
    pass.setBindGroup(0, d.bindGroup);
    pass.dispatchWorkgroups(x, y, z);
  }
}

/** Creates a storage buffer of at least 4 bytes, optionally filled from `data`. */
export function storageBuffer(
  device: GPUDevice,
  bytes: number,
  label: string,
  data?: ArrayBufferView,
  extraUsage = 0,
): GPUBuffer {
  const fill = data && ((dst: Uint8Array) => dst.set(bytesOf(data)));
  return filledStorageBuffer(device, bytes, label, fill, extraUsage);
}

/**
 * Creates a storage buffer of at least 4 bytes (zeros) and, with `fill`, writes its contents in
 * place: `fill` gets the mapped bytes, so data can be put where it goes without a staging copy.
 */
export function filledStorageBuffer(
  device: GPUDevice,
  bytes: number,
  label: string,
  fill?: (dst: Uint8Array) => void,
  extraUsage = 0,
): GPUBuffer {
  const size = Math.max(16, Math.ceil(bytes / 16) * 16);
  const buf = device.createBuffer({
    label,
    size,
    usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST | GPUBufferUsage.COPY_SRC | extraUsage,
    mappedAtCreation: fill !== undefined,
  });
  if (fill) {
    fill(new Uint8Array(buf.getMappedRange()));
    buf.unmap();
  }
  return buf;
}

/** The bytes of a typed array (a view, no copy). */
export function bytesOf(data: ArrayBufferView): Uint8Array {
  return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
}

/** WGSL literal for an unsigned constant. */
export function u(n: number): string {
  return `${n >>> 0}u`;
}

/** WGSL literal for an f32 constant (always with a decimal point or exponent). */
export function f(n: number): string {
  const s = String(n);
  return /[.eE]/.test(s) || !Number.isFinite(n) ? s : `${s}.0`;
}

/** Next power of two ≥ n (n ≥ 1). */
export function nextPow2(n: number): number {
  let p = 1;
  while (p < n) p <<= 1;
  return p;
}

let mapCount = 0;

/** Number of buffer readbacks (mapAsync calls) made by the runtime since the process started. */
export function readbackCount(): number {
  return mapCount;
}

/**
 * Copies `bytes` bytes of `src` (from `offset`) to a staging buffer and reads them back: one
 * mapAsync, counted by {@link readbackCount}.
 */
export async function readBuffer(
  device: GPUDevice,
  src: GPUBuffer,
  bytes: number,
  offset = 0,
): Promise<Uint8Array> {
  const size = Math.ceil(bytes / 4) * 4;
  const staging = device.createBuffer({
    size,
    usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
  });
  const enc = device.createCommandEncoder();
  enc.copyBufferToBuffer(src, offset, staging, 0, size);
  device.queue.submit([enc.finish()]);
  const out = await mapStaging(staging, bytes);
  staging.destroy();
  return out;
}

/**
 * Reads `count` token ids from `tokens` starting at entry `first` through `staging` (one copy,
 * one counted readback): the decode loops' batched id readback.
 */
export async function readIds(
  device: GPUDevice,
  tokens: GPUBuffer,
  first: number,
  count: number,
  staging: GPUBuffer,
): Promise<Uint32Array> {
  const enc = device.createCommandEncoder();
  enc.copyBufferToBuffer(tokens, first * 4, staging, 0, count * 4);
  device.queue.submit([enc.finish()]);
  const bytes = await mapStaging(staging, count * 4);
  return new Uint32Array(bytes.buffer, bytes.byteOffset, count);
}

/** Maps a MAP_READ buffer and copies out its first `bytes` bytes (counted readback). */
export async function mapStaging(staging: GPUBuffer, bytes: number): Promise<Uint8Array> {
  mapCount++;
  await staging.mapAsync(GPUMapMode.READ);
  const out = new Uint8Array(staging.getMappedRange(0, Math.ceil(bytes / 4) * 4).slice(0, bytes));
  staging.unmap();
  return out;
}
