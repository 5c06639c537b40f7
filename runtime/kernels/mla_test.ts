/**
 * The MLA latent store and latent attention kernels against a float64 host computation on
 * random non-zero data, in the three ways a kernel finds a token's cache rows (kernels/slots.ts):
 * one sequence at rows 0.. (pos0 + t), one slot of a multi-slot cache from the Step uniform, and
 * per-token (slot, position) rows of a batched decode step. Half-split and interleaved RoPE, a
 * latent rank above the 64 lanes (two values per lane, the last partly idle), contexts over
 * several 64-key tiles; the store must leave every other slot's rows untouched.
 */
import assert from "node:assert/strict";
import { mulberry32 as rng } from "../../schemas/prng.ts";
import { requestGpu } from "../device.ts";
import { ropeTable } from "./attention.ts";
import { type KernelSource, STEP_BYTES, storageBuffer } from "./kernel.ts";
import { mlaAttentionSource, type MlaKey, mlaStoreSource } from "./mla.ts";
import type { SlotLayout } from "./slots.ts";
import { dispatchOnce, readF32 } from "./testing.ts";

const device = (await requestGpu()).device;

/** Cache rows per slot, and slots, of the multi-slot cases. */
const CONTEXT = 90;
const SLOTS = 3;

/** Where each of a case's tokens is: one sequence, a Step slot, or per-token rows. */
type Mode =
  | { kind: "none"; pos0: number; T: number }
  | { kind: "step"; slot: number; pos0: number; T: number }
  | { kind: "rows"; rows: [number, number][] };

/** Each token's (cache row, position) for a mode. */
function placements(mode: Mode): { row: number; pos: number }[] {
  if (mode.kind === "rows") return mode.rows.map(([s, p]) => ({ row: s * CONTEXT + p, pos: p }));
  const first = mode.kind === "step" ? mode.slot * CONTEXT : 0;
  return Array.from({ length: mode.T }, (_, t) => ({
    row: first + mode.pos0 + t,
    pos: mode.pos0 + t,
  }));
}

function layout(mode: Mode): SlotLayout | undefined {
  return mode.kind === "none" ? undefined : { context: CONTEXT, source: mode.kind };
}

/** The Step uniform {T, pos0, slot} and the rows binding of a mode. */
function stepAndRows(mode: Mode): Record<string, GPUBuffer> {
  const T = mode.kind === "rows" ? mode.rows.length : mode.T;
  const pos0 = mode.kind === "rows" ? 0 : mode.pos0;
  const slot = mode.kind === "step" ? mode.slot : 0;
  const step = device.createBuffer({
    size: STEP_BYTES,
    usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST,
  });
  device.queue.writeBuffer(step, 0, new Uint32Array([T, pos0, slot, 0]));
  const bufs: Record<string, GPUBuffer> = { step };
  if (mode.kind === "rows") {
    const rows = new Uint32Array(mode.rows.flat());
    bufs.rows = storageBuffer(device, rows.byteLength, "rows", rows);
  }
  return bufs;
}

function fill(r: () => number, n: number, scale: number, center = 0): Float32Array {
  return Float32Array.from({ length: n }, () => center + (r() * 2 - 1) * scale);
}

async function run(
  src: KernelSource,
  bufs: Record<string, GPUBuffer>,
  groups: [number, number, number],
  read: { buf: GPUBuffer; n: number }[],
): Promise<Float32Array[]> {
  dispatchOnce(device, src, bufs, groups);
  const out = [];
  for (const { buf, n } of read) out.push(await readF32(device, buf, n));
  for (const b of Object.values(bufs)) b.destroy();
  return out;
}

function maxAbs(got: Float32Array, want: ArrayLike<number>): number {
  let e = 0;
  for (let i = 0; i < want.length; i++) {
    const d = Math.abs(got[i] - want[i]);
    e = Number.isNaN(d) ? Infinity : Math.max(e, d);
  }
  return e;
}

