/**
 * `moeq bench kernels [--shapes model|large|all|experts] [--iterations N] [--json]`: on the current
 * adapter, the copy kernel's bandwidth (bytes read + written), then every matvec variant
 * (q2/q3/q4/q8 with group 64 and f16 scales, MXFP4 right after q4, f16, f32) in both kernel styles at the shared
 * model's shapes (256×128, 128×256) and at 4096×14336 (split by rows so no binding exceeds the
 * 128 MiB default), reporting the effective bandwidth over the *packed* weight bytes
 * (codes + scales + zeros) and its ratio to the copy kernel. Timed with GPU timestamp queries
 * when the adapter has `timestamp-query`, else wall clock over many dispatches in one submission.
 * `--shapes experts` times the routed-expert list-mode kernels instead (cli/bench_list_kernels.ts).
 *
 * @module
 */

import type { Args } from "./args.ts";
import { UsageError } from "../schemas/errors.ts";
import { requestGpu } from "../runtime/device.ts";
import { storageBuffer } from "../runtime/kernels/kernel.ts";
import { matmulGroups, matmulSource } from "../runtime/kernels/matmul.ts";
import {
  formatName,
  matrixBytes,
  uploadWeightSet,
  weightBuffers,
  type WeightFormat,
} from "../runtime/kernels/weights.ts";
import { tiledGroups, tiledMatmulSource } from "../runtime/kernels/tiled.ts";
import {
  copyBandwidth,
  dispatchOverhead,
  type TimedDispatch,
  timeDispatch,
  timerKind,
} from "../runtime/bench/measure.ts";
import type { QuantBits } from "../schemas/packing.ts";
import { benchListKernels, listKernelTable } from "./bench_list_kernels.ts";

/** One measured matvec. */
export interface KernelRow {
  kernel: "tiled" | "classic";
  format: string;
  rows: number;
  cols: number;
  /** Row splits the matrix was cut into to fit the binding limit. */
  parts: number;
  packedBytes: number;
  ms: number;
  gbPerS: number;
  ratioToCopy: number;
}

const Q = (bits: QuantBits): WeightFormat => ({ kind: "q", bits, groupSize: 64, scaleType: "f16" });
const MXFP4: WeightFormat = { kind: "q", bits: 4, groupSize: 32, scaleType: "e8m0" };
const FORMATS: WeightFormat[] = [
  Q(2),
  Q(3),
  Q(4),
  MXFP4,
  Q(8),
  { kind: "f16" },
  { kind: "f32" },
];

const LIMIT = 128 * 1024 * 1024;

