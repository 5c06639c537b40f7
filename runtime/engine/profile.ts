/**
 * Kernel timing for diagnostics (`profileKernels` of the engines, `bench kernels`).
 *
 * @module
 */

import type { Dispatch } from "../kernels/kernel.ts";

/**
 * Runs each dispatch of `plan` alone, `repeats` times, through `submit` (which encodes and submits
 * a forward of the dispatches it is given), and returns the mean milliseconds per kernel label,
 * summed over layers (tile sizes stripped from the labels). Waits with onSubmittedWorkDone, so
 * the figures include the per-submission cost.
 */
export async function profileDispatches(
  device: GPUDevice,
  plan: Dispatch[],
  repeats: number,
  submit: (list: Dispatch[]) => void,
): Promise<Map<string, number>> {
  const out = new Map<string, number>();
  for (const d of plan) {
    await device.queue.onSubmittedWorkDone();
    const t0 = performance.now();
    for (let r = 0; r < repeats; r++) submit([d]);
    await device.queue.onSubmittedWorkDone();
    const key = d.kernel.label.replace(/\.\d+x\d+/, "");
    out.set(key, (out.get(key) ?? 0) + (performance.now() - t0) / repeats);
  }
  return out;
}
