/**
 * Top-1 capacity routing, the top-1 combine and ReLU against float64 host computations on random
 * non-zero data: accepted tokens, refused tokens (only by their arg-max expert, in position
 * order), tie-breaking to the lower expert, weights within 1e-6 of the float64 softmax
 * probability, the tiled style's lists exact; combine within 1e-6, ReLU exact.
 */
import assert from "node:assert/strict";
import { mulberry32 } from "../../schemas/prng.ts";
import { requestGpu } from "../device.ts";
import { capacityRouteSource, reluSource, top1CombineSource } from "./capacity.ts";
import { readBuffer, storageBuffer } from "./kernel.ts";
import { elementGroups } from "./ops.ts";
import { dispatchOnce, readF32, stepBuffer } from "./testing.ts";

const device = (await requestGpu()).device;

/** float64 routing as compiler/reference/capacity.ts: [expert or −1, weight] per token. */
function reference(logits: Float32Array, T: number, E: number, capacity: number) {
  const taken = new Array(E).fill(0);
  return Array.from({ length: T }, (_, t) => {
    const row = Array.from(logits.subarray(t * E, (t + 1) * E));
    const m = Math.max(...row);
    const p = row.map((x) => Math.exp(x - m));
    const z = p.reduce((a, b) => a + b, 0);
    let best = 0;
    for (let e = 1; e < E; e++) if (p[e] > p[best]) best = e;
    taken[best]++;
    return taken[best] <= capacity ? [best, p[best] / z] : [-1, 0];
  });
}

for (const [T, E, capacity] of [[13, 4, 3], [70, 8, 9], [5, 3, 16]]) {
  Deno.test(`capacity routing: ${T} tokens, ${E} experts, capacity ${capacity}`, async () => {
    const rand = mulberry32(T * 7 + E);
    const logits = Float32Array.from({ length: T * E }, () => rand() * 4 - 2);
    // Ties: token 1 has equal best logits at experts 2 and 1 (the lower index wins).
    logits[E + 1] = logits[E + 2] = 3;
    const listCapacity = T + 3;
    const ids = storageBuffer(device, T * 4, "ids");
    const weights = storageBuffer(device, T * 4, "weights");
    const routes = storageBuffer(device, (E + E * listCapacity) * 4, "routes");
    dispatchOnce(device, capacityRouteSource({ numExperts: E, capacity, listCapacity }), {
      step: stepBuffer(device, T),
      routerLogits: storageBuffer(device, logits.byteLength, "logits", logits),
      expertIds: ids,
      expertWeights: weights,
      routes,
    }, [1, 1, 1]);
    const gotIds = new Uint32Array((await readBuffer(device, ids, T * 4)).buffer);
    const gotW = await readF32(device, weights, T);
    const gotRoutes = new Uint32Array((await readBuffer(device, routes, routes.size)).buffer);
    const want = reference(logits, T, E, capacity);
    assert.equal(want[1][0], 1, "the tie goes to expert 1");
    const refused = want.filter(([e]) => e < 0).length;
    if (T > E * capacity) assert.ok(refused > 0, "the case refuses some tokens");
    want.forEach(([e, w], t) => {
      assert.equal(gotIds[t], e < 0 ? E : e, `token ${t}`);
      assert.ok(Math.abs(gotW[t] - w) < 1e-6, `token ${t} weight ${gotW[t]} vs ${w}`);
    });
    for (let e = 0; e < E; e++) {
      const mine = want.flatMap(([x], t) => x === e ? [t] : []);
      assert.equal(gotRoutes[e], mine.length, `expert ${e} count`);
      assert.deepEqual(
        Array.from(gotRoutes.subarray(E + e * listCapacity, E + e * listCapacity + mine.length)),
        mine,
        `expert ${e} list`,
      );
    }
  });
}

Deno.test("top-1 combine adds weight · expert output of accepted tokens only; ReLU", async () => {
  const rand = mulberry32(5);
  const T = 5, H = 70, E = 4, rs = 0.5;
  const x = Float32Array.from({ length: T * H }, () => rand() * 2 - 1);
  const out = Float32Array.from({ length: T * H }, () => rand() * 2 - 1);
  const ids = new Uint32Array([0, E, 3, 1, E]);
  const w = Float32Array.from({ length: T }, (_, t) => ids[t] < E ? rand() : 0);
  const xb = storageBuffer(device, x.byteLength, "x", x);
  dispatchOnce(device, top1CombineSource(H, E, rs), {
    step: stepBuffer(device, T),
    x: xb,
    expertOut: storageBuffer(device, out.byteLength, "out", out),
    expertIds: storageBuffer(device, ids.byteLength, "ids", ids),
    expertWeights: storageBuffer(device, w.byteLength, "w", w),
  }, elementGroups(H, T));
  const got = await readF32(device, xb, T * H);
  let err = 0;
  for (let t = 0; t < T; t++) {
    for (let c = 0; c < H; c++) {
      const want = x[t * H + c] + (ids[t] < E ? rs * w[t] * out[t * H + c] : 0);
      err = Math.max(err, Math.abs(got[t * H + c] - want));
    }
  }
  assert.ok(err < 1e-6, `combine max error ${err}`);

  const r = storageBuffer(device, out.byteLength, "relu", out);
  dispatchOnce(device, reluSource(H), { step: stepBuffer(device, T), x: r }, elementGroups(H, T));
  assert.deepEqual(await readF32(device, r, T * H), out.map((v) => Math.max(v, 0)));
});
