// Passes and allocation on an encoder–decoder model (the Switch oracle: one MoE layer in each
// stack): Λ against a step-0 checkpoint and MaxVar of `wi` for the experts of both stacks; the
// budget allocator with calibration examples run teacher-forced; the artifact evaluates.

import assert from "node:assert/strict";
import { openArtifact } from "../schemas/artifact.ts";
import { loadCheckpoint } from "./checkpoint/mod.ts";
import { compileModel } from "./compile.ts";
import { artifactToIR } from "./emit/mod.ts";
import { type ModelIR, moeLayers } from "./ir.ts";
import { maxVariance } from "./passes/mod.ts";
import { evaluateSpans, forwardSeq2Seq, prepareReference, type Span } from "./reference/mod.ts";

const DIR = new URL("../testdata/hf-oracle/switch_transformers-a", import.meta.url).pathname;

/** The same model with router row e scaled by 1 + e/10: a stand-in step-0 checkpoint. */
function scaledRouters(ir: ModelIR): ModelIR {
  return {
    ...ir,
    tensors: ir.tensors.map((t) => {
      if (t.role !== "router") return t;
      const [E, H] = t.ref.shape;
      const read = async () => {
        const w = await t.ref.read();
        for (let e = 0; e < E; e++) for (let c = 0; c < H; c++) w[e * H + c] *= 1 + e / 10;
        return w;
      };
      return { ...t, ref: { name: t.ref.name, shape: t.ref.shape, dtype: t.ref.dtype, read } };
    }),
  };
}

/** Six short examples over the oracle's vocabulary. */
const SPANS: Span[] = Array.from({ length: 6 }, (_, i) => ({
  inputIds: Array.from({ length: 10 }, (_, t) => (7 * i + 3 * t + 2) % 64),
  labels: Array.from({ length: 5 }, (_, t) => (5 * i + 11 * t + 4) % 64),
}));

Deno.test("seq2seq paper: Λ from --init and MaxVar of wi for the experts of both stacks", async () => {
  const ir = await loadCheckpoint(DIR);
  const dir = await Deno.makeTempDir({ prefix: "moeq-s2s-" });
  try {
    const r = await compileModel(ir, `${dir}/p.moeq`, {
      expertStorage: { kind: "bits", average: 2.5 },
      allocator: "paper",
      quantizer: "rtn",
      init: scaledRouters(ir),
    });
    assert.deepEqual([...new Set(r.experts.map((x) => `${x.stack}/${x.layer}`))], [
      "encoder/1",
      "decoder/1",
    ]);
    const layers = moeLayers(ir);
    for (const row of r.experts) {
      const layer = layers.find((l) => l.stack === row.stack && l.layer === row.layer)!;
      const wi = layer.experts[row.expert].matrices[0];
      assert.equal(wi.name, "up");
      assert.equal(row.scores.maxVar, maxVariance(await wi.weight.read(), 32, 32));
      // Λ = ‖w‖ − ‖w_init‖ = −(e/10)·‖w‖: zero for expert 0, negative after.
      if (row.expert === 0) assert.ok(Math.abs(row.scores.lambda) < 1e-6, `${row.scores.lambda}`);
      else assert.ok(row.scores.lambda < 0, `${row.stack} ${row.expert}: ${row.scores.lambda}`);
    }
    assert.equal(r.allocation!.achievedAverage, 2.5);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("seq2seq budget: calibration examples route both stacks; the artifact evaluates", async () => {
  const ir = await loadCheckpoint(DIR);
  const dir = await Deno.makeTempDir({ prefix: "moeq-s2s-" });
  try {
    const path = `${dir}/b.moeq`;
    const r = await compileModel(ir, path, {
      expertStorage: { kind: "bits", average: 2.5 },
      allocator: "budget",
      quantizer: "rtn",
      calibrationSpans: SPANS,
    });
    assert.equal(r.allocation!.achievedAverage, 2.5);
    for (const stack of ["encoder", "decoder"]) {
      const rows = r.experts.filter((x) => x.stack === stack);
      assert.equal(rows.length, 4);
      assert.ok(rows.some((x) => x.scores.frequency > 0), `${stack}: no routed tokens`);
    }
    const float = await prepareReference(ir);
    const artifact = await openArtifact(path);
    const quantized = await prepareReference(await artifactToIR(artifact));
    artifact.close();
    const score = async (m: typeof float) =>
      (await evaluateSpans((e, d) => forwardSeq2Seq(m, e, d), SPANS, 0)).bitsPerToken;
    const [f, q] = [await score(float), await score(quantized)];
    assert.ok(
      Number.isFinite(q) && q !== f && Math.abs(q - f) / f < 0.1,
      `float ${f}, 2.5-bit ${q}`,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
