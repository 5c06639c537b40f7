import assert from "node:assert/strict";
import { join } from "node:path";
import { InputError, LimitError, UnsupportedError } from "../../schemas/errors.ts";
import { findDuplicateKey, openSafetensors } from "./safetensors.ts";
import { openCheckpointStore } from "./store.ts";
import {
  assertFails,
  concatBytes,
  encodeSafetensors,
  headerLengthBytes,
  randomValues,
  rawSafetensors,
  seededRandom,
  writeSafetensors,
} from "./testing.ts";

const tmp = await Deno.makeTempDir({ prefix: "moeq-st-" });
let counter = 0;
/** Writes bytes to a fresh file in the temp dir and returns its path. */
async function fileWith(bytes: Uint8Array): Promise<string> {
  const path = join(tmp, `f${counter++}.safetensors`);
  await Deno.writeFile(path, bytes);
  return path;
}

/** A valid two-tensor file's header as an object, to be edited into malformed variants. */
function header(overrides: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    a: { dtype: "F32", shape: [2, 3], data_offsets: [0, 24] },
    b: { dtype: "F32", shape: [4], data_offsets: [24, 40] },
    ...overrides,
  };
}
const data40 = new Uint8Array(new Float32Array(10).fill(0.5).buffer);
const withHeader = (h: unknown, data: Uint8Array = data40) =>
  fileWith(rawSafetensors(JSON.stringify(h), data));

Deno.test("round trip of F32/F16/BF16/F64 values against an independent decode", async () => {
  const rand = seededRandom(7);
  const v = randomValues(rand, 6 * 5);
  const path = join(tmp, "dtypes.safetensors");
  await writeSafetensors(path, {
    f32: { dtype: "F32", shape: [6, 5], data: v },
    f16: { dtype: "F16", shape: [6, 5], data: v },
    bf16: { dtype: "BF16", shape: [6, 5], data: v },
    f64: { dtype: "F64", shape: [6, 5], data: v },
  }, { format: "pt" });
  const f = await openSafetensors(path);
  assert.deepEqual(f.metadata, { format: "pt" });
  assert.deepEqual([...f.tensors.keys()], ["f32", "f16", "bf16", "f64"]);
  assert.deepEqual(f.info("bf16").shape, [6, 5]);

  const raw = await Deno.readFile(path);
  const view = new DataView(raw.buffer);
  const begin = (name: string) => f.info(name).begin;
  const f32 = await f.read("f32");
  const f16 = await f.read("f16");
  const bf16 = await f.read("bf16");
  const f64 = await f.read("f64");
  for (let i = 0; i < v.length; i++) {
    assert.equal(f32[i], v[i]);
    assert.equal(f64[i], v[i]);
    // Independent decodes: DataView's own binary16, and bf16 as the high half of an f32.
    assert.equal(f16[i], view.getFloat16(begin("f16") + 2 * i, true));
    const bits = view.getUint16(begin("bf16") + 2 * i, true) << 16;
    const dv = new DataView(new ArrayBuffer(4));
    dv.setUint32(0, bits);
    assert.equal(bf16[i], dv.getFloat32(0));
    // And the stored values are the nearest ones: relative error within half an ulp.
    assert.ok(Math.abs(f16[i] - v[i]) <= Math.abs(v[i]) * 2 ** -11);
    assert.ok(Math.abs(bf16[i] - v[i]) <= Math.abs(v[i]) * 2 ** -8);
  }
});

Deno.test("readRows and readElements read exact slices", async () => {
  const v = randomValues(seededRandom(3), 3 * 4 * 5);
  const path = join(tmp, "rows.safetensors");
  await writeSafetensors(path, { p: { dtype: "BF16", shape: [3, 4, 5], data: v } });
  const f = await openSafetensors(path);
  const all = await f.read("p");
  assert.deepEqual(await f.readRows("p", 6, 3), all.slice(30, 45));
  assert.deepEqual(await f.readElements("p", 7, 11), all.slice(7, 18));
  assert.equal((await f.readRows("p", 0, 0)).length, 0);
});

