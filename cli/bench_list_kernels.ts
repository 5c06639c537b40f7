/**
 * `moeq bench kernels --shapes experts`: the routed-expert ("list-mode") tiled matmuls at the
 * expert shapes of a Mixtral-like layer with 8 experts of 16384 (hidden 4096, 4-bit group 64 f16
 * scales, the 1.05 GB synthetic of docs/PERFORMANCE.md): one expert's fused [gate; up] (2·16384 ×
 * 4096) and down (4096 × 16384) matmul with n = 1, 2, 3, 4, 8 routed tokens, for each rows ×
 * tokens tile the engine's plans use (decode 8 × 1, prefill and batch 16 × 4) and two neighbours,
 * in alternating rounds (min of the rounds). Reports ms and weights per second per token (the
 * matrix's weights × n ÷ time): a tile that shares its weight pass among its tokens beats n
 * single-token passes when this figure grows with n.
 *
 * @module
 */

import { prepareKernels, storageBuffer } from "../runtime/kernels/kernel.ts";
import { tiledGroups, type TiledKey, tiledMatmulSource } from "../runtime/kernels/tiled.ts";
import { uploadWeightSet, weightBuffers, type WeightFormat } from "../runtime/kernels/weights.ts";
import { timeDispatch } from "../runtime/bench/measure.ts";

/** One measured list-mode matmul. */
export interface ListKernelRow {
  matrix: "gate/up" | "down";
  rowTile: number;
  tokenTile: number;
  /** Routed tokens of the expert. */
  n: number;
  ms: number;
  /** Weights × n ÷ time, in G/s. */
  gWeightsPerS: number;
  /** Pipeline creation + first dispatch (JIT on lavapipe), ms; the same for every n. */
  jitMs: number;
}

/** 4-bit, group 64, f16 scales and zeros. */
const FORMAT: WeightFormat = { kind: "q", bits: 4, groupSize: 64, scaleType: "f16" };
const HIDDEN = 4096, INTER = 16384, EXPERTS = 8, TOP_K = 2, CAPACITY = 16;
/** Rows × tokens per invocation: decode, prefill/batch, and neighbours. */
export const LIST_TILES: [number, number][] = [[8, 1], [16, 4], [8, 4], [16, 8]];
export const LIST_COUNTS = [1, 2, 3, 4, 8];

/** Times the list-mode kernels on `device` (`rounds` alternating rounds, `iters` per timing). */
export async function benchListKernels(
  device: GPUDevice,
  rounds: number,
  iters: number,
): Promise<ListKernelRow[]> {
  const out: ListKernelRow[] = [];
  for (const matrix of ["gate/up", "down"] as const) {
    const gateUp = matrix === "gate/up";
    const rows = gateUp ? INTER : HIDDEN, cols = gateUp ? HIDDEN : INTER;
    const stored = gateUp ? 2 * rows : rows;
    const gpr = Math.ceil(cols / 64);
    // Arbitrary codes, unit scales, zero 2: the cost does not depend on the values.
    const set = uploadWeightSet(device, FORMAT, stored, cols, [{
      rows: stored,
      cols,
      bits: 4,
      groupSize: 64,
      scaleType: "f16",
      codes: new Uint32Array(stored * (cols / 32) * 4).map((_, i) => Math.imul(i, 2654435761)),
      scales: new Uint16Array(stored * gpr).fill(0x3c00),
      zeros: new Uint16Array(stored * gpr).fill(0x4000),
    }]);
    const xRowsCount = CAPACITY * TOP_K;
    const x = storageBuffer(
      device,
      xRowsCount * cols * 4,
      "x",
      new Float32Array(xRowsCount * cols).fill(0.25),
    );
    const y = storageBuffer(device, xRowsCount * rows * 4, "y");
    const setExperts = storageBuffer(device, 4, "setExperts", new Uint32Array([0]));
    // Expert 0's list holds n (token, slot) rows of distinct tokens.
    const routes = new Map(LIST_COUNTS.map((n) => {
      const r = new Uint32Array(EXPERTS + EXPERTS * CAPACITY);
      r[0] = n;
      for (let j = 0; j < n; j++) r[EXPERTS + j] = j * TOP_K + (j % TOP_K);
      return [n, storageBuffer(device, r.byteLength, "routes", r)];
    }));
    const bufs = (n: number) => ({
      x,
      y,
      setExperts,
      routes: routes.get(n)!,
      ...weightBuffers(set),
    });
    const kernels = [];
    for (const [rowTile, tokenTile] of LIST_TILES) {
      const key: TiledKey = {
        format: FORMAT,
        rows,
        cols,
        rowTile,
        tokenTile,
        mode: "list",
        xRows: gateUp ? "token" : "slot",
        topK: TOP_K,
        numExperts: EXPERTS,
        capacity: CAPACITY,
        gateUp,
      };
      const src = tiledMatmulSource(key);
      const t0 = performance.now();
      await prepareKernels(device, [src]);
      await timeDispatch(device, { src, bufs: bufs(1), groups: tiledGroups(key, CAPACITY, 1) }, 1);
      kernels.push({ key, src, jitMs: performance.now() - t0 });
    }
    const best = new Map<string, number>();
    for (let r = 0; r < rounds; r++) {
      for (const n of LIST_COUNTS) {
        for (const k of kernels) {
          const d = { src: k.src, bufs: bufs(n), groups: tiledGroups(k.key, CAPACITY, 1) };
          const ms = await timeDispatch(device, d, iters);
          const id = `${k.key.rowTile}x${k.key.tokenTile} ${n}`;
          best.set(id, Math.min(best.get(id) ?? Infinity, ms));
        }
      }
    }
    for (const k of kernels) {
      for (const n of LIST_COUNTS) {
        const ms = best.get(`${k.key.rowTile}x${k.key.tokenTile} ${n}`)!;
        out.push({
          matrix,
          rowTile: k.key.rowTile,
          tokenTile: k.key.tokenTile,
          n,
          ms,
          gWeightsPerS: stored * cols * n / (ms / 1000) / 1e9,
          jitMs: k.jitMs,
        });
      }
    }
    set.buffers.forEach((b) => b.destroy());
    [x, y, setExperts, ...routes.values()].forEach((b) => b.destroy());
  }
  return out;
}

/** Text table of {@link benchListKernels} rows: one line per matrix and tile. */
export function listKernelTable(rows: readonly ListKernelRow[]): string[] {
  const lines = [
    `matrix   rows×tokens  JIT ms  ${
      LIST_COUNTS.map((n) => `n=${n}: ms  Gw/s`.padStart(16)).join("")
    }`,
  ];
  const seen = new Set<string>();
  for (const r of rows) {
    const id = `${r.matrix} ${r.rowTile}x${r.tokenTile}`;
    if (seen.has(id)) continue;
    seen.add(id);
    const cells = LIST_COUNTS.map((n) => {
      const c = rows.find((o) =>
        o.matrix === r.matrix && o.rowTile === r.rowTile && o.tokenTile === r.tokenTile &&
        o.n === n
      );
      return c ? `${c.ms.toFixed(1).padStart(9)} ${c.gWeightsPerS.toFixed(2).padStart(5)}` : "";
    });
    lines.push(
      `${r.matrix.padEnd(8)} ${`${r.rowTile}×${r.tokenTile}`.padEnd(12)} ${
        r.jitMs.toFixed(0).padStart(6)
      }  ${cells.map((c) => c.padStart(16)).join("")}`,
    );
  }
  return lines;
}
