/**
 * The WebGPU engine on encoder–decoder models (engine/seq2seq.ts) against transformers: an f32
 * artifact of testdata/hf-oracle/switch_transformers-a gives decoder logits within 1e-4 of
 * `hf_logits` and transformers' greedy ids through `generateSeq2Seq`; with expert capacity 2
 * (testdata/hf-oracle-extra/switch-capacity) tokens are refused in both stacks and the logits
 * still match; both kernel styles. A quantized artifact (experts at 2, 3, 4 and 8 bits, dense
 * matrices and self-attention 8-bit, cross-attention and routers f16, the tied embedding bf16) matches the float64 reference
 * on the same weights within 1e-4 relative. Misuse and limits raise typed errors. The engine's
 * relative-position buckets equal the float64 reference's.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { loadCheckpoint } from "../compiler/checkpoint/mod.ts";
import { artifactToIR, type TensorEncoding } from "../compiler/emit/mod.ts";
import type { PlacedTensor } from "../compiler/ir.ts";
import { forwardSeq2Seq, prepareReference } from "../compiler/reference/mod.ts";
import type { QuantBits } from "../schemas/packing.ts";
import { isExpertMatrixRole } from "../schemas/tensors.ts";
import {
  createWebGpuEngine,
  LimitError,
  loadModel,
  openArtifact,
  readbackCount,
  UsageError,
} from "../runtime/mod.ts";
import { relativeBucket as referenceBucket } from "../compiler/reference/relative_bias.ts";
import { relativeBucket } from "../runtime/kernels/relative_bias.ts";
import { collect, compileF32, emitTemp, maxAbsErr, relErr } from "./engine_helpers.ts";
import { withCapacity } from "../schemas/testing.ts";

const TESTDATA = new URL("../testdata/", import.meta.url).pathname;
const ORACLE = join(TESTDATA, "hf-oracle/switch_transformers-a");
const CAPACITY = join(TESTDATA, "hf-oracle-extra/switch-capacity/reference.json");

async function json(path: string) {
  return JSON.parse(await Deno.readTextFile(path));
}

for (const kernels of ["tiled", "classic"] as const) {
  Deno.test(`engine seq2seq (${kernels}) switch_transformers-a: logits within 1e-4 of hf_logits, greedy ids`, async () => {
    const ref = await json(join(ORACLE, "reference.json"));
    const path = await compileF32(ORACLE);
    const engine = await loadModel(path, { kernels });
    try {
      const rows = await engine.logitsSeq2Seq!(ref.encoder_input_ids, ref.decoder_input_ids);
      assert.equal(rows.length, ref.decoder_input_ids.length);
      const err = maxAbsErr(rows, ref.hf_logits);
      console.log(`  switch_transformers-a (${kernels}): max |gpu − hf| = ${err.toExponential(2)}`);
      assert.ok(err <= 1e-4, `max abs error ${err}`);
      const g = ref.greedy_decode;
      const before = readbackCount();
      const ids = await collect(
        engine.generateSeq2Seq!(g.encoder_input_ids, {
          maxTokens: g.generated_ids.length,
          stopIds: [],
          readbackEvery: 4,
        }),
      );
      assert.deepEqual(ids, g.generated_ids);
      // The first id alone, then batches of 4.
      assert.equal(readbackCount() - before, 1 + Math.ceil((g.generated_ids.length - 1) / 4));
    } finally {
      engine.dispose();
      await Deno.remove(path);
    }
  });
}

Deno.test("engine seq2seq: capacity 2 refuses tokens in both stacks as transformers does", async () => {
  const ref = await json(CAPACITY);
  const ir = await loadCheckpoint(ORACLE);
  const path = await emitTemp({ ...ir, spec: withCapacity(ir.spec, ref.expert_capacity) });
  const unlimited = await compileF32(ORACLE);
  const engine = await loadModel(path);
  const classic = await loadModel(path, { kernels: "classic" });
  const plain = await loadModel(unlimited);
  try {
    // The classic style serves experts by scanning the chosen ids (refused: out of range).
    const classicRows = await classic.logitsSeq2Seq!(ref.encoder_input_ids, ref.decoder_input_ids);
    assert.ok(maxAbsErr(classicRows, ref.hf_logits_f64strict) <= 1e-4, "classic kernels");
    const rows = await engine.logitsSeq2Seq!(ref.encoder_input_ids, ref.decoder_input_ids);
    const err = maxAbsErr(rows, ref.hf_logits_f64strict);
    console.log(
      `  switch capacity ${ref.expert_capacity}: max |gpu − hf f64strict| = ${
        err.toExponential(2)
      }`,
    );
    assert.ok(err <= 1e-4, `max abs error ${err}`);
    // Without the capacity limit the same input lands far from the fixture.
    const free = await plain.logitsSeq2Seq!(ref.encoder_input_ids, ref.decoder_input_ids);
    assert.ok(maxAbsErr(free, ref.hf_logits_f64strict) > 1e-2, "capacity changes nothing");
  } finally {
    engine.dispose();
    classic.dispose();
    plain.dispose();
    await Deno.remove(path);
    await Deno.remove(unlimited);
  }
});

Deno.test("engine relative buckets equal the reference's", () => {
  for (const [buckets, maxDistance] of [[8, 16], [32, 128], [33, 100], [64, 512]]) {
    for (const bidirectional of [true, false]) {
      for (let r = -1200; r <= 1200; r++) {
        assert.equal(
          relativeBucket(r, { buckets, maxDistance, bidirectional }),
          referenceBucket(r, bidirectional, buckets, maxDistance),
          `${r} (${buckets}, ${maxDistance}, ${bidirectional})`,
        );
      }
    }
  }
});

/** Embedding bf16, cross-attention and routers f16, experts 2/3/4/8-bit, the rest (self-attention's stacked q/k/v included) 8-bit. */
function encoding(p: PlacedTensor): TensorEncoding {
  const BITS: QuantBits[] = [2, 3, 4, 8];
  if (p.ref.shape.length !== 2 || p.role.endsWith("relative_bias")) return { storage: "f32" };
  if (p.role === "embed") return { storage: "bf16" };
  if (p.role.startsWith("cross_") || p.role === "router") {
    return { storage: "f16" };
  }
  const b = p.expert >= 0 && isExpertMatrixRole(p.role) ? BITS[p.expert % 4] : 8;
  return { storage: "q", bits: b, groupSize: 32, method: "rtn" };
}

