import assert from "node:assert/strict";
import { join } from "node:path";
import { UsageError } from "../../schemas/errors.ts";
import { castMatrix } from "../quantize/cast.ts";
import { quantizeMatrix } from "../quantize/mod.ts";
import { ArtifactWriter } from "./writer.ts";
import { emitArtifact, type TensorEncoding } from "./mod.ts";
import { seededValues } from "./testing.ts";
import { writeSyntheticMixtral } from "../../cli/bench_compile.ts";
import { loadCheckpoint } from "../checkpoint/mod.ts";
import { moeLayers, type PlacedTensor } from "../ir.ts";
import { QuantizePool } from "../parallel/pool.ts";
import { MomentAccumulator } from "./stats.ts";
import { compileModel } from "../compile.ts";
import { rowVariances } from "../stages/weight_scores.ts";
import { TINY_MODEL } from "../../schemas/example_specs.ts";
import { isExpertMatrixRole } from "../../schemas/tensors.ts";
import { inlineRunner } from "../parallel/block.ts";
import { maxVariance } from "../passes/sensitivity.ts";

const meta = (name: string, shape: number[]) => ({
  name,
  stack: "decoder" as const,
  role: "embed",
  layer: -1,
  expert: -1,
  shape,
});
const bytesOf = (a: Uint16Array | Uint32Array | Float32Array) =>
  new Uint8Array(a.buffer, a.byteOffset, a.byteLength);

Deno.test("writer streams: pieces give the bytes of the one-shot calls; misuse is a UsageError", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const [rows, cols] = [70, 64];
    const w = seededValues(rows * cols, 4);
    const q = quantizeMatrix(w, rows, cols, { bits: 3, groupSize: 32, method: "rtn" });
    const wpr = q.codes.length / rows;
    const one = await ArtifactWriter.create(join(dir, "a.moeq"));
    await one.addFloatTensor(meta("f", [rows, cols]), w, "bf16");
    await one.addQuantTensor(meta("q", [rows, cols]), q, "rtn");
    await one.finish({ model: TINY_MODEL });
    const two = await ArtifactWriter.create(join(dir, "b.moeq"));
    const f = two.beginFloatTensor(meta("f", [rows, cols]), "bf16");
    const h = castMatrix(w, "bf16");
    for (let r = 0; r < rows; r += 32) {
      await f.append(bytesOf(h.subarray(r * cols, Math.min(rows, r + 32) * cols)));
    }
    assert.throws(() => two.beginFloatTensor(meta("x", [1, 1]), "f32"), UsageError);
    await f.finish();
    const s = two.beginQuantTensor(meta("q", [rows, cols]), q, "rtn");
    for (let r = 0; r < rows; r += 16) {
      await s.appendCodes(q.codes.subarray(r * wpr, Math.min(rows, r + 16) * wpr));
    }
    await s.finish(q.scales, q.zeros);
    await two.finish({ model: TINY_MODEL });
    assert.deepEqual(
      await Deno.readFile(join(dir, "b.moeq")),
      await Deno.readFile(join(dir, "a.moeq")),
    );

    const three = await ArtifactWriter.create(join(dir, "c.moeq"));
    const short = three.beginFloatTensor(meta("f", [rows, cols]), "f32");
    await short.append(new Uint8Array(8));
    await assert.rejects(() => short.finish(), UsageError); // missing bytes: aborted
    await assert.rejects(() => short.append(new Uint8Array(8)), UsageError);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("emit: row-block streaming (0 and 2 workers) = whole-tensor path byte for byte", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const ckpt = join(dir, "ckpt");
    // 1100 rows: three 512-row blocks, the last one short; vocab 1030 likewise.
    await writeSyntheticMixtral(ckpt, {
      layers: 1,
      hidden: 64,
      intermediate: 1100,
      experts: 2,
      heads: 4,
      kvHeads: 2,
      vocab: 1030,
    }, { shardBytes: 1e6 });
    const ir = await loadCheckpoint(ckpt);
    const encode = (p: PlacedTensor): TensorEncoding =>
      isExpertMatrixRole(p.role)
        ? { storage: "q", bits: p.expert ? 2 : 4, groupSize: 32, method: p.expert ? "hqq" : "rtn" }
        : p.role === "embed"
        ? { storage: "f16" }
        : p.role === "lm_head"
        ? { storage: "bf16" }
        : p.ref.shape.length === 2
        ? { storage: "q", bits: 8, groupSize: 64, method: "rtn" }
        : { storage: "f32" };
    const run = async (name: string, extra: Record<string, unknown>) => {
      const errs: number[] = [];
      const moments = new Map<number, MomentAccumulator>();
      await emitArtifact(ir, join(dir, name), {
        encode,
        onQuantError: (_p, err, ref) => errs.push(err, ref),
        moments: (p) => {
          if (!isExpertMatrixRole(p.role)) return undefined;
          if (!moments.has(p.expert)) moments.set(p.expert, new MomentAccumulator());
          return moments.get(p.expert);
        },
        ...extra,
      });
      const stats = [...moments.values()].map((m) => m.finish());
      return { bytes: await Deno.readFile(join(dir, name)), errs, stats };
    };
    const whole = await run("whole.moeq", { onValues: () => {} });
    const inline = await run("inline.moeq", {});
    const pool = new QuantizePool(2);
    const pooled = await run("pool.moeq", { pool }).finally(() => pool.close());
    assert.deepEqual(inline.bytes, whole.bytes);
    assert.deepEqual(pooled.bytes, whole.bytes);
    assert.deepEqual(inline.errs, whole.errs); // per-block sums in the same order
    assert.deepEqual(pooled.errs, whole.errs);
    assert.deepEqual(pooled.stats, inline.stats);
    for (const [i, s] of inline.stats.entries()) {
      // Whole arrays vs 512-row blocks: the same terms, float64 sums regrouped.
      assert.equal(s.count, whole.stats[i].count);
      assert.equal(s.range, whole.stats[i].range);
      // Regrouping n float64 terms moves a sum by at most ~n·2⁻⁵³ relative (n ≈ 10⁵–10⁶ here), and
      // kurtosis is a ratio of such sums: 1e-10 bounds it (measured: 1.5e-12 on this data).
      const dk = Math.abs(s.kurtosis - whole.stats[i].kurtosis) / s.kurtosis;
      assert.ok(dk <= 1e-10, `kurtosis ${i}: relative difference ${dk}`);
    }

    // MaxVar by row blocks equals maxVariance of the whole matrices exactly.
    const gates = moeLayers(ir)[0].experts.map((e) => e.matrices[0].weight);
    const got: number[] = [];
    await rowVariances(gates, inlineRunner, (i, v) => (got[i] = v));
    const want = await Promise.all(gates.map(async (g) => maxVariance(await g.read(), 1100, 64)));
    assert.deepEqual(got, want);

    // compileModel: 0 and 2 workers give the same file.
    await compileModel(ir, join(dir, "c0.moeq"), { expertBits: 2.5, quantizer: "rtn" });
    await compileModel(ir, join(dir, "c2.moeq"), { expertBits: 2.5, quantizer: "rtn", workers: 2 });
    assert.deepEqual(
      await Deno.readFile(join(dir, "c2.moeq")),
      await Deno.readFile(join(dir, "c0.moeq")),
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
