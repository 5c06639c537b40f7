import assert from "node:assert/strict";
import { join } from "node:path";
import {
  checkpointBytes,
  layersForSize,
  mixtralDims,
  qwen3Dims,
  type SyntheticDims,
  timeCompile,
  writeSyntheticMixtral,
} from "./bench_compile.ts";
import { loadCheckpoint } from "../compiler/checkpoint/mod.ts";
import { moeLayers } from "../compiler/ir.ts";
import { compileModel } from "../compiler/compile.ts";
import { openArtifact } from "../schemas/artifact.ts";

const TINY: SyntheticDims = {
  layers: 6,
  hidden: 64,
  intermediate: 96,
  experts: 64,
  heads: 4,
  kvHeads: 2,
  vocab: 100,
};

Deno.test("layersForSize: Mixtral dims, ≥ the size asked for", () => {
  const l = layersForSize(8);
  assert.ok(checkpointBytes(mixtralDims(l)) >= 8e9);
  assert.ok(checkpointBytes(mixtralDims(l - 1)) < 8e9);
  // One Mixtral layer: attention 2·4096² + 2·1024·4096, 24 expert matrices of 14336·4096, norms, router.
  const perLayer = 2 *
    (2 * 4096 * 4096 + 2 * 1024 * 4096 + 24 * 14336 * 4096 + 2 * 4096 + 8 * 4096);
  assert.equal(checkpointBytes(mixtralDims(2)) - checkpointBytes(mixtralDims(1)), perLayer);
});

Deno.test("writeSyntheticMixtral: a loadable sharded BF16 checkpoint, reused when unchanged", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const g = await writeSyntheticMixtral(dir, TINY, { shardBytes: 200_000 });
    assert.equal(g.reused, false);
    assert.equal(g.bytes, checkpointBytes(TINY));
    const index = JSON.parse(await Deno.readTextFile(join(dir, "model.safetensors.index.json")));
    const shards = new Set(Object.values(index.weight_map));
    assert.ok(shards.size > 1, `${shards.size} shards`);
    const ir = await loadCheckpoint(dir);
    assert.equal(ir.spec.decoder.layers.length, TINY.layers);
    const moe = moeLayers(ir)[2];
    assert.equal(moe.layer, 2);
    const a = await moe.experts[3].matrices[0].weight.read();
    const b = await moe.experts[4].matrices[0].weight.read();
    assert.equal(a.length, TINY.intermediate * TINY.hidden);
    // Random-looking, finite, small, and different per tensor.
    let sq = 0;
    for (const x of a) sq += x * x;
    const std = Math.sqrt(sq / a.length);
    assert.ok(std > 0.005 && std < 0.08, `std ${std}`);
    assert.notDeepEqual(a, b);
    assert.equal((await writeSyntheticMixtral(dir, TINY, { shardBytes: 200_000 })).reused, true);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("compile with 2 workers = single thread byte for byte; header of 1197 tensors in its reserve", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await writeSyntheticMixtral(dir, TINY, { shardBytes: 400_000 });
    const ir = await loadCheckpoint(dir);
    const files: Uint8Array[] = [];
    for (const workers of [0, 2]) {
      const out = join(dir, `w${workers}.moeq`);
      await compileModel(ir, out, {
        expertStorage: { kind: "bits", average: 2.5 },
        quantizer: "hqq",
        workers,
      });
      files.push(await Deno.readFile(out));
    }
    assert.deepEqual(files[0], files[1]);
    const r = await timeCompile(dir, join(dir, "t.moeq"), {
      expertBits: "3",
      quantizer: "rtn",
      workers: 0,
      bytes: checkpointBytes(TINY),
    });
    assert.equal(r.tensors, 6 * (7 + 3 * 64) + 3, `${r.tensors} tensors`);
    assert.equal(r.headerInReserve, true);
    assert.ok(r.passesShare >= 0 && r.passesShare < 1);
    const art = await openArtifact(join(dir, "t.moeq"));
    assert.equal(art.header.tensors.length, r.tensors);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("qwen3-shaped synthetic: loads as qwen3_moe, budget with calibration compiles", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const dims: SyntheticDims = {
      ...qwen3Dims(2),
      hidden: 64,
      intermediate: 64,
      experts: 16,
      heads: 4,
      kvHeads: 2,
      headDim: 32,
      vocab: 300,
    };
    const g = await writeSyntheticMixtral(dir, dims);
    assert.equal(g.bytes, checkpointBytes(dims));
    const ir = await loadCheckpoint(dir);
    assert.equal(ir.spec.decoder.layers.length, 2);
    const moe = moeLayers(ir)[1];
    assert.deepEqual([moe.spec.numExperts, moe.spec.topK], [16, 8]);
    const r = await timeCompile(dir, join(dir, "q.moeq"), {
      expertBits: "2.5",
      quantizer: "rtn",
      workers: 0,
      bytes: g.bytes,
      allocator: "budget",
      calibrationIds: Array.from({ length: 40 }, (_, i) => (i * 37) % dims.vocab),
      sensitivityTokens: 16,
    });
    assert.ok(r.allocationSeconds > 0 && r.allocationSeconds * 1000 < r.timings.total);
    const art = await openArtifact(join(dir, "q.moeq"));
    assert.equal(art.summary.avgExpertBits, 2.5);
    art.close();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
