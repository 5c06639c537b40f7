/**
 * Raw rows read where a job runs: a checkpoint ref's location reads the bytes its `readRawRows`
 * returns; an expert job given its matrices' locations gives the values of the same job given
 * their raw bytes, on the resident and the general path, non-finite values included (decodeRaw's
 * error naming the file, or zeros); so does a head job given its rows' location; a file that
 * ends early is an InputError naming it.
 *
 * @module
 */

import assert from "node:assert/strict";
import { mulberry32 } from "../../schemas/prng.ts";
import { loadCheckpoint } from "../checkpoint/mod.ts";
import { moeLayers, type RawElements, type RawLocation } from "../ir.ts";
import type { ExpertWeights } from "../expert_weights.ts";
import { type ExpertJob, runExpertJob, runHeadJob } from "./jobs.ts";
import { rawAt, readLocation, readLocationInto } from "./raw_read.ts";

const SHAKESPEARE = new URL("../../testdata/shakespeare-moe", import.meta.url).pathname;

Deno.test("locateRawRows: the bytes readRawRows reads, read on this thread", async () => {
  const ir = await loadCheckpoint(SHAKESPEARE);
  const ref = moeLayers(ir)[1].experts[2].matrices[0].weight;
  assert.equal(ref.dtype, "BF16");
  const want = await ref.readRawRows!(3, 5);
  const loc = ref.locateRawRows!(3, 5);
  assert.equal(loc.length, want.bytes.byteLength);
  const got = readLocation(loc);
  assert.deepEqual(got, want);
  assert.throws(() => ref.locateRawRows!(ref.shape[0], 1), RangeError);
});

/** BF16 bytes of random values in ±[0.5, 2), one matrix. */
function bf16Matrix(n: number, rng: () => number): Uint8Array {
  const h = new Uint16Array(n).map(() =>
    (rng() < 0.5 ? 0x8000 : 0) | (0x3f00 + Math.floor(rng() * 0x100))
  );
  return new Uint8Array(h.buffer);
}

Deno.test("runExpertJob: matrices at a file location give their raw bytes' values", async () => {
  const rng = mulberry32(21);
  const H = 64, I = 32, n = 5;
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/w.bin`;
    const names = ["gate", "up", "down"] as const;
    const mats = names.map(() => bf16Matrix(I * H, rng));
    const pad = 10; // an even offset not at the file's start
    const file = new Uint8Array(pad + mats.reduce((s, m) => s + m.length, 0));
    mats.forEach((m, i) => file.set(m, pad + i * m.length));
    await Deno.writeFile(path, file);
    const locOf = (i: number, allowNonFinite = false): RawLocation => ({
      path,
      offset: pad + i * mats[i].length,
      length: mats[i].length,
      dtype: "BF16",
      name: names[i],
      start: 0,
      allowNonFinite,
    });
    const rawOf = (i: number, allowNonFinite = false): RawElements => ({
      bytes: file.slice(pad + i * mats[i].length, pad + (i + 1) * mats[i].length),
      dtype: "BF16",
      name: names[i],
      file: path,
      start: 0,
      allowNonFinite,
    });
    const weights: ExpertWeights = {
      activation: { kind: "swiglu" },
      hidden: H,
      inter: I,
      matrices: {},
      biases: {},
    };
    const routed = Float32Array.from({ length: n * H }, () => rng() - 0.5);
    const sample = {
      n: 3,
      seen: 4,
      inputs: routed.slice(0, 3 * H),
      weights: Float32Array.of(1, 0.5, 0.25),
    };
    const job = (located: boolean, allow = false): ExpertJob => ({
      kind: "expert",
      weights,
      ...(located
        ? { located: { gate: locOf(0, allow), up: locOf(1, allow), down: locOf(2, allow) } }
        : { raw: { gate: rawOf(0, allow), up: rawOf(1, allow), down: rawOf(2, allow) } }),
      routed: routed.slice(),
      n,
      costs: {
        widths: [2, 3, 4],
        groupSize: 32,
        quantizer: "rtn",
        sample,
        sampleRows: Int32Array.of(0, 1, 2),
        forkRows: Int32Array.of(4),
      },
    });
    for (const resident of [true, false]) {
      const want = runExpertJob(job(false), resident);
      const got = runExpertJob(job(true), resident);
      assert.deepEqual(got, { ...want, costMs: got.costMs });
      assert.ok(want.costs.every((c) => c > 0));
    }
    // A non-finite value: decodeRaw's error naming the file and element, or zeros when allowed.
    const at = pad + mats[0].length + 2 * 7;
    file[at] = 0x80, file[at + 1] = 0x7f; // up[7] = +Infinity
    await Deno.writeFile(path, file);
    for (const resident of [true, false]) {
      assert.throws(() => runExpertJob(job(true), resident), (e: Error) => {
        return e.message.includes("non-finite") && e.message.includes("element 7") &&
          e.message.includes(path);
      });
      const want = runExpertJob(job(false, true), resident);
      const got = runExpertJob(job(true, true), resident);
      assert.deepEqual(got, { ...want, costMs: got.costMs });
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("readLocationInto: a file that ends early is an InputError naming it", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/short.bin`;
    await Deno.writeFile(path, new Uint8Array(100));
    const loc: RawLocation = {
      path,
      offset: 90,
      length: 20,
      dtype: "BF16",
      name: "w",
      start: 0,
      allowNonFinite: false,
    };
    assert.throws(
      () => readLocationInto(loc, new Uint8Array(20)),
      (e: Error) =>
        e.name === "InputError" && e.message.includes("unexpected end of file") &&
        e.message.includes(path),
    );
    assert.throws(() => readLocation({ ...loc, path: `${dir}/none.bin` }), /not found/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("runHeadJob: head rows at a file location give their raw bytes' block", async () => {
  const rng = mulberry32(22);
  const H = 32, k = 3, n = 9, a = 100;
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/head.bin`;
    const bytes = bf16Matrix(n * H, rng);
    const file = new Uint8Array(6 + bytes.length);
    file.set(bytes, 6);
    await Deno.writeFile(path, file);
    const loc: RawLocation = {
      path,
      offset: 6,
      length: bytes.length,
      dtype: "BF16",
      name: "lm_head",
      start: a * H,
      allowNonFinite: false,
    };
    const job = (rows: RawElements | RawLocation) => ({
      kind: "head" as const,
      x: Float32Array.from({ length: k * H }, () => rng() - 0.5),
      k,
      rows,
      n,
      a,
      bias: null,
      targets: Int32Array.of(101, 3, 108),
    });
    const j = job(loc);
    const raw = { ...j, rows: rawAt(loc, bytes.slice()) };
    for (const resident of [true, false]) {
      assert.deepEqual(runHeadJob(j, resident), runHeadJob(raw, resident));
    }
    file[6 + 2 * 40 + 1] = 0xff, file[6 + 2 * 40] = 0x80; // element 40: -Infinity
    await Deno.writeFile(path, file);
    for (const resident of [true, false]) {
      assert.throws(
        () => runHeadJob(j, resident),
        /non-finite value \(-Infinity\) at element 3240/,
      );
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
