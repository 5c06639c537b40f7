/**
 * Test helper: an oracle fixture re-encoded as an FP8 checkpoint the way DeepSeek-V3, Kimi and
 * GLM-4.5 release theirs — every 2-D linear weight except the embedding, lm_head and routers as
 * F8_E4M3 with `weight_scale_inv` (F32, one per 128×128 block: block amax / 448), everything else
 * unchanged — plus, optionally, an F32 twin holding exactly the values the FP8 encoding
 * represents (code · scale, rounded once to f32).
 *
 * @module
 */

import { join } from "node:path";
import { E4M3_VALUES, encodeE4M3, FP8_BLOCK, fp8ScaleName, fp8ScaleShape } from "./fp8.ts";
import { openSafetensors } from "./safetensors.ts";
import { type TestTensor, writeSafetensors } from "./testing.ts";

/** Whether a fixture tensor is stored as FP8 (linear weights; not embeddings, head, routers). */
export function isFp8Weight(name: string, shape: readonly number[]): boolean {
  return shape.length === 2 && name.endsWith(".weight") && !/embed_tokens|lm_head/.test(name) &&
    !/\.mlp\.gate\.weight$/.test(name);
}

/** FP8 codes and block scales of a [rows, cols] matrix. */
export function encodeFp8Matrix(values: ArrayLike<number>, rows: number, cols: number) {
  const [br, bc] = fp8ScaleShape(rows, cols);
  const scales = new Float32Array(br * bc);
  for (let b = 0; b < br * bc; b++) {
    const r0 = Math.floor(b / bc) * FP8_BLOCK, c0 = (b % bc) * FP8_BLOCK;
    let amax = 0;
    for (let r = r0; r < Math.min(rows, r0 + FP8_BLOCK); r++) {
      for (let c = c0; c < Math.min(cols, c0 + FP8_BLOCK); c++) {
        amax = Math.max(amax, Math.abs(values[r * cols + c]));
      }
    }
    scales[b] = amax > 0 ? amax / 448 : 1;
  }
  const codes = new Uint8Array(rows * cols);
  const decoded = new Float32Array(rows * cols);
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < cols; c++) {
      const s = scales[Math.floor(r / FP8_BLOCK) * bc + Math.floor(c / FP8_BLOCK)];
      const code = encodeE4M3(values[r * cols + c] / s);
      codes[r * cols + c] = code;
      decoded[r * cols + c] = E4M3_VALUES[code] * s;
    }
  }
  return { codes, scales, decoded };
}

/** Options of {@link writeFp8Fixture}. */
export interface Fp8FixtureOptions {
  /** Also write the F32 twin with the decoded values here. */
  twinDir?: string;
  /** Edits the FP8 checkpoint's tensors before writing (bad-input tests). */
  mutate?: (tensors: Record<string, TestTensor>) => void;
}

/** Writes `srcDir`'s fixture (single model.safetensors) to `dstDir` with FP8 linear weights. */
export async function writeFp8Fixture(
  srcDir: string,
  dstDir: string,
  opts: Fp8FixtureOptions = {},
): Promise<void> {
  const src = await openSafetensors(join(srcDir, "model.safetensors"));
  const fp8: Record<string, TestTensor> = {};
  const twin: Record<string, TestTensor> = {};
  for (const [name, info] of src.tensors) {
    const values = await src.read(name);
    if (!isFp8Weight(name, info.shape)) {
      fp8[name] = twin[name] = { shape: [...info.shape], data: values };
      continue;
    }
    const [rows, cols] = info.shape;
    const { codes, scales, decoded } = encodeFp8Matrix(values, rows, cols);
    fp8[name] = { dtype: "F8_E4M3", shape: [rows, cols], data: codes };
    fp8[fp8ScaleName(name)] = { shape: fp8ScaleShape(rows, cols), data: scales };
    twin[name] = { shape: [rows, cols], data: decoded };
  }
  opts.mutate?.(fp8);
  for (const [dir, tensors] of [[dstDir, fp8], [opts.twinDir, twin]] as const) {
    if (!dir) continue;
    await Deno.mkdir(dir, { recursive: true });
    for (const entry of Deno.readDirSync(srcDir)) {
      if (entry.isFile && entry.name !== "model.safetensors") {
        await Deno.copyFile(join(srcDir, entry.name), join(dir, entry.name));
      }
    }
    await writeSafetensors(join(dir, "model.safetensors"), tensors);
  }
}