Deno.test("zero-sized tensors and a scalar are valid", async () => {
  const path = join(tmp, "empty.safetensors");
  await writeSafetensors(path, {
    z: { shape: [0, 4], data: [] },
    s: { shape: [], data: [1.5] },
  });
  const f = await openSafetensors(path);
  assert.equal((await f.read("z")).length, 0);
  assert.deepEqual([...(await f.read("s"))], [1.5]);
});

Deno.test("findDuplicateKey finds duplicates at any depth and ignores values", () => {
  assert.equal(findDuplicateKey('{"a":1,"b":"a","c":{"x":1,"x":2}}'), "x");
  assert.equal(findDuplicateKey('{"a":[{"a":1},{"a":2}],"b\\"":"a"}'), null);
  assert.equal(findDuplicateKey('{"k\\u0041":1,"kA":2}'), "kA");
});

// ---- malformed files: each must give a typed error naming the file and the problem ----

Deno.test("malformed: file shorter than the length field", async () => {
  const p = await fileWith(new Uint8Array(5));
  await assertFails(() => openSafetensors(p), InputError, p, /too small/);
});

Deno.test("malformed: header length larger than the file", async () => {
  const p = await fileWith(concatBytes([headerLengthBytes(1000), new TextEncoder().encode("{}")]));
  await assertFails(() => openSafetensors(p), InputError, p, /header length 1000 exceeds/);
});

Deno.test("malformed: header length claims more than 100 MB", async () => {
  const p = await fileWith(concatBytes([headerLengthBytes(2n ** 40n), new Uint8Array(16)]));
  await assertFails(() => openSafetensors(p), LimitError, p, /limit/);
});

Deno.test("malformed: header length field 2^64-1", async () => {
  const p = await fileWith(concatBytes([headerLengthBytes(2n ** 64n - 1n), new Uint8Array(16)]));
  await assertFails(() => openSafetensors(p), LimitError, p);
});

Deno.test("malformed: header is not UTF-8", async () => {
  const bad = concatBytes([
    new TextEncoder().encode('{"a'),
    new Uint8Array([0xff, 0xfe]),
    new TextEncoder().encode('":1}'),
  ]);
  const p = await fileWith(concatBytes([headerLengthBytes(bad.length), bad]));
  await assertFails(() => openSafetensors(p), InputError, p, /UTF-8/);
});

Deno.test("malformed: header is not JSON", async () => {
  const p = await fileWith(rawSafetensors('{"a": {"dtype": "F32",'));
  await assertFails(() => openSafetensors(p), InputError, p, /not valid JSON/);
});

Deno.test("malformed: header is not an object", async () => {
  for (const h of ["[]", "null", "42", '"x"']) {
    const p = await fileWith(rawSafetensors(h));
    await assertFails(() => openSafetensors(p), InputError, p, /not a JSON object/);
  }
});

Deno.test("malformed: duplicate tensor names", async () => {
  const text = '{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},' +
    '"a":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}}';
  const p = await fileWith(rawSafetensors(text, new Uint8Array(16)));
  await assertFails(() => openSafetensors(p), InputError, p, /duplicate key "a"/);
});

Deno.test("malformed: overlapping offsets", async () => {
  const p = await withHeader(header({ b: { dtype: "F32", shape: [4], data_offsets: [20, 36] } }));
  await assertFails(() => openSafetensors(p), InputError, p, /overlaps/, '"b"');
});

Deno.test("malformed: offsets past the data region", async () => {
  const p = await withHeader(header({ b: { dtype: "F32", shape: [6], data_offsets: [24, 48] } }));
  await assertFails(() => openSafetensors(p), InputError, p, '"b"', /past the data region/);
});

Deno.test("malformed: begin > end and bad offset arrays", async () => {
  let p = await withHeader(header({ b: { dtype: "F32", shape: [0], data_offsets: [40, 24] } }));
  await assertFails(() => openSafetensors(p), InputError, p, '"b"', /begin > end/);
  p = await withHeader(header({ b: { dtype: "F32", shape: [4], data_offsets: [24] } }));
  await assertFails(() => openSafetensors(p), InputError, p, '"b"', /data_offsets/);
  p = await withHeader(header({ b: { dtype: "F32", shape: [4], data_offsets: [24, -1] } }));
  await assertFails(() => openSafetensors(p), InputError, p, '"b"', /non-negative/);
});

