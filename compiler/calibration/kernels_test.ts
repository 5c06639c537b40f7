/**
 * The streamed calibration's float32 kernels against the float64 reference, on random non-zero
 * data: the SIMD product A·Bᵀ within 4·k·2⁻²⁴·Σ|a·b| per value (odd shapes exercise the padding),
 * each activation's MLP (with biases) within 1e-5 of the output's largest value, the head block's
 * log-sum-exp within 1e-5 (absolute, in nats) and its target logits within 1e-5; the unpacked
 * quantization equal to `quantizeExpert` bit for bit for every method and width; an expert job's
 * costs within 1e-4 relative of `outputError`, its fork rows equal to the lowest width's outputs,
 * and the same job on a worker thread bit for bit the same; the WebAssembly RTN parameters and
 * the widening with each group's min and max bit for bit their references.
 *
 * @module
 */

import assert from "node:assert/strict";
import type { ActivationSpec } from "../../schemas/model.ts";
import type { QuantBits } from "../../schemas/packing.ts";
import { mulberry32 } from "../../schemas/prng.ts";
import { outputError } from "../expert_error.ts";
import { expertOutputs, type ExpertWeights, quantizeExpert } from "../expert_weights.ts";
import { matmul } from "../reference/math.ts";
import { QuantizePool } from "../parallel/pool.ts";
import type { QuantMethod } from "../quantize/mod.ts";
import { fakeQuantizeExpert, rtnDecoded, rtnGroupParams, rtnParamsAt } from "./fake_quant.ts";
import { decodeInto, type ExpertJob, runExpertJob, runHeadJob } from "./jobs.ts";
import { decodeRaw } from "../checkpoint/raw.ts";
import { headBlockF32, matmulF32, type MlpF32, mlpF32 } from "./kernels.ts";
import {
  bf16At,
  bf16MinmaxInto,
  gemmModuleBytes,
  kernelAlloc,
  kernelF32,
  kernelF64,
  kernelMark,
  kernelRelease,
  minmaxAt,
  rtnFastAt,
} from "./simd.ts";

function random(n: number, rng: () => number, scale = 1): Float32Array {
  // Non-zero values in ±[0.05, 1]·scale.
  return Float32Array.from({ length: n }, () => {
    const v = 0.05 + 0.95 * rng();
    return (rng() < 0.5 ? -v : v) * scale;
  });
}

/** Largest |a − b| over the largest |b|. */
function relMax(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let d = 0, r = 0;
  for (let i = 0; i < b.length; i++) {
    d = Math.max(d, Math.abs(a[i] - b[i]));
    r = Math.max(r, Math.abs(b[i]));
  }
  return d / r;
}

function expert(activation: ActivationSpec, H: number, I: number, rng: () => number, bias = false) {
  const w: ExpertWeights = { activation, hidden: H, inter: I, matrices: {}, biases: {} };
  const inputSide = activation.kind === "relu" ? ["up"] as const : ["gate", "up"] as const;
  for (const name of inputSide) {
    w.matrices[name] = random(I * H, rng, 0.1);
    if (bias) w.biases[name] = random(I, rng, 0.1);
  }
  w.matrices.down = random(H * I, rng, 0.1);
  if (bias) w.biases.down = random(H, rng, 0.1);
  return w;
}

Deno.test("matmulF32: A·Bᵀ within the float32 bound of the float64 product", () => {
  assert.ok(WebAssembly.validate(gemmModuleBytes()));
  const rng = mulberry32(1);
  for (const [n, m, k] of [[1, 1, 1], [3, 5, 7], [2, 4, 4], [9, 13, 130], [32, 64, 256]]) {
    const a = random(n * k, rng), b = random(m * k, rng);
    const got = new Float32Array(n * m);
    matmulF32(got, a, b, n, m, k);
    const want = new Float64Array(n * m);
    matmul(want, Float64Array.from(a), Float64Array.from(b), n, m, k);
    for (let i = 0; i < n; i++) {
      for (let j = 0; j < m; j++) {
        let mag = 0;
        for (let p = 0; p < k; p++) mag += Math.abs(a[i * k + p] * b[j * k + p]);
        const bound = 4 * k * 2 ** -24 * mag;
        const err = Math.abs(got[i * m + j] - want[i * m + j]);
        assert.ok(err <= bound, `[${n}, ${m}, ${k}] (${i}, ${j}): ${err} > ${bound}`);
      }
    }
  }
  assert.throws(() =>
    matmulF32(new Float32Array(1), new Float32Array(1), new Float32Array(2), 1, 1, 2)
  );
});

