/**
 * WebGPU adapter and device acquisition.
 *
 * The device is requested with the limits a model needs (taken from the adapter's limits, never
 * more than it offers), so a model that cannot fit fails early with a {@link LimitError} naming
 * the limit and both sizes. Limits the engine can adapt to (the binding size: it splits larger
 * matrices) are "wants": asked for up to what the adapter offers, never an error. `shader-f16` is enabled when the adapter
 * has it and the caller does not disable it; every kernel also has an f32-only path.
 *
 * @module
 */

import { DeviceError, LimitError } from "../schemas/errors.ts";

/** What the model needs from the device; each field is a lower bound. */
export interface DeviceNeeds {
  /** Largest single GPU buffer, bytes. */
  maxBufferSize?: number;
  /** Largest storage-buffer binding, bytes. */
  maxStorageBufferBindingSize?: number;
  /** Storage buffers bound at once by one compute shader. */
  maxStorageBuffersPerShaderStage?: number;
  /** Workgroup shared memory, bytes. */
  maxComputeWorkgroupStorageSize?: number;
  /** Workgroups along one dispatch dimension. */
  maxComputeWorkgroupsPerDimension?: number;
}

/** Options for {@link requestGpu}. */
export interface DeviceOptions {
  /** Use shader-f16 when the adapter has it (default true). `false` forces the f32 path. */
  f16?: boolean;
  /** Limits the model needs; checked against the adapter before the device is created. */
  needs?: DeviceNeeds;
  /** Limits the model would use if offered: each requested up to the adapter's value. */
  wants?: DeviceNeeds;
  /** Optional features to enable when the adapter has them (e.g. "timestamp-query"). */
  optionalFeatures?: GPUFeatureName[];
}

/** A device ready for moeq's kernels. */
export interface GpuContext {
  device: GPUDevice;
  /** True when `shader-f16` is enabled on the device. */
  f16: boolean;
  /** The adapter description, for messages and benchmarks. */
  description: string;
  /** True for a CPU (software) adapter such as lavapipe/llvmpipe. */
  cpu: boolean;
  /** Optional features that were enabled. */
  features: GPUFeatureName[];
}

/** Default WebGPU limits: never ask for less than these. */
const DEFAULTS: Required<DeviceNeeds> = {
  maxBufferSize: 268435456,
  maxStorageBufferBindingSize: 134217728,
  maxStorageBuffersPerShaderStage: 8,
  maxComputeWorkgroupStorageSize: 16384,
  maxComputeWorkgroupsPerDimension: 65535,
};

/**
 * Requests an adapter and a device with the limits in `opts.needs`.
 *
 * Throws {@link DeviceError} when WebGPU or an adapter is missing or device creation fails,
 * and {@link LimitError} when a needed limit exceeds what the adapter offers.
 */
export async function requestGpu(opts: DeviceOptions = {}): Promise<GpuContext> {
  const gpu = (globalThis.navigator as Navigator | undefined)?.gpu;
  if (!gpu) throw new DeviceError("WebGPU is not available (navigator.gpu is missing)");
  let adapter: GPUAdapter | null;
  try {
    adapter = await gpu.requestAdapter({ powerPreference: "high-performance" });
  } catch (e) {
    throw new DeviceError(`requestAdapter failed: ${(e as Error).message}`, { cause: e });
  }
  if (!adapter) {
    throw new DeviceError(
      "no WebGPU adapter found (on Linux without a GPU, install mesa-vulkan-drivers and set XDG_RUNTIME_DIR)",
    );
  }
  const requiredLimits = negotiateLimits(adapter.limits, opts.needs ?? {}, opts.wants ?? {});
  const f16 = (opts.f16 ?? true) && adapter.features.has("shader-f16");
  const features = (opts.optionalFeatures ?? []).filter((f) => adapter.features.has(f));
  let device: GPUDevice;
  try {
    device = await adapter.requestDevice({
      requiredFeatures: [...(f16 ? ["shader-f16" as const] : []), ...features],
      requiredLimits,
    });
  } catch (e) {
    throw new DeviceError(`requestDevice failed: ${(e as Error).message}`, { cause: e });
  }
  destroyAtExit(device);
  return { device, f16, features, ...describeAdapter(adapter.info) };
}

/** Devices requested by this module and not yet lost. */
const liveDevices = new Set<GPUDevice>();

/**
 * Destroys `device` when the program unloads, unless it was lost (destroyed) before. Software
 * adapters run queue threads of their own; a device left alive at exit was seen to corrupt the
 * heap while the process tore down (lavapipe: "corrupted size vs. prev_size", SIGABRT after
 * every test had passed).
 */
function destroyAtExit(device: GPUDevice): void {
  if (liveDevices.size === 0) {
    globalThis.addEventListener("unload", () => {
      for (const d of liveDevices) d.destroy();
      liveDevices.clear();
    });
  }
  liveDevices.add(device);
  device.lost.then(() => liveDevices.delete(device));
}

/** Description and CPU-ness of an adapter (from `adapter.info` or `device.adapterInfo`). */
export function describeAdapter(
  info: GPUAdapterInfo | undefined,
): { description: string; cpu: boolean } {
  const desc = info?.description || info?.vendor || "unknown adapter";
  const fallback = (info as { isFallbackAdapter?: boolean } | undefined)?.isFallbackAdapter;
  return {
    description: desc,
    cpu: fallback === true || /llvmpipe|lavapipe|swiftshader/i.test(desc),
  };
}

/**
 * The limits to request: each needed or wanted value (at least the WebGPU default), capped at
 * the adapter's. Throws {@link LimitError} naming the first needed limit the adapter cannot meet;
 * a wanted one it cannot meet is requested at the adapter's value.
 */
export function negotiateLimits(
  adapterLimits: GPUSupportedLimits,
  needs: DeviceNeeds,
  wants: DeviceNeeds = {},
): Record<string, number> {
  const out: Record<string, number> = {};
  for (const name of Object.keys(DEFAULTS) as (keyof DeviceNeeds)[]) {
    const want = Math.max(needs[name] ?? 0, wants[name] ?? 0, DEFAULTS[name]);
    const have = adapterLimits[name] as number;
    if ((needs[name] ?? 0) > have) {
      throw new LimitError(
        `the model needs ${name} = ${needs[name]} but the adapter offers ${have}`,
      );
    }
    out[name] = Math.min(want, have);
  }
  return out;
}