Deno.test("malformed: dtype × shape does not match the byte span", async () => {
  const p = await withHeader(header({ a: { dtype: "F32", shape: [2, 2], data_offsets: [0, 24] } }));
  await assertFails(() => openSafetensors(p), InputError, p, '"a"', /needs 16 bytes/, /span 24/);
});

Deno.test("malformed: unknown dtype", async () => {
  const p = await withHeader(header({ a: { dtype: "F31", shape: [2, 3], data_offsets: [0, 24] } }));
  await assertFails(() => openSafetensors(p), InputError, p, '"a"', /unknown dtype "F31"/);
  const q = await withHeader(
    header({ a: { dtype: "toString", shape: [2, 3], data_offsets: [0, 24] } }),
  );
  await assertFails(() => openSafetensors(q), InputError, q, /unknown dtype/);
});

Deno.test("malformed: negative, non-integer, non-numeric and huge shapes", async () => {
  for (const shape of [[-2, -3], [2.5, 3], ["2", 3], [1e300]]) {
    const p = await withHeader(header({ a: { dtype: "F32", shape, data_offsets: [0, 24] } }));
    await assertFails(() => openSafetensors(p), InputError, p, '"a"', /shape/);
  }
  const big = [2 ** 30, 2 ** 30, 2 ** 30];
  const p = await withHeader(header({ a: { dtype: "F32", shape: big, data_offsets: [0, 24] } }));
  await assertFails(() => openSafetensors(p), InputError, p, '"a"', /too large/);
});

Deno.test("malformed: entry fields missing or of the wrong type", async () => {
  let p = await withHeader(header({ a: 5 }));
  await assertFails(() => openSafetensors(p), InputError, p, '"a"', /not an object/);
  p = await withHeader(header({ a: { shape: [2, 3], data_offsets: [0, 24] } }));
  await assertFails(() => openSafetensors(p), InputError, p, '"a"', /dtype/);
  p = await withHeader(header({ a: { dtype: "F32", data_offsets: [0, 24] } }));
  await assertFails(() => openSafetensors(p), InputError, p, '"a"', /shape/);
  p = await withHeader(header({ __metadata__: { format: 1 } }));
  await assertFails(() => openSafetensors(p), InputError, p, /__metadata__/);
});

Deno.test("malformed: trailing bytes after the last tensor, and gaps", async () => {
  let p = await withHeader(header(), concatBytes([data40, new Uint8Array(4)]));
  await assertFails(() => openSafetensors(p), InputError, p, /4 trailing bytes/);
  p = await withHeader(header({ b: { dtype: "F32", shape: [3], data_offsets: [28, 40] } }));
  await assertFails(() => openSafetensors(p), InputError, p, /gap of 4 bytes/, '"b"');
});

Deno.test("malformed: truncated file", async () => {
  const full = encodeSafetensors({ w: { shape: [8, 8], data: new Float32Array(64).fill(1) } });
  for (const cut of [full.length - 1, full.length - 100, 20]) {
    const p = await fileWith(full.subarray(0, cut));
    await assertFails(() => openSafetensors(p), InputError, p);
  }
  // A file that shrinks after opening: the read itself reports the early end of file.
  const p = await fileWith(full);
  const f = await openSafetensors(p);
  await Deno.truncate(p, full.length - 8);
  await assertFails(() => f.read("w"), InputError, p, /unexpected end of file/);
});

Deno.test("malformed: NaN and Inf weights, unless allowNonFinite", async () => {
  const vals = [1, 2, NaN, 4];
  for (const dtype of ["F32", "F16", "BF16", "F64"]) {
    const path = join(tmp, `nan-${dtype}.safetensors`);
    await writeSafetensors(path, {
      ok: { dtype, shape: [2], data: [1, 2] },
      nan: { dtype, shape: [4], data: vals },
      inf: { dtype, shape: [2], data: [-Infinity, 1] },
    });
    const f = await openSafetensors(path);
    assert.deepEqual([...(await f.read("ok"))], [1, 2]);
    await assertFails(() => f.read("nan"), InputError, path, '"nan"', /non-finite/, /element 2/);
    await assertFails(() => f.read("inf"), InputError, path, '"inf"', /-Infinity/);
    const got = await f.read("nan", { allowNonFinite: true });
    assert.ok(got[2] === 0 && got[3] === 4);
    assert.deepEqual([...(await f.read("inf", { allowNonFinite: true }))], [0, 1]);
  }
  // F64 values beyond the f32 range become Inf and are caught as well.
  const path = join(tmp, "f64-big.safetensors");
  await writeSafetensors(path, { big: { dtype: "F64", shape: [1], data: [1e300] } });
  await assertFails(async () => (await openSafetensors(path)).read("big"), InputError, '"big"');
});

