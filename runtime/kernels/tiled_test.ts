/**
 * Tiled matmul (dense, fused gate/up + SwiGLU, routed-token lists) and the GPU routing lists,
 * against float64 host computations on random data.
 */
import { dispatchOnce, randomMatrix, readF32, stepBuffer } from "./testing.ts";
import { mulberry32 as rng } from "../../schemas/prng.ts";
import assert from "node:assert/strict";
import { requestGpu } from "../device.ts";
import { type KernelSource, readBuffer, storageBuffer } from "./kernel.ts";
import { uploadWeightSet, weightBuffers, type WeightFormat } from "./weights.ts";
import { tiledGroups, type TiledKey, tiledMatmulSource } from "./tiled.ts";
import { routeListsSource } from "./moe.ts";

const device = (await requestGpu()).device;

async function run(
  src: KernelSource,
  bufs: Record<string, GPUBuffer>,
  groups: [number, number, number],
): Promise<void> {
  dispatchOnce(device, src, bufs, groups);
  await device.queue.onSubmittedWorkDone();
}

function relErr(gpu: ArrayLike<number>, ref: ArrayLike<number>): number {
  let num = 0, den = 0;
  for (let i = 0; i < ref.length; i++) {
    num = Math.max(num, Math.abs(gpu[i] - ref[i]));
    den = Math.max(den, Math.abs(ref[i]));
  }
  return num / den;
}

const silu = (a: number) => a / (1 + Math.exp(-a));
const ROWS = 37, COLS = 77; // ragged: not multiples of the row tile, 2, 4 or 32

const FORMATS: WeightFormat[] = [
  { kind: "f32" },
  { kind: "f16" },
  { kind: "bf16" },
  { kind: "q", bits: 2, groupSize: 32, scaleType: "f16" },
  { kind: "q", bits: 3, groupSize: COLS, scaleType: "f32" },
  { kind: "q", bits: 4, groupSize: 64, scaleType: "f16" },
  { kind: "q", bits: 8, groupSize: 32, scaleType: "f32" },
  { kind: "q", bits: 4, groupSize: 32, scaleType: "e8m0" }, // MXFP4
];
const name = (f: WeightFormat) =>
  f.kind === "q" ? `q${f.bits} g${f.groupSize} ${f.scaleType}` : f.kind;