Deno.test("mlpF32: every activation, with biases, within 1e-5 of the reference", () => {
  const rng = mulberry32(2);
  const acts: ActivationSpec[] = [
    { kind: "swiglu" },
    { kind: "swiglu_clamped", limit: 0.05, alpha: 1.702 },
    { kind: "relu" },
  ];
  for (const activation of acts) {
    for (const bias of [false, true]) {
      const H = 36, I = 20, n = 5;
      const w = expert(activation, H, I, rng, bias);
      const x = random(n * H, rng);
      const got = mlpF32(w as MlpF32, x, n);
      const want = expertOutputs(w, x, n);
      const err = relMax(got, want);
      assert.ok(err > 0 && err < 1e-5, `${activation.kind} bias ${bias}: ${err}`);
    }
  }
  assert.throws(() => mlpF32(expert({ kind: "geglu" }, 8, 4, rng) as MlpF32, random(8, rng), 1));
});

Deno.test("headBlockF32: log-sum-exp and target logits of a vocabulary block", () => {
  const rng = mulberry32(3);
  const k = 5, n = 37, H = 24, a = 100;
  const x = random(k * H, rng), rows = random(n * H, rng), bias = random(n, rng);
  const targets = Int32Array.from([100, 136, 5, 120, 137]);
  const got = headBlockF32(x, k, rows, n, a, bias, targets);
  const logits = new Float64Array(k * n);
  matmul(logits, Float64Array.from(x), Float64Array.from(rows), k, n, H);
  for (let i = 0; i < k; i++) {
    const row = Array.from(logits.subarray(i * n, (i + 1) * n), (v, j) => v + bias[j]);
    const max = Math.max(...row);
    const lse = max + Math.log(row.reduce((s, v) => s + Math.exp(v - max), 0));
    assert.ok(Math.abs(got.max[i] + Math.log(got.sum[i]) - lse) < 1e-5, `row ${i}`);
    const t = targets[i] - a;
    if (t >= 0 && t < n) assert.ok(Math.abs(got.target[i] - row[t]) < 1e-5, `target ${i}`);
    else assert.ok(Number.isNaN(got.target[i]), `target ${i} outside the block`);
  }
});

Deno.test("fakeQuantizeExpert: the values of quantizeExpert, bit for bit", () => {
  const rng = mulberry32(4);
  const w = expert({ kind: "swiglu" }, 96, 40, rng);
  // A constant group and one spanning only positive values exercise minMaxParams' edge cases.
  w.matrices.gate!.fill(0.25, 0, 32);
  for (let i = 32; i < 64; i++) w.matrices.gate![i] = Math.abs(w.matrices.gate![i]);
  const methods: QuantMethod[] = ["rtn", "rtn-sym", "hqq"];
  for (const method of methods) {
    for (const bits of [2, 3, 4, 8] as QuantBits[]) {
      for (const group of [32, 96]) {
        const want = quantizeExpert(w, bits, group, method);
        const got = fakeQuantizeExpert(w, bits, group, method);
        for (const name of ["gate", "up", "down"] as const) {
          assert.deepEqual(got.matrices[name], want.matrices[name], `${method} ${bits} ${name}`);
        }
      }
    }
  }
});

