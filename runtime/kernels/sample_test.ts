import { mulberry32 as rng } from "../../schemas/prng.ts";
import assert from "node:assert/strict";
import {
  createBatchSampler,
  createSampler,
  orderKey,
  sampleCpu,
  type SamplerParams,
  samplerUniform,
} from "./sample.ts";

const adapter = await navigator.gpu.requestAdapter();
if (!adapter) throw new Error("no WebGPU adapter (set XDG_RUNTIME_DIR=/tmp)");
const device = await adapter.requestDevice();

function randomLogits(n: number, seed: number, scale = 3): Float32Array<ArrayBuffer> {
  const r = rng(seed);
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = (r() * 2 - 1) * scale;
  return out;
}

function upload(data: Float32Array<ArrayBuffer>): GPUBuffer {
  const buffer = device.createBuffer({
    size: data.byteLength,
    usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST,
  });
  device.queue.writeBuffer(buffer, 0, data);
  return buffer;
}

async function readU32(buffer: GPUBuffer, count: number): Promise<Uint32Array> {
  const staging = device.createBuffer({
    size: count * 4,
    usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
  });
  const encoder = device.createCommandEncoder();
  encoder.copyBufferToBuffer(buffer, 0, staging, 0, count * 4);
  device.queue.submit([encoder.finish()]);
  await staging.mapAsync(GPUMapMode.READ);
  const out = new Uint32Array(staging.getMappedRange().slice(0));
  staging.destroy();
  return out;
}

function idsBuffer(count: number): GPUBuffer {
  return device.createBuffer({
    size: count * 4,
    usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST,
  });
}

/** `draws` samples from one logits vector through a GPU state buffer that the sampler advances. */
async function drawMany(
  logits: Float32Array<ArrayBuffer>,
  params: SamplerParams,
  draws: number,
  firstStep = 0,
): Promise<{ ids: Uint32Array; state: Uint32Array }> {
  const sampler = createSampler(device, logits.length);
  await sampler.ready;
  const logitsBuf = upload(logits);
  const ids = idsBuffer(draws);
  const state = device.createBuffer({
    size: 8,
    usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST,
  });
  device.queue.writeBuffer(state, 0, new Uint32Array([firstStep, 0]));
  for (let done = 0; done < draws; done += 500) {
    const encoder = device.createCommandEncoder();
    for (let i = done; i < Math.min(draws, done + 500); i++) {
      sampler.encode(encoder, logitsBuf, ids, { buffer: state, offset: 0 }, params);
    }
    device.queue.submit([encoder.finish()]);
  }
  const out = { ids: await readU32(ids, draws), state: await readU32(state, 2) };
  sampler.dispose();
  logitsBuf.destroy();
  ids.destroy();
  state.destroy();
  return out;
}

/** float64 softmax restricted to `allowed`, computed independently of sample.ts (sorting). */
function probabilities(logits: Float32Array, t: number, allowed: Set<number>): Float64Array {
  let max = -Infinity;
  for (const i of allowed) max = Math.max(max, logits[i]);
  const p = new Float64Array(logits.length);
  let z = 0;
  for (const i of allowed) z += p[i] = Math.exp((logits[i] - max) / t);
  for (const i of allowed) p[i] /= z;
  return p;
}

/** The HF top-k then top-p kept set, by sorting (independent of the kernel's bisection). */
function allowedSet(logits: Float32Array, t: number, topK: number, topP: number): Set<number> {
  const order = Array.from(logits.keys()).sort((a, b) => logits[b] - logits[a]);
  let kept = order;
  if (topK > 0 && topK < order.length) {
    const kth = logits[order[topK - 1]];
    kept = order.filter((i) => logits[i] >= kth);
  }
  if (topP < 1) {
    const p = probabilities(logits, t, new Set(kept));
    let mass = 0;
    const out: number[] = [];
    for (let j = 0; j < kept.length; j++) {
      mass += p[kept[j]];
      out.push(kept[j]);
      // Include ties of the crossing token.
      if (mass >= topP && (j + 1 === kept.length || logits[kept[j + 1]] !== logits[kept[j]])) break;
    }
    kept = out;
  }
  return new Set(kept);
}

/** Pearson chi-square of `ids` against `p` over the support of p. */
function chiSquare(ids: Uint32Array, p: Float64Array): { chi2: number; df: number } {
  const counts = new Float64Array(p.length);
  for (const id of ids) counts[id]++;
  let chi2 = 0;
  let df = -1;
  for (let i = 0; i < p.length; i++) {
    if (p[i] === 0) continue;
    const expected = p[i] * ids.length;
    chi2 += (counts[i] - expected) ** 2 / expected;
    df++;
  }
  return { chi2, df };
}

/** Upper 0.1% critical value of chi-square (Wilson–Hilferty approximation). */
function chi2Critical(df: number): number {
  const z = 3.090;
  const a = 2 / (9 * df);
  return df * (1 - a + z * Math.sqrt(a)) ** 3;
}