for (const format of FORMATS) {
  const tol = format.kind === "f32" ? 1e-5 : 1e-4;
  Deno.test(`tiled dense ${name(format)}: scale + bias + residual, and fused gate/up SwiGLU, vs f64 (rel ≤ ${tol})`, async () => {
    const rand = rng(11);
    const T = 7;
    const a = randomMatrix(format, ROWS, COLS, rand);
    const b = randomMatrix(format, ROWS, COLS, rand);
    const x = Float32Array.from({ length: T * COLS }, () => rand() * 2 - 1);
    const xb = storageBuffer(device, x.byteLength, "x", x);
    const dot = (m: Float64Array, t: number, r: number) => {
      let s = 0;
      for (let c = 0; c < COLS; c++) s += m[r * COLS + c] * x[t * COLS + c];
      return s;
    };
    for (const [rowTile, tokenTile, scale] of [[4, 4, 1], [8, 1, 1.625]]) {
      // Plain: y = scale · W x + bias + y0.
      const set = uploadWeightSet(device, format, ROWS, COLS, [a.host]);
      const bias = Float32Array.from({ length: ROWS }, () => rand() - 0.5);
      const y0 = Float32Array.from({ length: T * ROWS }, () => rand() - 0.5);
      const key: TiledKey = {
        format,
        rows: ROWS,
        cols: COLS,
        rowTile,
        tokenTile,
        mode: "dense",
        bias: true,
        accumulate: true,
        scale,
      };
      const bufs: Record<string, GPUBuffer> = {
        step: stepBuffer(device, T),
        x: xb,
        y: storageBuffer(device, y0.byteLength, "y", y0),
        bias: storageBuffer(device, bias.byteLength, "bias", bias),
        ...weightBuffers(set),
      };
      await run(tiledMatmulSource(key), bufs, tiledGroups(key, T));
      const ref = new Float64Array(T * ROWS);
      for (let t = 0; t < T; t++) {
        for (let r = 0; r < ROWS; r++) {
          ref[t * ROWS + r] = scale * dot(a.values, t, r) + bias[r] + y0[t * ROWS + r];
        }
      }
      const err = relErr(await readF32(device, bufs.y, T * ROWS), ref);
      assert.ok(err <= tol, `plain r${rowTile}t${tokenTile}: rel err ${err}`);

      // Fused: y = silu(gate x) · (up x), weights stacked [gate; up].
      const gu = uploadWeightSet(device, format, 2 * ROWS, COLS, [[a.host, b.host]]);
      const gkey: TiledKey = { ...key, bias: false, accumulate: false, scale: 1, gateUp: true };
      const gbufs: Record<string, GPUBuffer> = {
        step: bufs.step,
        x: xb,
        y: storageBuffer(device, T * ROWS * 4, "y"),
        ...weightBuffers(gu),
      };
      await run(tiledMatmulSource(gkey), gbufs, tiledGroups(gkey, T));
      const gref = new Float64Array(T * ROWS);
      for (let t = 0; t < T; t++) {
        for (let r = 0; r < ROWS; r++) {
          gref[t * ROWS + r] = silu(dot(a.values, t, r)) * dot(b.values, t, r);
        }
      }
      const gerr = relErr(await readF32(device, gbufs.y, T * ROWS), gref);
      assert.ok(gerr <= tol, `gate/up r${rowTile}t${tokenTile}: rel err ${gerr}`);
    }
  });
}

Deno.test("route lists: top-k, weights and per-expert (token, slot) lists match the host", async () => {
  const rand = rng(3);
  // T > 64: threads route several tokens each (regression: stale per-iteration state).
  const E = 6, K = 2, cap = 72, T = 70;
  const logits = Float32Array.from({ length: T * E }, () => rand() * 4 - 2);
  const bufs = {
    step: stepBuffer(device, T),
    routerLogits: storageBuffer(device, logits.byteLength, "routerLogits", logits),
    expertIds: storageBuffer(device, T * K * 4, "expertIds"),
    expertWeights: storageBuffer(device, T * K * 4, "expertWeights"),
    routes: storageBuffer(device, (E + E * cap) * 4, "routes"),
  };
  const key = { numExperts: E, topK: K, normTopK: true, scale: 1 };
  await run(routeListsSource(key, cap), bufs, [1, 1, 1]);
  const ids = new Uint32Array((await readBuffer(device, bufs.expertIds, T * K * 4)).buffer);
  const wts = await readF32(device, bufs.expertWeights, T * K);
  const route = new Uint32Array((await readBuffer(device, bufs.routes, (E + E * cap) * 4)).buffer);
  const lists: number[][] = Array.from({ length: E }, () => []);
  for (let t = 0; t < T; t++) {
    const row = Array.from(logits.subarray(t * E, (t + 1) * E));
    const order = row.map((v, e) => [v, e]).sort((p, q) => q[0] - p[0] || p[1] - q[1]);
    const m = Math.max(...row);
    const z = row.reduce((s, v) => s + Math.exp(v - m), 0);
    const top = order.slice(0, K).map(([v, e]) => ({ e, p: Math.exp(v - m) / z }));
    const sum = top.reduce((s, q) => s + q.p, 0);
    top.forEach(({ e, p }, k) => {
      assert.equal(ids[t * K + k], e, `token ${t} slot ${k}`);
      assert.ok(Math.abs(wts[t * K + k] - p / sum) <= 1e-6, `weight ${t}/${k}`);
      lists[e].push(t * K + k);
    });
  }
  for (let e = 0; e < E; e++) {
    assert.equal(route[e], lists[e].length, `count of expert ${e}`);
    assert.deepEqual(Array.from(route.subarray(E + e * cap, E + e * cap + route[e])), lists[e]);
  }
});