Deno.test("integer tensors are listed but cannot be read as floats", async () => {
  const path = join(tmp, "ints.safetensors");
  await writeSafetensors(path, { ids: { dtype: "I64", shape: [3], data: [1, 2, 3] } });
  const f = await openSafetensors(path);
  assert.equal(f.info("ids").dtype, "I64");
  await assertFails(() => f.read("ids"), UnsupportedError, '"ids"', /I64/);
  await assertFails(() => f.read("nope"), InputError, '"nope"', /not found/);
});

Deno.test("malformed: missing file and directory", async () => {
  await assertFails(() => openSafetensors(join(tmp, "absent")), InputError, "absent", /not found/);
  await assertFails(() => openSafetensors(tmp), InputError, tmp);
});

// ---- sharded checkpoints ----

async function shardedDir(
  weightMap: Record<string, string>,
  shards: Record<string, string[]>,
): Promise<string> {
  const dir = await Deno.makeTempDir({ dir: tmp });
  for (const [file, names] of Object.entries(shards)) {
    const tensors = Object.fromEntries(
      names.map((n, i) => [n, { shape: [2], data: [i + 1, -(i + 1)] }]),
    );
    await writeSafetensors(join(dir, file), tensors);
  }
  await Deno.writeTextFile(
    join(dir, "model.safetensors.index.json"),
    JSON.stringify({ weight_map: weightMap }),
  );
  return dir;
}

Deno.test("sharded: index maps tensors to shards", async () => {
  const dir = await shardedDir({ a: "s1", b: "s2", c: "s1" }, { s1: ["a", "c"], s2: ["b"] });
  const store = await openCheckpointStore(dir);
  assert.deepEqual(store.names().sort(), ["a", "b", "c"]);
  assert.equal(store.fileOf("b").path, join(dir, "s2"));
  assert.deepEqual([...(await store.readElements("c", 0, 2))], [2, -2]);
});

Deno.test("malformed: shard listed in the index is missing", async () => {
  const dir = await shardedDir({ a: "s1", b: "s2" }, { s1: ["a"] });
  await assertFails(() => openCheckpointStore(dir), InputError, "index.json", /shard "s2"/);
});

Deno.test("malformed: tensor mapped to a shard that lacks it", async () => {
  const dir = await shardedDir({ a: "s1", b: "s1" }, { s1: ["a"] });
  await assertFails(() => openCheckpointStore(dir), InputError, '"b"', /not in it/);
});

Deno.test("malformed: shard holds a tensor the index does not list", async () => {
  const dir = await shardedDir({ a: "s1" }, { s1: ["a", "x"] });
  await assertFails(() => openCheckpointStore(dir), InputError, '"x"', /not listed/);
});

Deno.test("malformed: index weight_map missing, non-JSON, or escaping the directory", async () => {
  const dir = await shardedDir({ a: "s1" }, { s1: ["a"] });
  const index = join(dir, "model.safetensors.index.json");
  await Deno.writeTextFile(index, JSON.stringify({ metadata: {} }));
  await assertFails(() => openCheckpointStore(dir), InputError, index, /weight_map/);
  await Deno.writeTextFile(index, "{weight_map");
  await assertFails(() => openCheckpointStore(dir), InputError, index, /not valid JSON/);
  await Deno.writeTextFile(index, JSON.stringify({ weight_map: { a: "../s1" } }));
  await assertFails(() => openCheckpointStore(dir), InputError, index, /plain file name/);
});

Deno.test("malformed: directory without safetensors", async () => {
  const dir = await Deno.makeTempDir({ dir: tmp });
  await assertFails(() => openCheckpointStore(dir), InputError, dir, /no model.safetensors/);
});

Deno.test("cleanup", async () => {
  await Deno.remove(tmp, { recursive: true });
});
