/**
 * Attention kernels at a 128-token prefill window from position 0 (the eval workload) on the
 * Shakespeare shape (4 heads, 2 KV heads, head size 32): the strided decode kernel dispatched per
 * (head, token) against the query-tiled prefill kernel. `deno task bench runtime/kernels/attention_bench.ts`.
 */
import { requestGpu } from "../device.ts";
import { bindKernel, getKernel, type KernelSource, STEP_BYTES, storageBuffer } from "./kernel.ts";
import {
  attentionPrefillSource,
  attentionSource,
  prefillGroups,
  prefillTile,
} from "./attention.ts";

const device = (await requestGpu()).device;
const nh = 4, nkv = 2, hd = 32, T = 128;
const step = device.createBuffer({
  size: STEP_BYTES,
  usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST,
});
device.queue.writeBuffer(step, 0, new Uint32Array([T, 0, 0, 0]));
const fill = (n: number) => Float32Array.from({ length: n }, (_, i) => Math.sin(i) * 0.5);
const bufs = {
  step,
  q: storageBuffer(device, T * nh * hd * 4, "q", fill(T * nh * hd)),
  kCache: storageBuffer(device, T * nkv * hd * 4, "kCache", fill(T * nkv * hd)),
  vCache: storageBuffer(device, T * nkv * hd * 4, "vCache", fill(T * nkv * hd)),
  out: storageBuffer(device, T * nh * hd * 4, "out"),
};

/** Dispatches per iteration (one submit + wait costs milliseconds in Deno; amortise it). */
const REPS = 10;

function runner(src: KernelSource, groups: [number, number, number]): () => Promise<void> {
  const kernel = getKernel(device, src);
  const bindGroup = bindKernel(device, kernel, bufs);
  return async () => {
    const enc = device.createCommandEncoder();
    const pass = enc.beginComputePass();
    pass.setPipeline(kernel.pipeline);
    pass.setBindGroup(0, bindGroup);
    for (let i = 0; i < REPS; i++) pass.dispatchWorkgroups(...groups);
    pass.end();
    device.queue.submit([enc.finish()]);
    await device.queue.onSubmittedWorkDone();
  };
}

const key = { numHeads: nh, numKvHeads: nkv, headDim: hd, qStride: nh * hd, scale: hd ** -0.5 };
const decode = runner(attentionSource(key), [nh, T, 1]);
const tile = prefillTile(key);
const prefill = runner(attentionPrefillSource(key, tile), prefillGroups(key, tile, T));
await decode();
await prefill();

Deno.bench(
  `attention T=128 ×${REPS}: strided kernel (nh × T workgroups)`,
  { group: "attention" },
  decode,
);
Deno.bench(
  `attention T=128 ×${REPS}: prefill kernel (tile ${tile.qt} queries × ${tile.rh} heads)`,
  { group: "attention", baseline: true },
  prefill,
);