/** One list-mode case: its experts' matrices and routed rows. */
interface ListCase {
  format: WeightFormat;
  xRows: "token" | "slot";
  gateUp: boolean;
  tokenTile: number;
  rowTile: number;
  K: number;
  E: number;
  cap: number;
  T: number;
  setExperts: number[];
  mats: { g: ReturnType<typeof randomMatrix>; u: ReturnType<typeof randomMatrix> }[];
}

/**
 * Runs a list-mode tiled matmul on random activations and checks it against float64: row `sr`
 * of y (a (token, slot) row) is expert owner[sr]'s product when that expert is in the set, and
 * untouched otherwise (rel ≤ 1e-4).
 */
async function checkListMatmul(
  c: ListCase,
  owner: number[],
  route: Uint32Array,
  rand: () => number,
): Promise<void> {
  const { format, xRows, gateUp, tokenTile, rowTile, K, T, setExperts, mats } = c;
  const xn = xRows === "slot" ? T * K : T;
  const x = Float32Array.from({ length: xn * COLS }, () => rand() * 2 - 1);
  const set = uploadWeightSet(
    device,
    format,
    gateUp ? 2 * ROWS : ROWS,
    COLS,
    mats.map((m) => gateUp ? [m.g.host, m.u.host] : m.g.host),
  );
  const key: TiledKey = {
    format,
    rows: ROWS,
    cols: COLS,
    rowTile,
    tokenTile,
    mode: "list",
    xRows,
    topK: K,
    numExperts: c.E,
    capacity: c.cap,
    gateUp,
  };
  const SENT = 777;
  const y0 = new Float32Array(T * K * ROWS).fill(SENT);
  const bufs: Record<string, GPUBuffer> = {
    x: storageBuffer(device, x.byteLength, "x", x),
    y: storageBuffer(device, y0.byteLength, "y", y0),
    routes: storageBuffer(device, route.byteLength, "routes", route),
    setExperts: storageBuffer(
      device,
      4 * setExperts.length,
      "setExperts",
      new Uint32Array(setExperts),
    ),
    ...weightBuffers(set),
  };
  await run(tiledMatmulSource(key), bufs, tiledGroups(key, c.cap, setExperts.length));
  const got = await readF32(device, bufs.y, T * K * ROWS);
  const ref = new Float64Array(T * K * ROWS).fill(SENT);
  owner.forEach((e, sr) => {
    const m = setExperts.indexOf(e);
    if (m < 0) return;
    const xr = xRows === "slot" ? sr : Math.floor(sr / K);
    for (let r = 0; r < ROWS; r++) {
      let g = 0, u = 0;
      for (let col = 0; col < COLS; col++) {
        g += mats[m].g.values[r * COLS + col] * x[xr * COLS + col];
        u += mats[m].u.values[r * COLS + col] * x[xr * COLS + col];
      }
      ref[sr * ROWS + r] = gateUp ? silu(g) * u : g;
    }
  });
  const label = `${xRows} r${rowTile}t${tokenTile}`;
  for (let i = 0; i < ref.length; i++) {
    if (ref[i] === SENT) {
      assert.equal(got[i], SENT, `${label}: row ${i} of an unrouted slot written`);
    }
  }
  const err = relErr(
    got.map((v, i) => ref[i] === SENT ? 0 : v),
    ref.map((v) => v === SENT ? 0 : v),
  );
  assert.ok(err <= 1e-4, `${label}: rel err ${err}`);
  Object.values(bufs).forEach((b) => b.destroy());
}