const GEOMETRIES: (MlaKey & { pairing: "half" | "interleaved" })[] = [
  // The hf-oracle fixtures' shape (R 16 < 64 lanes), half-split RoPE.
  {
    numHeads: 4,
    kvLoraRank: 16,
    qkNopeHeadDim: 12,
    qkRopeHeadDim: 8,
    vHeadDim: 16,
    pairing: "half",
  },
  // R 80: two values per lane, the second round partly idle; interleaved RoPE, odd heads.
  {
    numHeads: 3,
    kvLoraRank: 80,
    qkNopeHeadDim: 8,
    qkRopeHeadDim: 12,
    vHeadDim: 8,
    pairing: "interleaved",
  },
];

const MODES: [string, Mode][] = [
  ["one sequence", { kind: "none", pos0: 3, T: 5 }],
  ["Step slot 2", { kind: "step", slot: 2, pos0: 70, T: 4 }],
  ["rows", { kind: "rows", rows: [[1, 40], [0, 0], [2, 89], [1, 65]] }],
];

// Store: one RMSNorm over R values and a rotation per pair, f32 (values |x| ≤ ~3): ≤ 1e-5 abs.
const STORE_TOL = 1e-5;

for (const g of GEOMETRIES) {
  for (const [name, mode] of MODES) {
    Deno.test(`MLA store (R ${g.kvLoraRank}, ${g.pairing}, ${name}) matches float64; other rows untouched`, async () => {
      const { numHeads: nh, kvLoraRank: R, qkNopeHeadDim: dn, qkRopeHeadDim: dr } = g;
      const W = R + dr, qk = dn + dr, half = dr / 2, eps = 1e-6;
      const r = rng(R * 7 + nh);
      const place = placements(mode);
      const T = place.length;
      const kva = fill(r, T * W, 1.5);
      const norm = fill(r, R, 0.2, 1);
      const q = fill(r, T * nh * qk, 1);
      const cache = fill(r, SLOTS * CONTEXT * W, 1);
      const rope = ropeTable(dr, 10000, CONTEXT);
      const src = mlaStoreSource({ ...g, eps, slots: layout(mode) });
      const qBuf = storageBuffer(device, q.byteLength, "q", q);
      const cacheBuf = storageBuffer(device, cache.byteLength, "cache", cache);
      const [gotQ, gotCache] = await run(
        src,
        {
          ...stepAndRows(mode),
          kva: storageBuffer(device, kva.byteLength, "kva", kva),
          latentNorm: storageBuffer(device, norm.byteLength, "norm", norm),
          rope: storageBuffer(device, rope.byteLength, "rope", rope),
          q: qBuf,
          cache: cacheBuf,
        },
        [T, 1, 1],
        [{ buf: qBuf, n: q.length }, { buf: cacheBuf, n: cache.length }],
      );

      // float64: the rows the tokens own get [norm(latent) · w | RoPE(k_rope)]; q's RoPE parts
      // rotate in place; every other float keeps its value.
      const wantCache = Float64Array.from(cache), wantQ = Float64Array.from(q);
      const pair = (i: number) => g.pairing === "half" ? [i, i + half] : [2 * i, 2 * i + 1];
      const rotate = (
        x: Float64Array | Float32Array,
        at: number,
        to: Float64Array,
        pos: number,
      ) => {
        for (let i = 0; i < half; i++) {
          const [d1, d2] = pair(i);
          const c = rope[(pos * half + i) * 2], s = rope[(pos * half + i) * 2 + 1];
          const x1 = x[at + d1], x2 = x[at + d2];
          to[at + d1] = x1 * c - x2 * s;
          to[at + d2] = x2 * c + x1 * s;
        }
      };
      place.forEach(({ row, pos }, t) => {
        let ss = 0;
        for (let j = 0; j < R; j++) ss += kva[t * W + j] ** 2;
        const inv = 1 / Math.sqrt(ss / R + eps);
        for (let j = 0; j < R; j++) wantCache[row * W + j] = kva[t * W + j] * inv * norm[j];
        const k = new Float64Array(W);
        for (let i = 0; i < dr; i++) k[R + i] = kva[t * W + R + i];
        rotate(k, R, k, pos);
        for (let i = 0; i < dr; i++) wantCache[row * W + R + i] = k[R + i];
        for (let h = 0; h < nh; h++) rotate(q, t * nh * qk + h * qk + dn, wantQ, pos);
      });
      const errCache = maxAbs(gotCache, wantCache), errQ = maxAbs(gotQ, wantQ);
      console.log(`R ${R} ${name}: cache ${errCache.toExponential(2)}, q ${errQ.toExponential(2)}`);
      assert.ok(errCache <= STORE_TOL, `cache: max abs err ${errCache}`);
      assert.ok(errQ <= STORE_TOL, `q: max abs err ${errQ}`);
      // Rows no token owns are bit-identical (no write strays into another slot).
      const owned = new Set(place.map((p) => p.row));
      for (let row = 0; row < SLOTS * CONTEXT; row++) {
        if (owned.has(row)) continue;
        for (let j = 0; j < W; j++) {
          if (gotCache[row * W + j] !== cache[row * W + j]) {
            assert.fail(`row ${row} col ${j} changed`);
          }
        }
      }
    });
  }
}