Deno.test("greedy: argmax with lowest index on ties, NaN and inf handled, many vocab sizes", async () => {
  const cases: Float32Array<ArrayBuffer>[] = [];
  for (const n of [1, 7, 256, 257, 1000, 5003]) cases.push(randomLogits(n, n));
  const ties = randomLogits(600, 99);
  ties[17] = ties[400] = ties[599] = 50;
  cases.push(ties);
  const special = randomLogits(300, 5);
  special[3] = NaN;
  special[250] = Infinity;
  special[260] = Infinity;
  special[1] = -Infinity;
  cases.push(special);
  const negative = new Float32Array(513).fill(-1e30);
  negative[512] = -1e29;
  cases.push(negative);

  for (const logits of cases) {
    const sampler = createSampler(device, logits.length);
    const buf = upload(logits);
    const ids = idsBuffer(4);
    const encoder = device.createCommandEncoder();
    sampler.encode(encoder, buf, ids, 2, { temperature: 0, topK: 0, topP: 1, seed: 1 });
    device.queue.submit([encoder.finish()]);
    const got = await readU32(ids, 4);
    let expected = 0;
    for (let i = 1; i < logits.length; i++) {
      const a = Number.isNaN(logits[i]) ? -Infinity : logits[i];
      const b = Number.isNaN(logits[expected]) ? -Infinity : logits[expected];
      if (a > b) expected = i;
    }
    assert.equal(got[2], expected, `vocab ${logits.length}`);
    assert.equal(got[0], 0, "other slots untouched");
    assert.equal(sampleCpu(logits, { temperature: 0, topK: 0, topP: 1, seed: 0 }, 0), expected);
    sampler.dispose();
    buf.destroy();
    ids.destroy();
  }
});

Deno.test("sampling matches the float64 reference draw by draw and in distribution", async () => {
  const logits = randomLogits(24, 7, 2);
  const params = { temperature: 0.8, topK: 0, topP: 1, seed: 1234 };
  const draws = 3000;
  const { ids, state } = await drawMany(logits, params, draws, 10);
  assert.deepEqual(Array.from(state), [10 + draws, draws], "state advanced by the sampler");

  // Draw by draw: GPU f32 vs CPU f64 can only differ when u lands within 1e-5 of a CDF boundary.
  const p = probabilities(logits, params.temperature, new Set(logits.keys()));
  let mismatches = 0;
  for (let s = 0; s < draws; s++) {
    const cpu = sampleCpu(logits, params, 10 + s);
    if (cpu === ids[s]) continue;
    mismatches++;
    const u = samplerUniform(params.seed, 10 + s);
    let cdf = 0;
    let nearest = Infinity;
    for (let i = 0; i < p.length; i++) nearest = Math.min(nearest, Math.abs((cdf += p[i]) - u));
    assert.ok(nearest < 1e-5, `draw ${s}: gpu ${ids[s]} cpu ${cpu}, u ${u} not at a boundary`);
  }
  assert.ok(mismatches <= 3, `${mismatches} boundary mismatches`);

  const { chi2, df } = chiSquare(ids, p);
  assert.ok(chi2 < chi2Critical(df), `chi2 ${chi2.toFixed(1)} with ${df} df`);
  console.log(`  temperature 0.8, vocab 24, ${draws} draws: chi2 ${chi2.toFixed(1)} (df ${df})`);
});

Deno.test("top-k and top-p never pick outside the allowed set; distribution within it", async () => {
  const logits = randomLogits(200, 3, 2);
  logits[10] = logits[11] = 2.5; // a tie at the top
  const settings: SamplerParams[] = [
    { temperature: 1, topK: 5, topP: 1, seed: 9 },
    { temperature: 0.7, topK: 0, topP: 0.5, seed: 10 },
    { temperature: 1.3, topK: 20, topP: 0.6, seed: 11 },
    { temperature: 1, topK: 1, topP: 1, seed: 12 },
    { temperature: 1, topK: 0, topP: 0, seed: 13 },
  ];
  for (const params of settings) {
    const allowed = allowedSet(logits, params.temperature, params.topK, params.topP);
    const { ids } = await drawMany(logits, params, 1500);
    for (const id of ids) assert.ok(allowed.has(id), `${JSON.stringify(params)} picked ${id}`);
    const p = probabilities(logits, params.temperature, allowed);
    if (allowed.size > 1) {
      const { chi2, df } = chiSquare(ids, p);
      assert.ok(chi2 < chi2Critical(df), `${JSON.stringify(params)}: chi2 ${chi2} df ${df}`);
      console.log(
        `  T ${params.temperature} k ${params.topK} p ${params.topP}: |set| ${allowed.size}` +
          `, chi2 ${chi2.toFixed(1)} (df ${df})`,
      );
    }
    for (let s = 0; s < 200; s++) {
      assert.ok(allowed.has(sampleCpu(logits, params, s)), "reference respects the set too");
    }
  }
});

