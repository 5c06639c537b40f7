import assert from "node:assert/strict";
import { join } from "node:path";
import { InputError, UnsupportedError } from "../../schemas/errors.ts";
import { dequantize } from "../../schemas/packing.ts";
import { loadCheckpoint } from "./mod.ts";
import { writeMxfp4Release } from "./mxfp4_testing.ts";
import { assertFails, writeSafetensors } from "./testing.ts";
import { openSafetensors } from "./safetensors.ts";

const FIXTURE = "testdata/hf-oracle/mixtral-a-packed";
const isExpert = (n: string) => /mlp\.experts\.(gate_up|down)_proj$/.test(n) ? {} : null;

/** A scratch copy of the fixture released in MXFP4, and the decoded values of its experts. */
async function release(): Promise<{ dir: string; decoded: Map<string, Float32Array> }> {
  const dir = await Deno.makeTempDir({ prefix: "moeq-mxfp4-" });
  return { dir, decoded: await writeMxfp4Release(FIXTURE, dir, isExpert) };
}

Deno.test("mxfp4 reader: released experts decode exactly, pass through verbatim", async () => {
  const { dir, decoded } = await release();
  try {
    const ir = await loadCheckpoint(dir);
    const file = await openSafetensors(join(dir, "model.safetensors"));
    const experts = ir.tensors.filter((t) => t.expert >= 0);
    assert.equal(experts.length, 2 * 4 * 3);
    const I = 48, H = 32;
    for (const t of experts) {
      assert.equal(t.ref.dtype, "MXFP4");
      const base = `model.layers.${t.layer}.mlp.experts.${
        t.role === "expert_down" ? "down_proj" : "gate_up_proj"
      }`;
      const [rows, cols] = t.ref.shape;
      const row0 = t.role === "expert_up" ? I : 0;
      const per = t.role === "expert_down" ? H : 2 * I;
      const want = decoded.get(base)!.subarray(
        (t.expert * per + row0) * cols,
        (t.expert * per + row0 + rows) * cols,
      );
      const got = await t.ref.read();
      assert.deepEqual(got, want, `${t.ref.name}: decoded values`);
      assert.deepEqual(await t.ref.readRows!(3, 5), want.subarray(3 * cols, 8 * cols));
      // Pass-through: the released bytes, and they decode to the same values.
      const q = await t.ref.readMxfp4!();
      assert.deepEqual(dequantize(q), want);
      const G = Math.ceil(cols / 32);
      const blocks = await file.readU8(
        `${base}_blocks`,
        (t.expert * per + row0) * G * 16,
        rows * G * 16,
      );
      assert.deepEqual(new Uint8Array(q.codes.buffer), blocks);
    }
    // Non-expert tensors are untouched floats.
    assert.ok(ir.tensors.filter((t) => t.expert < 0).every((t) => t.ref.dtype === "F32"));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

/** The fixture's MXFP4 release with its safetensors tensors edited by `edit`. */
async function editedRelease(
  edit: (t: Record<string, { dtype: string; shape: number[]; data: Uint8Array }>) => void,
  config?: (c: Record<string, unknown>) => void,
): Promise<string> {
  const { dir } = await release();
  const path = join(dir, "model.safetensors");
  const file = await openSafetensors(path);
  const tensors: Record<string, { dtype: string; shape: number[]; data: Uint8Array }> = {};
  for (const [name, info] of file.tensors) {
    const data = info.dtype === "U8"
      ? await file.readU8(name, 0, info.numel)
      : await file.readBytes(name, 0, info.numel);
    tensors[name] = { dtype: info.dtype, shape: [...info.shape], data };
  }
  edit(tensors);
  await writeSafetensors(path, tensors);
  if (config) {
    const c = JSON.parse(await Deno.readTextFile(join(dir, "config.json")));
    config(c);
    await Deno.writeTextFile(join(dir, "config.json"), JSON.stringify(c));
  }
  return dir;
}

const B0 = "model.layers.0.mlp.experts.gate_up_proj_blocks";
const S0 = "model.layers.0.mlp.experts.gate_up_proj_scales";

Deno.test("mxfp4 reader: bad releases are one-line errors naming the tensor", async () => {
  type ErrorClass = Parameters<typeof assertFails>[1];
  const cases: [string, Parameters<typeof editedRelease>, ErrorClass, RegExp][] = [
    [
      "missing scales",
      [(t) => delete t[S0]],
      InputError,
      /gate_up_proj_blocks.*no scales.*_scales/,
    ],
    [
      "scales shape",
      [(t) => t[S0] = { ...t[S0], shape: [4, 48, 2], data: t[S0].data.subarray(0, 4 * 48 * 2) }],
      InputError,
      /gate_up_proj_scales" has shape \[4,48,2\].*need \[4, 96, 1\]/,
    ],
    [
      "blocks shape",
      [(t) => t[B0] = { ...t[B0], shape: [4, 96, 2, 8] }],
      InputError,
      /gate_up_proj_blocks" has shape \[4,96,2,8\], expected \[E, R, 1, 16\]/,
    ],
    [
      "blocks dtype",
      [(t) => t[B0] = { ...t[B0], dtype: "I8" }],
      InputError,
      /gate_up_proj_blocks" has dtype I8/,
    ],
    [
      "no quantization_config",
      [() => {}, (c) => delete c.quantization_config],
      InputError,
      /gate_up_proj_blocks" is MXFP4 but config.json has no quantization_config.quant_method/,
    ],
    [
      "other quant_method",
      [() => {}, (c) => c.quantization_config = { quant_method: "awq" }],
      UnsupportedError,
      /quantization_config.quant_method "awq" is not read by moeq/,
    ],
  ];
  for (const [what, args, cls, pattern] of cases) {
    const dir = await editedRelease(...args);
    try {
      await assertFails(() => loadCheckpoint(dir), cls, pattern);
    } catch (e) {
      throw new Error(`${what}: ${(e as Error).message}`);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  }
  // A NaN scale (255) fails the read, naming the tensor and the block.
  const dir = await editedRelease((t) => t[S0].data[96 + 1] = 255);
  try {
    const ir = await loadCheckpoint(dir);
    const up = ir.tensors.find((t) => t.layer === 0 && t.expert === 1 && t.role === "expert_gate")!;
    await assertFails(
      () => up.ref.read(),
      InputError,
      /gate_up_proj_scales" has the NaN scale 255 at \[1, 1, 0\]/,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
