/**
 * Test helper: turns a float checkpoint into an MXFP4 release (the gpt-oss layout read by
 * checkpoint/mxfp4.ts): chosen expert tensors become `<name>_blocks` (U8 [E, R, G, 16], two e2m1
 * codes per byte, low nibble first) and `<name>_scales` (U8 e8m0 [E, R, G]), quantized by
 * compiler/quantize/mxfp4.ts, and config.json gains `quantization_config.quant_method = "mxfp4"`.
 * Not used by the compiler itself.
 *
 * @module
 */

import { join } from "node:path";
import { dequantize, groupsPerRow, MXFP4_GROUP } from "../../schemas/packing.ts";
import { quantizeMxfp4 } from "../quantize/mxfp4.ts";
import { openSafetensors } from "./safetensors.ts";
import { type TestTensor, writeSafetensors } from "./testing.ts";

/** An MXFP4 pair made from float values, with the values it decodes to. */
export interface Mxfp4Pair {
  blocks: TestTensor;
  scales: TestTensor;
  /** The decoded values, in the source tensor's shape and orientation. */
  decoded: Float32Array;
}

/**
 * Quantizes a float tensor [E, A, B] to an MXFP4 pair. Blocks run along the last dimension of
 * the stored matrix: B (rows A) as given, or, with `transpose` (a transformers tensor stored as
 * [E, in, out], like gpt-oss's `gate_up_proj`), along A of the transposed [E, B, A].
 */
export function mxfp4Pair(
  values: Float32Array,
  shape: readonly [number, number, number],
  transpose = false,
): Mxfp4Pair {
  const [E, A, B] = shape;
  const [R, C] = transpose ? [B, A] : [A, B];
  const m = new Float32Array(E * R * C);
  for (let e = 0; e < E; e++) {
    for (let a = 0; a < A; a++) {
      for (let b = 0; b < B; b++) {
        const v = values[(e * A + a) * B + b];
        m[transpose ? (e * B + b) * A + a : (e * A + a) * B + b] = v;
      }
    }
  }
  const t = quantizeMxfp4(m, E * R, C);
  const G = groupsPerRow(C, MXFP4_GROUP);
  const dq = dequantize(t);
  const decoded = new Float32Array(values.length);
  for (let e = 0; e < E; e++) {
    for (let a = 0; a < A; a++) {
      for (let b = 0; b < B; b++) {
        decoded[(e * A + a) * B + b] = dq[transpose ? (e * B + b) * A + a : (e * A + a) * B + b];
      }
    }
  }
  return {
    blocks: { dtype: "U8", shape: [E, R, G, 16], data: new Uint8Array(t.codes.buffer) },
    scales: { dtype: "U8", shape: [E, R, G], data: t.scales as Uint8Array },
    decoded,
  };
}

/**
 * Writes `dest` as an MXFP4 release of the single-file checkpoint `src`: every tensor for which
 * `pick(name)` returns options becomes a `<name>_blocks` / `<name>_scales` pair (a 3-D float
 * tensor), the others are copied as they are, as are the other files; config.json gets
 * `quantization_config` ({quant_method: "mxfp4"} plus `extra`). Returns the decoded values of the
 * converted tensors by their source name.
 */
export async function writeMxfp4Release(
  src: string,
  dest: string,
  pick: (name: string) => { transpose?: boolean } | null,
  extra: Record<string, unknown> = {},
): Promise<Map<string, Float32Array>> {
  await Deno.mkdir(dest, { recursive: true });
  for await (const f of Deno.readDir(src)) {
    if (f.isFile && f.name !== "model.safetensors" && f.name !== "config.json") {
      await Deno.copyFile(join(src, f.name), join(dest, f.name));
    }
  }
  const config = JSON.parse(await Deno.readTextFile(join(src, "config.json")));
  config.quantization_config = { quant_method: "mxfp4", ...extra };
  await Deno.writeTextFile(join(dest, "config.json"), JSON.stringify(config, null, 2));
  const file = await openSafetensors(join(src, "model.safetensors"));
  const out: Record<string, TestTensor> = {};
  const decoded = new Map<string, Float32Array>();
  for (const [name, info] of file.tensors) {
    const opts = pick(name);
    if (opts && info.shape.length === 3) {
      const p = mxfp4Pair(
        await file.read(name),
        info.shape as [number, number, number],
        opts.transpose,
      );
      out[`${name}_blocks`] = p.blocks;
      out[`${name}_scales`] = p.scales;
      decoded.set(name, p.decoded);
    } else {
      out[name] = {
        dtype: info.dtype,
        shape: [...info.shape],
        data: await file.readBytes(name, 0, info.numel),
      };
    }
  }
  await writeSafetensors(join(dest, "model.safetensors"), out);
  return decoded;
}