/** Runs `bench kernels`. */
export async function benchKernels(args: Args): Promise<void> {
  const which = args.string("shapes", "all")!;
  if (!["model", "large", "all", "experts"].includes(which)) {
    throw new UsageError(`--shapes: expected model, large, all or experts, got "${which}"`);
  }
  const itFlag = args.string("iterations", "auto");
  const fixedIters = itFlag === "auto" ? undefined : args.int("iterations", 10, 1, 100000);
  const ctx = await requestGpu({ optionalFeatures: ["timestamp-query"] });
  const device = ctx.device;
  if (which === "experts") {
    const list = await benchListKernels(device, 3, fixedIters ?? 2);
    device.destroy();
    if (args.flag("json")) {
      console.log(JSON.stringify({ adapter: ctx.description, cpu: ctx.cpu, list }));
      return;
    }
    console.log(`adapter: ${ctx.description}${ctx.cpu ? " (CPU)" : ""}; min of 3 rounds`);
    for (const line of listKernelTable(list)) console.log(line);
    return;
  }
  const shapes: [number, number][] = [];
  if (which !== "large") shapes.push([256, 128], [128, 256]);
  if (which !== "model") shapes.push([4096, 14336]);

  const copy = await copyBandwidth(device, 32 * 1024 * 1024, fixedIters ?? 10);
  const overheadMs = await dispatchOverhead(device);
  const rows: KernelRow[] = [];
  for (const [R, C] of shapes) {
    const large = R * C > 1 << 20;
    const iters = fixedIters ?? (large ? 2 : 50);
    const styles: ("tiled" | "classic")[] = large
      ? [ctx.cpu ? "tiled" : "classic"]
      : ["tiled", "classic"];
    for (const format of FORMATS) {
      const full = matrixBytes(format, R, C);
      const parts = Math.ceil(full / LIMIT);
      const pr = Math.ceil(R / parts);
      // Arbitrary contents: the cost does not depend on the values.
      const set = uploadWeightSet(device, format, pr, C, [hostZeros(format, pr, C)]);
      const x = storageBuffer(device, C * 4, "x", new Float32Array(C).fill(0.5));
      const y = storageBuffer(device, pr * 4, "y");
      const wb = weightBuffers(set);
      const step = device.createBuffer({
        size: 16,
        usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST,
      });
      device.queue.writeBuffer(step, 0, new Uint32Array([1, 0, 0, 0]));
      for (const kernel of styles) {
        let d: TimedDispatch;
        if (kernel === "tiled") {
          const key = {
            format,
            rows: pr,
            cols: C,
            rowTile: 8,
            tokenTile: 1,
            mode: "dense" as const,
          };
          d = {
            src: tiledMatmulSource(key),
            bufs: { step, x, y, ...wb },
            groups: tiledGroups(key, 1),
          };
        } else {
          const key = {
            format,
            rows: pr,
            cols: C,
            tokenTile: 1,
            mode: "dense" as const,
            maxThreadsPerRow: ctx.cpu ? 16 : 64,
          };
          d = { src: matmulSource(key), bufs: { step, x, y, ...wb }, groups: matmulGroups(key, 1) };
        }
        const ms = parts * await timeDispatch(device, d, iters);
        const gbPerS = full / (ms / 1000) / 1e9;
        rows.push({
          kernel,
          format: formatName(format),
          rows: R,
          cols: C,
          parts,
          packedBytes: full,
          ms,
          gbPerS,
          ratioToCopy: gbPerS / (copy.bytesPerSecond / 1e9),
        });
      }
      set.buffers.forEach((b) => b.destroy());
      x.destroy();
      y.destroy();
    }
  }
  const result = {
    adapter: ctx.description,
    cpu: ctx.cpu,
    timer: timerKind(device),
    copy_gb_per_s: copy.bytesPerSecond / 1e9,
    dispatch_overhead_ms: overheadMs,
    matvecs: rows,
  };
  device.destroy();
  if (args.flag("json")) {
    console.log(JSON.stringify(result));
    return;
  }
  console.log(`adapter: ${result.adapter}${ctx.cpu ? " (CPU)" : ""}; timer: ${result.timer}`);
  console.log(
    `copy kernel: ${result.copy_gb_per_s.toFixed(2)} GB/s (read + write); empty dispatch ${
      overheadMs.toFixed(3)
    } ms`,
  );
  console.log("");
  console.log("kernel   format      shape          parts  packed KiB      ms    GB/s  ÷copy");
  for (const r of rows) {
    console.log(
      `${r.kernel.padEnd(8)} ${r.format.padEnd(11)} ${`${r.rows}x${r.cols}`.padEnd(14)} ${
        String(r.parts).padStart(5)
      } ${(r.packedBytes / 1024).toFixed(0).padStart(10)} ${r.ms.toFixed(3).padStart(7)} ${
        r.gbPerS.toFixed(3).padStart(7)
      } ${r.ratioToCopy.toFixed(3).padStart(6)}`,
    );
  }
  console.log("");
  for (const line of mxfp4VsQ4(rows)) console.log(line);
}

/** One line per (kernel, shape): MXFP4's ratio to the copy kernel next to q4's. */
export function mxfp4VsQ4(rows: readonly KernelRow[]): string[] {
  const q4 = formatName(Q(4));
  return rows.filter((r) => r.format === "mxfp4").map((m) => {
    const q = rows.find((r) =>
      r.format === q4 && r.kernel === m.kernel && r.rows === m.rows &&
      r.cols === m.cols
    );
    return `${m.kernel} ${m.rows}x${m.cols}: mxfp4 ÷copy ${m.ratioToCopy.toFixed(3)}, ${q4} ÷copy ${
      q ? q.ratioToCopy.toFixed(3) : "-"
    }`;
  });
}

/** A zero matrix of the format (contents do not affect timing). */
function hostZeros(format: WeightFormat, rows: number, cols: number) {
  if (format.kind !== "q") {
    return { raw: new Uint8Array(rows * cols * (format.kind === "f32" ? 4 : 2)) };
  }
  const gpr = Math.ceil(cols / format.groupSize);
  const mx = format.scaleType === "e8m0";
  return {
    rows,
    cols,
    bits: format.bits,
    groupSize: format.groupSize,
    scaleType: format.scaleType,
    codes: new Uint32Array(rows * Math.ceil(cols / 32) * format.bits),
    scales: mx ? new Uint8Array(rows * gpr) : new Uint16Array(rows * gpr),
    zeros: mx ? new Uint8Array(0) : new Uint16Array(rows * gpr),
  };
}