Deno.test("runExpertJob: outputs, costs and fork rows; the same on a worker thread", async () => {
  const rng = mulberry32(5);
  const H = 64, I = 32, n = 9;
  const w = expert({ kind: "swiglu" }, H, I, rng, true);
  const routed = random(n * H, rng);
  // The sample: routed rows 1, 4, 7 (reused outputs), seen 6 times.
  const sampleRows = Int32Array.from([1, 4, 7]);
  const inputs = new Float32Array(3 * H);
  sampleRows.forEach((r, j) => inputs.set(routed.subarray(r * H, (r + 1) * H), j * H));
  const sample = { n: 3, seen: 6, inputs, weights: Float32Array.from([0.5, 0.25, 0.75]) };
  const widths: QuantBits[] = [2, 3, 4];
  const forkRows = Int32Array.from([0, 4]);
  const job = (rows?: Int32Array): ExpertJob => ({
    kind: "expert",
    weights: w,
    routed: routed.slice(),
    n,
    costs: { widths, groupSize: 32, quantizer: "rtn", sample, sampleRows: rows, forkRows },
  });
  const r = runExpertJob(job(sampleRows));
  assert.ok(relMax(r.routed, expertOutputs(w, routed, n)) < 1e-5);
  widths.forEach((b, i) => {
    const want = outputError(w, quantizeExpert(w, b, 32, "rtn"), sample).cost;
    assert.ok(Math.abs(r.costs[i] - want) <= 1e-4 * want, `cost at ${b}: ${r.costs[i]} ${want}`);
  });
  const lowest = quantizeExpert(w, 2, 32, "rtn");
  const forkIn = new Float32Array(2 * H);
  forkRows.forEach((row, j) => forkIn.set(routed.subarray(row * H, (row + 1) * H), j * H));
  assert.deepEqual(r.fork, mlpF32(lowest as MlpF32, forkIn, 2));
  // Reused sample outputs equal recomputed ones, so the costs are the same either way.
  assert.deepEqual(runExpertJob(job()).costs, r.costs);

  const pool = new QuantizePool(1);
  try {
    const remote = await pool.runCalibration(job(sampleRows));
    assert.deepEqual(remote.routed, r.routed);
    assert.deepEqual(remote.costs, r.costs);
    assert.deepEqual(remote.fork, r.fork);
  } finally {
    pool.close();
  }
});

Deno.test("rtnDecoded: a non-finite weight is an error naming the matrix, on both paths", () => {
  for (const [rows, cols, group] of [[2, 64, 32], [2, 40, 32]]) {
    const w = random(rows * cols, mulberry32(7));
    w[cols + 3] = NaN;
    assert.throws(() => rtnDecoded(w, rows, cols, 2, group, "f16", "gate"), /gate: non-finite/);
  }
});

Deno.test("decodeInto: decodeRaw's values for BF16 into a reused buffer; non-finite as decodeRaw", () => {
  const rng = mulberry32(8);
  const bytes = new Uint8Array(2 * 50).map(() => Math.floor(rng() * 256) & 0x3f);
  const raw = { bytes, dtype: "BF16", name: "w", file: "f", start: 0, allowNonFinite: false };
  const into = new Float32Array(50);
  const got = decodeInto(raw, into);
  assert.equal(got, into);
  assert.deepEqual(got, decodeRaw(raw));
  bytes[7] = 0x7f, bytes[6] = 0x80; // element 3 = +Infinity
  assert.throws(() => decodeInto(raw, into), /non-finite/);
  const zeroed = decodeInto({ ...raw, allowNonFinite: true }, into);
  assert.equal(zeroed[3], 0);
  assert.deepEqual(zeroed, decodeRaw({ ...raw, allowNonFinite: true }));
});