for (const format of [FORMATS[1], FORMATS[3], FORMATS[4], FORMATS.at(-1)!]) {
  Deno.test(`tiled list ${name(format)}: experts touch only their routed rows (gate/up and down)`, async () => {
    const rand = rng(21);
    const E = 5, K = 2, cap = 8, T = 6;
    const setExperts = [4, 1, 3]; // this set's experts; 0 and 2 live elsewhere
    const mats = setExperts.map(() => ({
      g: randomMatrix(format, ROWS, COLS, rand),
      u: randomMatrix(format, ROWS, COLS, rand),
    }));
    // Random top-2 choices, then the lists the route kernel would build.
    const ids: number[] = [];
    for (let t = 0; t < T; t++) {
      const pool = [0, 1, 2, 3, 4];
      for (let k = 0; k < K; k++) ids.push(pool.splice(Math.floor(rand() * pool.length), 1)[0]);
    }
    const route = new Uint32Array(E + E * cap);
    ids.forEach((e, r) => route[E + e * cap + route[e]++] = r);
    // Row/token tiles of the one-sequence plans and, for packed weights, of the batched decode
    // plans (16 rows × 2 tokens).
    const tiles: ["token" | "slot", boolean, number, number][] = [
      ["token", true, 4, 4],
      ["slot", false, 1, 4],
    ];
    if (format.kind === "q") tiles.push(["token", true, 2, 16], ["slot", false, 2, 16]);
    for (const [xRows, gateUp, tokenTile, rowTile] of tiles) {
      await checkListMatmul(
        { format, xRows, gateUp, tokenTile, rowTile, K, E, cap, T, setExperts, mats },
        ids,
        route,
        rand,
      );
    }
  });
}

// Every live count a tile can see: expert e of the set gets e routed rows, e = 0 .. TT + 1
// (empty, single-token passes, a whole-tile pass with dead lanes, a full tile, a second tile).
for (const format of [FORMATS[1], FORMATS[5], FORMATS.at(-1)!]) {
  Deno.test(`tiled list ${name(format)}: 0 .. TT + 1 routed rows per expert, every pass kind, vs f64 (rel ≤ 1e-4)`, async () => {
    const rand = rng(31);
    const K = 2;
    const configs: ["token" | "slot", boolean, number, number][] = [
      ["token", true, 1, 8],
      ["slot", false, 1, 8],
      ["token", true, 2, 8],
      ["token", true, 4, 8],
      ["slot", false, 4, 16],
    ];
    for (const [xRows, gateUp, tokenTile, rowTile] of configs) {
      const E = tokenTile + 2, cap = tokenTile + 1;
      const counts = Array.from({ length: E }, (_, e) => e);
      const total = counts.reduce((a, b) => a + b, 0);
      const T = Math.ceil(total / K);
      const setExperts = Array.from({ length: E }, (_, e) => E - 1 - e); // set order ≠ ids
      const mats = setExperts.map(() => ({
        g: randomMatrix(format, ROWS, COLS, rand),
        u: randomMatrix(format, ROWS, COLS, rand),
      }));
      // Expert e's entries are the next counts[e] (token, slot) rows, in a shuffled order.
      const order = Array.from({ length: T * K }, (_, i) => i);
      for (let i = order.length - 1; i > 0; i--) {
        const j = Math.floor(rand() * (i + 1));
        [order[i], order[j]] = [order[j], order[i]];
      }
      const route = new Uint32Array(E + E * cap);
      const owner = new Int32Array(T * K).fill(-1);
      let next = 0;
      for (let e = 0; e < E; e++) {
        route[e] = counts[e];
        for (let j = 0; j < counts[e]; j++) {
          const r = order[next++];
          route[E + e * cap + j] = r;
          owner[r] = e;
        }
      }
      await checkListMatmul(
        { format, xRows, gateUp, tokenTile, rowTile, K, E, cap, T, setExperts, mats },
        Array.from(owner),
        route,
        rand,
      );
    }
  });
}
