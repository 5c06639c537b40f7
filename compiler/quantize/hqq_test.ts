import assert from "node:assert/strict";
import { UsageError } from "../../schemas/errors.ts";
import { roundF16 } from "../../schemas/half.ts";
import { dequantize, groupsPerRow, type QuantBits } from "../../schemas/packing.ts";
import { pack, reconstruct, relativeError } from "./common.ts";
import { hqq, shrinkLp } from "./hqq.ts";
import { rtnAsymmetric } from "./rtn.ts";
import { assertNearest, heavyTailedMatrix } from "./test_util.ts";

const BITS: QuantBits[] = [2, 3, 4, 8];

Deno.test("shrinkLp: zero exactly below the cutoff β^(-1/(2-p)), shrinks, keeps sign", () => {
  for (const p of [0.5, 0.7, 1]) {
    for (const beta of [1, 10, 37.5]) {
      const cutoff = beta ** (-1 / (2 - p));
      for (const x of [cutoff * 0.999, cutoff * 1.001, cutoff * 3, 5, 1e-4]) {
        for (const v of [x, -x]) {
          const y = shrinkLp(v, beta, p);
          const want = Math.abs(v) - Math.abs(v) ** (p - 1) / beta; // float64 definition
          if (Math.abs(v) <= cutoff) assert.equal(y, 0);
          else {
            assert.ok(want > 0 && Math.sign(y) === Math.sign(v));
            assert.ok(Math.abs(Math.abs(y) - want) <= 1e-15 * Math.abs(v));
          }
        }
      }
    }
  }
});

/** Plain float64 HQQ on one group (arrays, no shortcuts), returning the chosen zero. */
function hqqGroupReference(
  w: number[],
  scale: number,
  zero0: number,
  qmax: number,
  p: number,
  beta0: number,
  kappa: number,
  iters: number,
): number {
  const codes = (z: number) =>
    w.map((x) => Math.min(qmax, Math.max(0, Math.round(x * (1 / scale) + z))));
  let z = zero0;
  let beta = beta0;
  let best = z;
  let bestErr = Infinity;
  for (let k = 0; k < iters; k++) {
    const q = codes(z);
    const e = w.map((x, i) => x - (q[i] - z) * scale);
    const err = e.reduce((a, v) => a + v * v, 0);
    if (err >= bestErr) break;
    bestErr = err;
    best = z;
    const we = e.map((v) =>
      Math.sign(v) * Math.max(0, Math.abs(v) - Math.abs(v) ** (p - 1) / beta)
    );
    const target = q.map((qi, i) => qi - (w[i] - we[i]) / scale);
    z = roundF16(target.reduce((a, v) => a + v, 0) / w.length);
    beta *= kappa;
  }
  return best;
}

Deno.test("hqq: zeros match a plain float64 reference; codes nearest; never worse than RTN", () => {
  const [rows, cols, gs] = [6, 100, 32];
  // Small beta so the lp shrinkage actually acts on these weights (scale ~1).
  const params = { lpNorm: 0.7, beta: 1, kappa: 1.05, iters: 20 };
  const w = heavyTailedMatrix(rows * cols, 1, 5);
  for (const bits of BITS) {
    const rtn = rtnAsymmetric(w, rows, cols, { bits, groupSize: gs });
    const u = hqq(w, rows, cols, { bits, groupSize: gs, ...params });
    assert.deepEqual(u.scales, rtn.scales);
    assertNearest(w, u);
    const gpr = groupsPerRow(cols, gs);
    let changed = 0;
    for (let r = 0; r < rows; r++) {
      for (let g = 0; g < gpr; g++) {
        const i0 = r * cols + g * gs;
        const i1 = r * cols + Math.min((g + 1) * gs, cols);
        const grp = [...w.subarray(i0, i1)];
        const k = r * gpr + g;
        const want = hqqGroupReference(
          grp,
          rtn.scales[k],
          rtn.zeros[k],
          (1 << bits) - 1,
          params.lpNorm,
          params.beta,
          params.kappa,
          params.iters,
        );
        assert.equal(u.zeros[k], want, `bits ${bits} group ${k}`);
        if (want !== rtn.zeros[k]) changed++;
        // Per-group squared error never exceeds RTN's.
        const a = reconstruct(u).subarray(i0, i1);
        const b = reconstruct(rtn).subarray(i0, i1);
        let ea = 0;
        let eb = 0;
        for (let i = 0; i < grp.length; i++) {
          ea += (grp[i] - a[i]) ** 2;
          eb += (grp[i] - b[i]) ** 2;
        }
        assert.ok(ea <= eb * (1 + 1e-6), `group ${k}: hqq ${ea} > rtn ${eb}`);
      }
    }
    assert.ok(changed > 0, `bits ${bits}: HQQ changed no zero`);
  }
});

Deno.test("hqq: default params beat RTN on heavy-tailed weights; exact pack round trip", () => {
  const [rows, cols] = [16, 257];
  const w = heavyTailedMatrix(rows * cols, 0.02, 9);
  for (const bits of [2, 3] as const) {
    for (const gs of [64, cols]) {
      const eRtn = relativeError(
        w,
        reconstruct(rtnAsymmetric(w, rows, cols, { bits, groupSize: gs })),
      );
      const u = hqq(w, rows, cols, { bits, groupSize: gs });
      const mine = reconstruct(u);
      assert.deepEqual(dequantize(pack(u)), mine);
      const eHqq = relativeError(w, mine);
      assert.ok(eHqq < eRtn, `bits ${bits} gs ${gs}: hqq ${eHqq} >= rtn ${eRtn}`);
    }
  }
  // iters 0 is RTN exactly.
  const u0 = hqq(w, rows, cols, { bits: 3, groupSize: 64, iters: 0 });
  assert.deepEqual(u0, rtnAsymmetric(w, rows, cols, { bits: 3, groupSize: 64 }));
  assert.throws(() => hqq(w, rows, cols, { bits: 3, groupSize: 64, lpNorm: 2 }), UsageError);
});