Deno.test("runExpertJob: the resident path gives the general path's values bit for bit", () => {
  const rng = mulberry32(9);
  const H = 64, I = 32, n = 7;
  for (
    const [activation, bias] of [[{ kind: "swiglu" }, true], [{ kind: "relu" }, false]] as const
  ) {
    const w = expert(activation, H, I, rng, bias);
    // Raw BF16 bytes for one matrix (decoded where the job runs), decoded values for the others.
    const bf16 = new Uint16Array(I * H).map(() => 0x3c00 + Math.floor(rng() * 0x300) - 0x180);
    const raw = {
      up: {
        bytes: new Uint8Array(bf16.buffer),
        dtype: "BF16" as const,
        name: "up",
        file: "f",
        start: 0,
        allowNonFinite: false,
      },
    };
    const routed = random(n * H, rng);
    const sample = { n: 3, seen: 5, inputs: random(3 * H, rng), weights: random(3, rng) };
    const job = (): ExpertJob => ({
      kind: "expert",
      weights: { ...w, matrices: { ...w.matrices, up: undefined } },
      raw,
      routed: routed.slice(),
      n,
      costs: {
        widths: [2, 3, 4, 8],
        groupSize: 32,
        quantizer: "rtn",
        sample,
        forkRows: Int32Array.from([1, 2, 6]),
      },
    });
    const general = runExpertJob(job(), false);
    const resident = runExpertJob(job(), true);
    assert.deepEqual(resident.routed, general.routed);
    assert.deepEqual(resident.costs, general.costs);
    assert.deepEqual(resident.fork, general.fork);
    assert.ok(general.costs.every((c) => c > 0));
  }
});

Deno.test("rtnFastAt: rtnDecoded's values bit for bit, values at rounding ties redone in float64", () => {
  const rng = mulberry32(10);
  const rows = 16, cols = 128, group = 32, n = rows * cols, groups = n / group;
  for (const bits of [2, 3, 4, 8] as QuantBits[]) {
    const qmax = (1 << bits) - 1;
    const w = random(n, rng, 0.3);
    // Half the groups get values at exact half-steps of their grid: v within float32 error of
    // a tie, which the float32 kernel must flag and the float64 kernel round up.
    const prm0 = new Float64Array(3 * groups);
    const mm0 = new Float32Array(2 * groups);
    for (let g = 0; g < groups; g++) {
      const x = w.subarray(g * group, (g + 1) * group);
      mm0[2 * g] = Math.min(...x);
      mm0[2 * g + 1] = Math.max(...x);
    }
    rtnGroupParams(mm0, prm0, null, groups, bits, "f16", () => w, cols, "w");
    let ties = 0;
    for (let g = 0; g < groups; g += 2) {
      const [, zero, scale] = prm0.subarray(3 * g, 3 * g + 3);
      for (let i = 0; i < group; i += 3) {
        const v = Math.fround((Math.floor(rng() * qmax) + 0.5 - zero) * scale);
        const [lo, hi] = mm0.subarray(2 * g, 2 * g + 2);
        const j = g * group + i;
        if (v > lo && v < hi && w[j] !== lo && w[j] !== hi) w[j] = v, ties++;
      }
    }
    assert.ok(ties > groups, `${ties} ties`);
    const mark = kernelMark();
    try {
      const wAt = kernelAlloc(n), out = kernelAlloc(n), mm = kernelAlloc(2 * groups);
      const prm = kernelAlloc(6 * groups), prm32 = kernelAlloc(4 * groups);
      const flags = kernelAlloc(groups);
      kernelF32(wAt, n).set(w);
      minmaxAt(wAt, mm, groups, group);
      rtnGroupParams(
        kernelF32(mm, 2 * groups),
        kernelF64(prm, 3 * groups),
        kernelF32(prm32, 4 * groups),
        groups,
        bits,
        "f16",
        () => w,
        cols,
        "w",
      );
      const redone = rtnFastAt(wAt, out, prm32, prm, flags, groups, group, qmax);
      assert.deepEqual(kernelF32(out, n).slice(), rtnDecoded(w, rows, cols, bits, group));
      // Tied groups are redone; most of the others are not.
      assert.ok(redone >= groups / 2 && redone < 0.75 * groups, `${bits}: ${redone} redone`);
    } finally {
      kernelRelease(mark);
    }
  }
});