// Attention: o_lat is a convex combination of latent rows in [-1, 1], f32 accumulation over
// ≤ 90 keys in 64-key tiles: ≤ 2e-5 abs (measured errors are printed).
const ATTENTION_TOL = 2e-5;

for (const g of GEOMETRIES) {
  for (const [name, mode] of MODES) {
    Deno.test(`MLA latent attention (R ${g.kvLoraRank}, ${name}) matches float64 over its slot's rows`, async () => {
      const { numHeads: nh, kvLoraRank: R, qkNopeHeadDim: dn, qkRopeHeadDim: dr } = g;
      const W = R + dr, qk = dn + dr, scale = 0.35;
      const r = rng(R * 13 + nh + 1);
      const place = placements(mode);
      const T = place.length;
      // Queries large enough that the softmax is far from uniform (a wrong row shows up).
      const qLat = fill(r, T * nh * R, 1);
      const q = fill(r, T * nh * qk, 2);
      const cache = fill(r, SLOTS * CONTEXT * W, 1);
      const n = T * nh * R;
      const oLat = storageBuffer(device, n * 4, "oLat", new Float32Array(n).fill(NaN));
      const src = mlaAttentionSource({ ...g, scale, slots: layout(mode) });
      const [got] = await run(
        src,
        {
          ...stepAndRows(mode),
          qLat: storageBuffer(device, qLat.byteLength, "qLat", qLat),
          q: storageBuffer(device, q.byteLength, "q", q),
          cache: storageBuffer(device, cache.byteLength, "cache", cache),
          oLat,
        },
        [nh, T, 1],
        [{ buf: oLat, n }],
      );

      const want = new Float64Array(n);
      place.forEach(({ row, pos }, t) => {
        const first = row - pos; // the slot's first row
        for (let h = 0; h < nh; h++) {
          const scores: number[] = [];
          for (let p = 0; p <= pos; p++) {
            let d = 0;
            for (let j = 0; j < R; j++) {
              d += qLat[(t * nh + h) * R + j] * cache[(first + p) * W + j];
            }
            for (let i = 0; i < dr; i++) {
              d += q[t * nh * qk + h * qk + dn + i] * cache[(first + p) * W + R + i];
            }
            scores.push(scale * d);
          }
          const m = Math.max(...scores);
          const e = scores.map((s) => Math.exp(s - m));
          const z = e.reduce((a, b) => a + b, 0);
          for (let j = 0; j < R; j++) {
            let o = 0;
            for (let p = 0; p <= pos; p++) o += e[p] * cache[(first + p) * W + j];
            want[(t * nh + h) * R + j] = o / z;
          }
        }
      });
      const err = maxAbs(got, want);
      console.log(`R ${R} ${name}: max abs err ${err.toExponential(2)}`);
      assert.ok(err <= ATTENTION_TOL, `max abs err ${err}`);
    });
  }
}