Deno.test("same seed gives the same ids, another seed other ids", async () => {
  const logits = randomLogits(300, 21, 1);
  const params = { temperature: 1, topK: 50, topP: 0.9, seed: 42 };
  const a = await drawMany(logits, params, 64);
  const b = await drawMany(logits, params, 64);
  const c = await drawMany(logits, { ...params, seed: 43 }, 64);
  assert.deepEqual(a.ids, b.ids);
  assert.notDeepEqual(a.ids, c.ids);
});

Deno.test("large vocabulary (131072): greedy and nucleus agree with the reference", async () => {
  const logits = randomLogits(131072, 77, 8);
  for (
    const params of [
      { temperature: 0, topK: 0, topP: 1, seed: 0 },
      { temperature: 0.9, topK: 40, topP: 0.95, seed: 5 },
      { temperature: 1, topK: 0, topP: 0.9, seed: 6 },
    ]
  ) {
    const t0 = performance.now();
    const { ids } = await drawMany(logits, params, 4);
    const ms = (performance.now() - t0) / 4;
    for (let s = 0; s < 4; s++) assert.equal(ids[s], sampleCpu(logits, params, s));
    console.log(`  vocab 131072 ${JSON.stringify(params)}: ${ms.toFixed(1)} ms/draw (lavapipe)`);
  }
});

Deno.test("order keys are monotone and the uniform draw stays in [0, 1)", () => {
  const xs = [-Infinity, -1e30, -2, -1, -0.5, 0, 1e-30, 0.5, 1, 3, 1e30, Infinity];
  for (let i = 1; i < xs.length; i++) assert.ok(orderKey(xs[i]) >= orderKey(xs[i - 1]));
  assert.ok(orderKey(1) > orderKey(0.5) && orderKey(-0.5) > orderKey(-1));
  let sum = 0;
  for (let s = 0; s < 10000; s++) {
    const u = samplerUniform(3, s);
    assert.ok(u >= 0 && u < 1);
    sum += u;
  }
  assert.ok(Math.abs(sum / 10000 - 0.5) < 0.01, `mean ${sum / 10000}`);
  assert.throws(() => createSampler(device, 0), /vocabSize/);
});

Deno.test("batch sampler: each row with its slot's params, RNG step and write position = sampleCpu", async () => {
  const V = 1000, slots = 4, perSlot = 40, draws = 12;
  // Rows sample slots 2, 0, 3 (slot 1 idle) with different params; each slot its own logits row.
  const rowSlots = [2, 0, 3];
  const params: SamplerParams[] = [
    { temperature: 0.9, topK: 0, topP: 0.8, seed: 11 },
    { temperature: 0, topK: 0, topP: 1, seed: 0 },
    { temperature: 1.3, topK: 25, topP: 1, seed: 5 },
  ];
  const start = [[7, 3], [0, 10], [2, 20]]; // (RNG step, write position) per row's slot
  const rows = rowSlots.map((_, b) => randomLogits(V, 100 + b, 4));
  const logits = new Float32Array(rowSlots.length * V);
  rows.forEach((r, b) => logits.set(r, b * V));
  const logitsBuf = upload(logits);
  const ids = idsBuffer(slots * perSlot);
  const rowsBuf = idsBuffer(2 * rowSlots.length);
  device.queue.writeBuffer(rowsBuf, 0, new Uint32Array(rowSlots.flatMap((s) => [s, 0])));
  const sampler = createBatchSampler(device, V, slots, perSlot, {
    logits: logitsBuf,
    ids,
    rows: rowsBuf,
  });
  await sampler.ready;
  rowSlots.forEach((s, b) => {
    sampler.setParams(s, params[b]);
    sampler.setState(s, start[b][0], start[b][1]);
  });
  const enc = device.createCommandEncoder();
  for (let i = 0; i < draws; i++) sampler.encode(enc, rowSlots.length);
  device.queue.submit([enc.finish()]);
  const got = await readU32(ids, slots * perSlot);
  rowSlots.forEach((s, b) => {
    const want = Array.from(
      { length: draws },
      (_, i) => sampleCpu(rows[b], params[b], start[b][0] + i),
    );
    const at = s * perSlot + start[b][1];
    assert.deepEqual(Array.from(got.slice(at, at + draws)), want, `row ${b} (slot ${s})`);
  });
  assert.ok(new Set(Array.from(got.slice(3 * perSlot + 20, 3 * perSlot + 20 + draws))).size > 1);
  // The idle slot's entries are untouched.
  assert.ok(got.slice(perSlot, 2 * perSlot).every((v) => v === 0));
  sampler.dispose();
  logitsBuf.destroy();
  ids.destroy();
  rowsBuf.destroy();
});
