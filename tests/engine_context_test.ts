/**
 * Context shifting in `generate` against the reference with the same shift rule, and the
 * classic (GPU-style) kernels against the tiled ones on the same artifact.
 */
import assert from "node:assert/strict";
import { loadCheckpoint } from "../compiler/checkpoint/mod.ts";
import type { ModelIR } from "../compiler/ir.ts";
import { prepareReference } from "../compiler/reference/mod.ts";
import { loadModel, readbackCount } from "../runtime/mod.ts";
import { collect, emitTemp, referenceShiftGreedy, relErr } from "./engine_helpers.ts";

/** The reference's greedy ids under the engine's shift rule (engine_helpers.ts). */
async function referenceIds(
  ir: ModelIR,
  prompt: number[],
  count: number,
  maxContext: number,
): Promise<number[]> {
  return referenceShiftGreedy(await prepareReference(ir), prompt, count, maxContext);
}

Deno.test("generate: context shift continues past maxContext, same ids as the reference, no extra readbacks", async () => {
  const ir = await loadCheckpoint("testdata/hf-moe/mixtral-packed");
  const path = await emitTemp(ir);
  const maxContext = 16; // keeps 8 on a shift, so batches of 8 are not clamped
  const engine = await loadModel(path, { maxContext, prefillChunk: 4 });
  const wide = await loadModel(path);
  try {
    const prompt = [1, 2, 3, 4, 5];
    const count = 40; // 5 + 40 tokens: shifts at context 16
    const want = await referenceIds(ir, prompt, count, maxContext);
    const before = readbackCount();
    const got = await collect(engine.generate(prompt, { maxTokens: count, stopIds: [] }));
    assert.equal(
      readbackCount() - before,
      1 + Math.ceil((count - 1) / 8),
      "the first id alone, then one readback per batch of 8",
    );
    assert.deepEqual(got, want);

    // A generation that fits the context is unchanged by the shifting logic: same ids as an
    // engine with a wide context and as the plain reference.
    const fit = await collect(engine.generate(prompt, { maxTokens: 7, stopIds: [] }));
    const fitWide = await collect(wide.generate(prompt, { maxTokens: 7, stopIds: [] }));
    assert.deepEqual(fit, fitWide);
    assert.deepEqual(fit, want.slice(0, 7));

    // Readback batches larger than the kept half are clamped so pending ids survive a shift.
    const big = await collect(
      engine.generate(prompt, { maxTokens: count, readbackEvery: 64, stopIds: [] }),
    );
    assert.deepEqual(big, want);
  } finally {
    engine.dispose();
    wide.dispose();
    await Deno.remove(path);
  }
});

Deno.test("engine classic kernels (GPU style, forced on this adapter): logits match the tiled path", async () => {
  const ir = await loadCheckpoint("testdata/hf-moe/qwen2-moe");
  const path = await emitTemp(ir);
  const a = await loadModel(path, { kernels: "classic" });
  const b = await loadModel(path, { kernels: "tiled" });
  try {
    const ids = [3, 17, 5, 40, 22, 9, 31, 2, 8];
    const err = relErr(await a.logits(ids), await b.logits(ids));
    assert.ok(err <= 1e-5, `classic vs tiled rel err ${err}`);
  } finally {
    a.dispose();
    b.dispose();
    await Deno.remove(path);
  }
});