Deno.test("bf16At: decodeRaw's values in the kernel memory; false on a non-finite value", () => {
  const rng = mulberry32(11);
  for (const n of [64, 37, 5]) {
    const bytes = new Uint8Array(2 * n).map(() => Math.floor(rng() * 256));
    for (let i = 1; i < bytes.length; i += 2) bytes[i] &= 0xbf; // exponents below all ones
    const raw = { bytes, dtype: "BF16", name: "w", file: "f", start: 0, allowNonFinite: false };
    const mark = kernelMark();
    try {
      const at = kernelAlloc(n + 4);
      kernelF32(at, n + 4).fill(7);
      assert.ok(bf16At(bytes, at, n));
      assert.deepEqual(kernelF32(at, n).slice(), decodeRaw(raw));
      assert.deepEqual([...kernelF32(at + 4 * n, 4)], [7, 7, 7, 7], "nothing written past n");
      bytes[2 * (n - 1) + 1] = 0xff, bytes[2 * (n - 1)] = 0x80; // the last value: -Infinity
      assert.equal(bf16At(bytes, at, n), false);
    } finally {
      kernelRelease(mark);
    }
  }
});

Deno.test("runHeadJob: raw BF16 rows in the kernel memory give the general path's block", () => {
  const rng = mulberry32(12);
  const H = 32, k = 5, n = 11, a = 40;
  const bf16 = new Uint16Array(n * H).map(() => 0x3c00 + Math.floor(rng() * 0x300) - 0x180);
  const job = {
    kind: "head" as const,
    x: random(k * H, rng),
    k,
    rows: {
      bytes: new Uint8Array(bf16.buffer),
      dtype: "BF16" as const,
      name: "lm_head",
      file: "f",
      start: a * H,
      allowNonFinite: false,
    },
    n,
    a,
    bias: random(n, rng),
    targets: Int32Array.from([41, 3, 50, 45, 40]),
  };
  const general = runHeadJob({ ...job, bias: job.bias.slice() }, false);
  const resident = runHeadJob({ ...job, bias: job.bias.slice() }, true);
  assert.deepEqual(resident, general);
  assert.deepEqual(
    general,
    headBlockF32(job.x, k, decodeRaw(job.rows), n, a, job.bias, job.targets),
  );
  assert.equal(Number.isNaN(general.target[1]), true);
});

Deno.test("kernel regions: a failed RTN releases what it reserved", () => {
  const before = kernelMark();
  const w = random(2 * 64, mulberry32(13));
  w[70] = NaN;
  assert.throws(() => rtnDecoded(w, 2, 64, 2, 32, "f16", "up"), /up: non-finite/);
  assert.equal(kernelMark(), before);
});

