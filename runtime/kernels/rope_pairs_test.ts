/**
 * The RoPE/KV-store prologue with partial rotary widths (GLM: the first rotaryDim dims of each
 * head, the rest pass through) and interleaved pairs (2i, 2i + 1: ERNIE, DeepSeek) against a
 * float64 host rotation on random data (abs ≤ 1e-6).
 */
import assert from "node:assert/strict";
import { mulberry32 as rng } from "../../schemas/prng.ts";
import { requestGpu } from "../device.ts";
import { ropeStoreSource, ropeStoreWidth, ropeTable } from "./attention.ts";
import { storageBuffer } from "./kernel.ts";
import { elementGroups } from "./ops.ts";
import { dispatchOnce, readF32, stepBuffer } from "./testing.ts";

const device = (await requestGpu()).device;

/** Rotates one head of x (float64 host): pairs by `pairing` over the first `rot` dims. */
function rotateHead(
  x: ArrayLike<number>,
  at: number,
  hd: number,
  rot: number,
  pairing: "half" | "interleaved",
  pos: number,
  theta: number,
): number[] {
  const out = Array.from({ length: hd }, (_, d) => x[at + d]);
  for (let i = 0; i < rot / 2; i++) {
    const angle = pos * Math.fround(1 / Math.fround(theta ** Math.fround(2 * i / rot)));
    const [a, b] = pairing === "half" ? [i, i + rot / 2] : [2 * i, 2 * i + 1];
    const x1 = x[at + a], x2 = x[at + b];
    out[a] = x1 * Math.cos(angle) - x2 * Math.sin(angle);
    out[b] = x2 * Math.cos(angle) + x1 * Math.sin(angle);
  }
  return out;
}

for (
  const [rot, pairing] of [[4, "half"], [8, "interleaved"], [4, "interleaved"]] as const
) {
  Deno.test(`rope store: ${pairing} pairs over ${rot} of 8 dims (abs ≤ 1e-6)`, async () => {
    const rand = rng(rot * 7 + pairing.length);
    const nh = 4, nkv = 2, hd = 8, T = 3, pos0 = 2, positions = 6, theta = 500;
    const randoms = (n: number) => Float32Array.from({ length: n }, () => 2 * rand() - 1);
    const q = randoms(T * nh * hd), k = randoms(T * nkv * hd), v = randoms(T * nkv * hd);
    const buf = (a: Float32Array) => storageBuffer(device, a.byteLength, "b", a);
    const bufs = {
      step: stepBuffer(device, T, pos0),
      rope: buf(ropeTable(rot, theta, positions)),
      kCache: buf(new Float32Array(positions * nkv * hd)),
      vCache: buf(new Float32Array(positions * nkv * hd)),
      q: buf(q),
      k: buf(k),
      v: buf(v),
    };
    const shape = { numHeads: nh, numKvHeads: nkv, headDim: hd };
    dispatchOnce(
      device,
      ropeStoreSource({ ...shape, packed: false, clip: null, rotaryDim: rot, pairing }),
      bufs,
      elementGroups(ropeStoreWidth(shape), T),
    );
    const qWant: number[] = [], kWant: number[] = [];
    for (let t = 0; t < T; t++) {
      for (let h = 0; h < nh; h++) {
        qWant.push(...rotateHead(q, (t * nh + h) * hd, hd, rot, pairing, pos0 + t, theta));
      }
      for (let h = 0; h < nkv; h++) {
        kWant.push(...rotateHead(k, (t * nkv + h) * hd, hd, rot, pairing, pos0 + t, theta));
      }
    }
    const qGot = await readF32(device, bufs.q, T * nh * hd);
    const kAll = await readF32(device, bufs.kCache, positions * nkv * hd);
    const vAll = await readF32(device, bufs.vCache, positions * nkv * hd);
    const kGot = kAll.subarray(pos0 * nkv * hd, (pos0 + T) * nkv * hd);
    const vGot = vAll.subarray(pos0 * nkv * hd, (pos0 + T) * nkv * hd);
    const err = (got: ArrayLike<number>, want: ArrayLike<number>) => {
      let e = 0;
      for (let i = 0; i < want.length; i++) e = Math.max(e, Math.abs(got[i] - want[i]));
      return e;
    };
    assert.ok(err(qGot, qWant) <= 1e-6, `q ${err(qGot, qWant)}`);
    assert.ok(err(kGot, kWant) <= 1e-6, `k ${err(kGot, kWant)}`);
    assert.equal(err(vGot, v), 0, "v copied");
  });
}