Deno.test("engine seq2seq quantized (2/3/4/8-bit experts): logits vs the reference on the same weights, greedy ids", async () => {
  const ref = await json(join(ORACLE, "reference.json"));
  const path = await emitTemp(await loadCheckpoint(ORACLE), { encode: encoding });
  const artifact = await openArtifact(path);
  const model = await prepareReference(await artifactToIR(artifact));
  const engine = await createWebGpuEngine(artifact);
  try {
    const want = forwardSeq2Seq(model, ref.encoder_input_ids, ref.decoder_input_ids);
    const got = await engine.logitsSeq2Seq!(ref.encoder_input_ids, ref.decoder_input_ids);
    const err = relErr(got, want);
    console.log(`  quantized switch_transformers-a: rel err ${err.toExponential(2)}`);
    assert.ok(err <= 1e-4, `rel err ${err}`);
    const ids = await collect(
      engine.generateSeq2Seq!(ref.encoder_input_ids, { maxTokens: 4, stopIds: [] }),
    );
    const wantIds: number[] = [];
    let decoder = [model.spec.decoderStartTokenId!];
    for (let i = 0; i < 4; i++) {
      const rows = forwardSeq2Seq(model, ref.encoder_input_ids, decoder);
      const last = rows[rows.length - 1];
      let best = 0;
      for (let v = 1; v < last.length; v++) if (last[v] > last[best]) best = v;
      wantIds.push(best);
      decoder = [...decoder, best];
    }
    assert.deepEqual(ids, wantIds);
  } finally {
    engine.dispose();
    artifact.close();
    await Deno.remove(path);
  }
});

Deno.test("engine seq2seq: misuse and limits raise UsageError and LimitError", async () => {
  const path = await compileF32(ORACLE);
  const engine = await loadModel(path, { prefillChunk: 8, maxContext: 16 });
  try {
    await assert.rejects(() => engine.logits([1, 2]), UsageError);
    await assert.rejects(() => collect(engine.generate([1, 2])), UsageError);
    const nine = Array.from({ length: 9 }, (_, i) => i + 2);
    await assert.rejects(() => engine.logitsSeq2Seq!(nine, [0]), LimitError);
    await assert.rejects(() => engine.logitsSeq2Seq!([2, 64], [0]), /outside the vocabulary/);
    await assert.rejects(() => collect(engine.generateSeq2Seq!([], {})), UsageError);
    // Generation stops at the decoder's KV capacity.
    const ids = await collect(engine.generateSeq2Seq!([3, 4, 5], { maxTokens: 40, stopIds: [] }));
    assert.equal(ids.length, 16);
  } finally {
    engine.dispose();
    await Deno.remove(path);
  }
});
