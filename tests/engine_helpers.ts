/**
 * Shared helpers of the engine tests that need the compiler: compile a checkpoint to an f32 (or
 * custom-encoded) artifact in .tmp, compare logits, greedy ids through the reference.
 *
 * @module
 */

import { loadCheckpoint } from "../compiler/checkpoint/mod.ts";
import { emitArtifact, type EmitOptions } from "../compiler/emit/mod.ts";
import type { ModelIR } from "../compiler/ir.ts";
import { type ReferenceModel, ReferenceSession } from "../compiler/reference/mod.ts";
import { syntheticIR } from "../compiler/emit/testing.ts";
import type { ModelSpec } from "../schemas/model.ts";
import { mulberry32 } from "../schemas/prng.ts";
import type { ExpectedTensor } from "../schemas/tensors.ts";

await Deno.mkdir(".tmp", { recursive: true });

/** Emits `ir` to a fresh temporary artifact (f32 unless `opts.encode` says otherwise). */
export async function emitTemp(ir: ModelIR, opts: EmitOptions = {}): Promise<string> {
  const path = await Deno.makeTempFile({ dir: ".tmp", suffix: ".moeq" });
  await emitArtifact(ir, path, opts);
  return path;
}

/** Compiles a checkpoint directory to a temporary f32 artifact. */
export async function compileF32(dir: string): Promise<string> {
  return await emitTemp(await loadCheckpoint(dir));
}

/** max |rows[t][i] − flat[t·V + i]| over all rows (flat: row-major, like `hf_logits`). */
export function maxAbsErr(rows: ArrayLike<number>[], flat: ArrayLike<number>): number {
  let e = 0;
  rows.forEach((row, t) => {
    for (let i = 0; i < row.length; i++) {
      const d = Math.abs(row[i] - flat[t * row.length + i]);
      e = Number.isNaN(d) ? Infinity : Math.max(e, d);
    }
  });
  return e;
}

/** max |a − b| / max |b| over all rows. */
export function relErr(a: ArrayLike<number>[], b: ArrayLike<number>[]): number {
  let num = 0, den = 0;
  a.forEach((row, t) => {
    for (let i = 0; i < row.length; i++) {
      const d = Math.abs(row[i] - b[t][i]);
      num = Number.isNaN(d) ? Infinity : Math.max(num, d);
      den = Math.max(den, Math.abs(b[t][i]));
    }
  });
  return num / den;
}

/** Index of the largest value (the lowest on ties). */
export function argmax(row: ArrayLike<number>): number {
  let b = 0;
  for (let i = 1; i < row.length; i++) if (row[i] > row[b]) b = i;
  return b;
}

/** `count` greedy ids after `prompt` through the reference's KV cache. */
export function referenceGreedy(model: ReferenceModel, prompt: number[], count: number): number[] {
  const session = new ReferenceSession(model);
  let row = session.feed(prompt).at(-1)!;
  const out: number[] = [];
  for (let i = 0; i < count; i++) {
    const id = argmax(row);
    out.push(id);
    if (i + 1 < count) row = session.step(id);
  }
  return out;
}

/**
 * Greedy ids with the engine's documented context-shift rule on the float64 reference: when the
 * newest token would be fed at position maxContext, restart from the last ⌊maxContext/2⌋ tokens.
 */
export function referenceShiftGreedy(
  model: ReferenceModel,
  prompt: number[],
  count: number,
  maxContext: number,
): number[] {
  const keep = Math.floor(maxContext / 2);
  let window = prompt.slice();
  let session = new ReferenceSession(model);
  let row = session.feed(window).at(-1)!;
  const out: number[] = [];
  while (out.length < count) {
    const id = argmax(row);
    out.push(id);
    window.push(id);
    if (window.length - 1 < maxContext) {
      row = session.step(id);
    } else {
      window = window.slice(-keep);
      session = new ReferenceSession(model);
      row = session.feed(window).at(-1)!;
    }
  }
  return out;
}

/** Collects what an async generator yields. */
export async function collect(gen: AsyncGenerator<number>): Promise<number[]> {
  const out: number[] = [];
  for await (const id of gen) out.push(id);
  return out;
}

/**
 * A synthetic model of `spec` with seeded values: norm weights 1 ± 0.2, embedding and router
 * ±1, other tensors ±0.3 (seed·1000 + tensor index per tensor).
 */
export function seededSynthetic(spec: ModelSpec, seed: number): ModelIR {
  return syntheticIR(spec, {
    values: (t: ExpectedTensor, i: number) => {
      const rand = mulberry32(seed * 1000 + i);
      const n = t.shape.reduce((a, b) => a * b, 1);
      const [center, scale] = t.role.endsWith("norm")
        ? [1, 0.2]
        : t.role === "embed" || t.role.startsWith("router")
        ? [0, 1]
        : [0, 0.3];
      return Float32Array.from({ length: n }, () => center + scale * (rand() * 2 - 1));
    },
  });
}