Deno.test("rtnParamsAt: rtnGroupParams' parameters bit for bit (f16 ties, subnormals, edge groups)", () => {
  const rng = mulberry32(14);
  // [lo, hi] per group: ordinary, tiny (subnormal f16 scales), large, one-signed, constant, zero,
  // and ranges whose scale (hi − lo) / qmax is exactly halfway between two f16 values.
  const pairs: [number, number][] = [];
  for (let i = 0; i < 400; i++) {
    const mag = [1, 1e-3, 1e-6, 2e-8, 3e3, 4e4][i % 6];
    const a = (rng() * 2 - 1) * mag, b = (rng() * 2 - 1) * mag;
    pairs.push([Math.min(a, b), Math.max(a, b)]);
  }
  pairs.push([0.25, 0.75], [-0.75, -0.25], [0.5, 0.5], [-2, -2], [0, 0], [-0, 0], [0, 1e-30]);
  const ties = (qmax: number) =>
    [-20, -14, -12, 0, 3].map((k) => {
      const half = Math.fround((qmax * (1 + 2 ** -11) * 2 ** k) / 2);
      return [-half, half] as [number, number];
    });
  for (const bits of [2, 3, 4, 8] as QuantBits[]) {
    const all = [...pairs, ...ties((1 << bits) - 1)];
    const groups = all.length;
    const mm = Float32Array.from(all.flat());
    const want = new Float64Array(3 * groups), want32 = new Float32Array(4 * groups);
    rtnGroupParams(mm, want, want32, groups, bits, "f16", () => mm, 2, "w");
    const mark = kernelMark();
    try {
      const mmAt = kernelAlloc(2 * groups), prm = kernelAlloc(6 * groups);
      const prm32 = kernelAlloc(4 * groups), flags = kernelAlloc(groups);
      kernelF32(mmAt, 2 * groups).set(mm);
      rtnParamsAt(mmAt, prm, prm32, flags, groups, bits, () => mm, 2, "w");
      const bytes = (a: Float32Array | Float64Array) =>
        new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
      assert.deepEqual(bytes(kernelF64(prm, 3 * groups)), bytes(want), `${bits}: f64 parameters`);
      assert.deepEqual(
        bytes(kernelF32(prm32, 4 * groups)),
        bytes(want32),
        `${bits}: f32 parameters`,
      );
      // The degenerate groups (and tiny ones, whose scale is below f16's) went the JS way;
      // the ordinary ones not.
      const flagged = new Int32Array(kernelF32(flags, groups).buffer, flags, groups);
      const count = flagged.reduce((s, f) => s + f, 0);
      assert.ok(count >= 4 && count < groups / 2, `${bits}: ${count} flagged`);
      for (let g = 0; g < 400; g += 6) assert.equal(flagged[g], 0, `${bits}: group ${g}`);
    } finally {
      kernelRelease(mark);
    }
  }
  // Errors as rtnGroupParams raises them: f16 overflow, a non-finite value.
  for (
    const [lo, hi, error] of [[-4e5, 4e5, /overflows the f16 scale/], [
      NaN,
      1,
      /non-finite/,
    ]] as const
  ) {
    const mark = kernelMark();
    try {
      const mmAt = kernelAlloc(4),
        prm = kernelAlloc(12),
        prm32 = kernelAlloc(8),
        flags = kernelAlloc(2);
      kernelF32(mmAt, 4).set([-1, 1, lo, hi]);
      const values = Float32Array.of(-1, 1, lo, hi);
      assert.throws(() => rtnParamsAt(mmAt, prm, prm32, flags, 2, 2, () => values, 2, "w"), error);
    } finally {
      kernelRelease(mark);
    }
  }
});

Deno.test("bf16MinmaxInto: bf16At's values and minmaxAt's [min, max], bit for bit", () => {
  const rng = mulberry32(15);
  for (const group of [8, 64]) {
    const n = 4 * 64;
    const h = new Uint16Array(n).map(() => Math.floor(rng() * 0x10000) & 0xbfff);
    h[3] = 0x8000, h[5] = 0x0000; // −0 and +0 in one group
    const bytes = new Uint8Array(h.buffer);
    const groups = n / group;
    const mark = kernelMark();
    try {
      const a = kernelAlloc(n), b = kernelAlloc(n);
      const mmA = kernelAlloc(2 * groups), mmB = kernelAlloc(2 * groups);
      assert.ok(bf16MinmaxInto((view) => view.set(bytes), a, n, mmA, group));
      assert.ok(bf16At(bytes, b, n));
      minmaxAt(b, mmB, groups, group);
      const bits = (at: number, len: number) => new Uint32Array(kernelF32(at, len).slice().buffer);
      assert.deepEqual(bits(a, n), bits(b, n), `${group}: values`);
      assert.deepEqual(bits(mmA, 2 * groups), bits(mmB, 2 * groups), `${group}: min, max`);
      h[n - 1] = 0x7fc0; // NaN
      assert.equal(bf16MinmaxInto((view) => view.set(bytes), a, n, mmA, group), false);
    } finally {
      kernelRelease(mark);
    }
  }
  assert.throws(() => bf16MinmaxInto(() => {}, 0, 60, 0, 12), /groups of 12/);
});
