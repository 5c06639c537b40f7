import assert from "node:assert/strict";
import { join } from "node:path";
import { InputError, UnsupportedError } from "../../schemas/errors.ts";
import { forward, prepareReference } from "../reference/mod.ts";
import { E4M3_VALUES, encodeE4M3, FP8_BLOCK } from "./fp8.ts";
import { encodeFp8Matrix, writeFp8Fixture } from "./fp8_testing.ts";
import { loadCheckpoint } from "./mod.ts";
import { TensorClaims } from "./claims.ts";
import { openCheckpointStore } from "./store.ts";
import { seededRandom, writeSafetensors } from "./testing.ts";

const ORACLE = new URL("../../testdata/hf-oracle/", import.meta.url).pathname;

/** float8_e4m3fn by its bit fields, written independently of fp8.ts's table. */
function e4m3ByBits(code: number): number {
  const bits = [...Array(8)].map((_, i) => (code >> (7 - i)) & 1);
  const exp = bits[1] * 8 + bits[2] * 4 + bits[3] * 2 + bits[4];
  const man = bits[5] * 4 + bits[6] * 2 + bits[7];
  if (exp === 15 && man === 7) return NaN;
  const mag = exp === 0 ? man * 2 ** -9 : (8 + man) * 2 ** (exp - 10);
  return bits[0] ? -mag : mag;
}

Deno.test("F8_E4M3: every code's value, hand anchors, nearest-even encoding round-trips", () => {
  for (let c = 0; c < 256; c++) {
    const want = e4m3ByBits(c);
    assert.ok(Object.is(E4M3_VALUES[c], want) || E4M3_VALUES[c] === want, `code ${c}`);
  }
  assert.equal(E4M3_VALUES[0x7e], 448);
  assert.equal(E4M3_VALUES[0x38], 1);
  assert.equal(E4M3_VALUES[0x01], 2 ** -9);
  assert.equal(E4M3_VALUES[0xb8], -1);
  for (let c = 0; c < 256; c++) {
    if ((c & 0x7f) === 0x7f) continue;
    assert.equal(E4M3_VALUES[encodeE4M3(E4M3_VALUES[c])], E4M3_VALUES[c], `code ${c}`);
  }
  assert.equal(encodeE4M3(1000), 0x7e, "saturates at 448");
  assert.equal(E4M3_VALUES[encodeE4M3(1.0625)], 1, "a tie goes to the even mantissa");
});

Deno.test("FP8 reader: row blocks across 128-row and 128-column scale blocks decode exactly", async () => {
  const rand = seededRandom(8);
  const rows = 300, cols = 200;
  const values = Float32Array.from({ length: rows * cols }, () => (rand() - 0.5) * 3);
  const { codes, scales } = encodeFp8Matrix(values, rows, cols);
  const dir = await Deno.makeTempDir();
  try {
    await writeSafetensors(join(dir, "model.safetensors"), {
      "w.weight": { dtype: "F8_E4M3", shape: [rows, cols], data: codes },
      "w.weight_scale_inv": { shape: [3, 2], data: scales },
    });
    const store = await openCheckpointStore(dir);
    const ref = new TensorClaims(store).tensor("w.weight", [rows, cols]);
    const exact = (r: number, c: number) =>
      Math.fround(
        e4m3ByBits(codes[r * cols + c]) * scales[Math.floor(r / 128) * 2 + Math.floor(c / 128)],
      );
    const all = await ref.read();
    for (let r = 0; r < rows; r++) {
      for (let c = 0; c < cols; c++) assert.equal(all[r * cols + c], exact(r, c), `${r},${c}`);
    }
    const part = await ref.readRows!(120, 140); // rows 120..259: three block rows
    assert.deepEqual(part, all.subarray(120 * cols, 260 * cols));
    // The encoding is close to the values (relative step of e4m3 is 2^-3 at most, half to round).
    let worst = 0;
    values.forEach((v, i) => worst = Math.max(worst, Math.abs(all[i] - v)));
    assert.ok(worst <= 3 / 2 / 448 * 2 ** 5, `max encoding error ${worst}`);
    assert.equal(FP8_BLOCK, 128);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("FP8 deepseek_v3-a: the reference on the FP8 checkpoint equals it on the decoded F32 twin", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await writeFp8Fixture(join(ORACLE, "deepseek_v3-a"), join(dir, "fp8"), {
      twinDir: join(dir, "twin"),
    });
    const fp8 = await loadCheckpoint(join(dir, "fp8"));
    assert.ok(fp8.tensors.some((t) => t.ref.dtype === "F8_E4M3"), "some weights are FP8");
    const ids = [10, 25, 28, 11, 9, 29, 47, 17];
    const got = forward(await prepareReference(fp8), ids);
    const want = forward(await prepareReference(await loadCheckpoint(join(dir, "twin"))), ids);
    got.forEach((row, t) => assert.deepEqual(row, want[t], `row ${t}`));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("FP8 bad input: missing or mis-shaped scales, unknown FP8 dtype — one-line errors", async () => {
  const dir = await Deno.makeTempDir();
  const name = "model.layers.1.mlp.experts.0.up_proj.weight";
  const cases: [
    string,
    (t: Record<string, { dtype?: string; shape: number[] }>) => void,
    unknown,
    RegExp,
  ][] = [
    [
      "missing",
      (t) => delete t[`${name}_scale_inv`],
      InputError,
      /block scales ".*_scale_inv" \[1, 1\] are missing/,
    ],
    [
      "mis-shaped",
      (t) => (t[`${name}_scale_inv`].shape = [1, 1, 1]),
      InputError,
      /expected F32 \[1, 1\]/,
    ],
    ["E5M2", (t) => (t[name].dtype = "F8_E5M2"), UnsupportedError, /non-float dtype F8_E5M2/],
  ];
  try {
    for (const [label, mutate, kind, message] of cases) {
      const out = join(dir, label);
      await writeFp8Fixture(join(ORACLE, "deepseek_v3-a"), out, { mutate: mutate as never });
      await assert.rejects(() => loadCheckpoint(out), (e: Error) => {
        assert.ok(e instanceof (kind as typeof InputError), `${label}: ${e}`);
        assert.match(e.message, message, label);
        assert.ok(!e.message.includes("\n"), "one line");
        return true;
      });
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
