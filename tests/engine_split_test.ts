/**
 * Matrices larger than a binding, forced on any adapter with a tiny `maxBinding` (a few KiB):
 * every matrix of more than a block's rows is split into row blocks (the head's matmuls write
 * slices of the logits, the embedding gathers from the block holding each id, experts are split
 * in row blocks and in sets), and the prefill chunk shrinks so every activation fits. For every
 * storage format (f32, f16, bf16, 4- and 2-bit groups with f16 scales and zeros, MXFP4), in both
 * kernel styles, the split engine's logits equal the float64 reference on the artifact's own
 * weights and the unsplit engine's, and greedy decoding (last-position head) matches the
 * reference. Also: 256 experts top-8 dispatch as many kernels per token as 8 experts do, and a
 * limit below one row fails with one LimitError naming the tensor or activation.
 */
import assert from "node:assert/strict";
import { artifactToIR } from "../compiler/emit/mod.ts";
import { forward, prepareReference, type ReferenceModel } from "../compiler/reference/mod.ts";
import { openArtifactBytes } from "../schemas/artifact.ts";
import { LimitError } from "../schemas/errors.ts";
import { attentionBlock, decoderOnly, ffnBlock, gqa, mlp, moe } from "../schemas/example_specs.ts";
import type { ModelSpec } from "../schemas/model.ts";
import type { QuantBits, ScaleType } from "../schemas/packing.ts";
import { buildArtifact, randomQuantized, seededValues, toBf16Values } from "../schemas/testing.ts";
import type { ExpectedTensor } from "../schemas/tensors.ts";
import { requestGpu } from "../runtime/device.ts";
import { createWebGpuEngine } from "../runtime/engine/mod.ts";
import { rowBlocks, uploadWeights } from "../runtime/engine/weights.ts";
import { isOneLineError, runCli } from "./cli_helpers.ts";
import { collect, referenceGreedy, relErr } from "./engine_helpers.ts";

/**
 * Hidden 128, vocabulary 96, untied head; layer 0: GQA 4/2 heads of 32 + 8 experts (64) top-2;
 * layer 1: GQA + a dense MLP (96).
 */
function splitModel(experts = 8, topK = 2, intermediate = 64): ModelSpec {
  return decoderOnly("qwen3_moe", 96, 128, [
    [attentionBlock(gqa(4, 2, 32)), ffnBlock(moe(experts, topK, mlp(intermediate)))],
    [attentionBlock(gqa(4, 2, 32)), ffnBlock(mlp(96))],
  ]);
}

type Storage =
  | { kind: "f32" | "f16" | "bf16" }
  | { kind: "q"; bits: QuantBits; groupSize: number; scaleType: ScaleType };

type Styles = ("tiled" | "classic")[];

/**
 * Each format with a binding limit that splits its matrices into blocks of a few rows, and the
 * kernel styles it runs in (both for f32 and a q-format; the others share their code paths).
 */
const FORMATS: {
  name: string;
  storage: Storage;
  maxBinding: number;
  styles: Styles;
  /** Tolerance vs the float64 reference (default TOL; vs the unsplit engine always TOL). */
  refTol?: number;
}[] = [
  { name: "f32", storage: { kind: "f32" }, maxBinding: 8192, styles: ["tiled", "classic"] },
  { name: "f16", storage: { kind: "f16" }, maxBinding: 8192, styles: ["tiled"] },
  { name: "bf16", storage: { kind: "bf16" }, maxBinding: 8192, styles: ["classic"] },
  {
    name: "q4g32f16",
    storage: { kind: "q", bits: 4, groupSize: 32, scaleType: "f16" },
    maxBinding: 2048,
    styles: ["tiled", "classic"],
  },
  {
    name: "q2g64f16",
    storage: { kind: "q", bits: 2, groupSize: 64, scaleType: "f16" },
    maxBinding: 1536,
    styles: ["tiled"],
  },
  {
    name: "mxfp4",
    storage: { kind: "q", bits: 4, groupSize: 32, scaleType: "e8m0" },
    maxBinding: 2048,
    styles: ["tiled"],
    // e2m1 values up to 6 × scale: larger activations, more f32 rounding than the others.
    refTol: 5e-5,
  },
];

/** An artifact of `spec` with every matrix stored as `storage`, vectors f32 (norms near 1). */
function artifactBytes(spec: ModelSpec, storage: Storage, seed: number): Uint8Array {
  return buildArtifact(spec, {
    content: (t: ExpectedTensor, i: number) => {
      const n = t.shape.reduce((a, b) => a * b, 1);
      const values = seededValues(n, seed * 1000 + i);
      if (t.shape.length !== 2) {
        if (t.role.endsWith("norm")) values.forEach((v, j) => values[j] = 1 + 0.2 * v);
        return { storage: "f32", values };
      }
      if (storage.kind === "q") {
        const [rows, cols] = t.shape;
        return {
          storage: "q",
          tensor: randomQuantized(rows, cols, storage, seed * 1000 + i),
          quantizer: storage.scaleType === "e8m0" ? "mxfp4-release" : "rtn",
        };
      }
      if (storage.kind === "bf16") return { storage: "bf16", values: toBf16Values(values) };
      return { storage: storage.kind, values };
    },
  });
}

/** The float64 reference on an artifact's stored weights. */
async function referenceOf(bytes: Uint8Array): Promise<ReferenceModel> {
  return await prepareReference(await artifactToIR(await openArtifactBytes(bytes)));
}

const IDS = [3, 17, 5, 40, 22, 9, 31, 95, 0];
const TOL = 1e-5;

for (const { name, storage, maxBinding, styles, refTol = TOL } of FORMATS) {
  Deno.test(`split: ${name} with maxBinding ${maxBinding} = reference (rel ≤ ${refTol}) = unsplit (rel ≤ ${TOL}), ${styles}`, async () => {
    const spec = splitModel();
    const bytes = artifactBytes(spec, storage, 3);
    const model = await referenceOf(bytes);
    const want = forward(model, IDS);
    const wantIds = referenceGreedy(model, IDS.slice(0, 4), 5);

    // The limit splits the matrices: the embedding and head into several blocks, every expert
    // into row blocks, the projections wherever they exceed it.
    const gpu = await requestGpu();
    try {
      const w = await uploadWeights(gpu.device, await openArtifactBytes(bytes), {
        fuse: true,
        maxBinding,
      });
      const moeBlock = w.layers[0].blocks[1];
      assert.ok(moeBlock.kind === "moe" && moeBlock.experts.kind === "stacked");
      const blocks = {
        embed: w.embed.blocks.length,
        head: w.head.blocks.length,
        o: w.layers[0].blocks[0].kind === "attention" ? w.layers[0].blocks[0].o.blocks.length : 0,
        expertGateUpSets: moeBlock.experts.gateUp.length,
        expertRowBlocks: new Set(moeBlock.experts.down.map((s) => s.row0)).size,
      };
      console.log(`${name}: blocks ${JSON.stringify(blocks)}`);
      assert.ok(blocks.embed >= 2 && blocks.head >= 2 && blocks.o >= 2, JSON.stringify(blocks));
      assert.ok(blocks.expertGateUpSets > 8 && blocks.expertRowBlocks >= 2, JSON.stringify(blocks));
    } finally {
      gpu.device.destroy();
    }

    for (const kernels of styles) {
      const whole = await createWebGpuEngine(await openArtifactBytes(bytes), {
        kernels,
        prefillChunk: 16,
      });
      const split = await createWebGpuEngine(await openArtifactBytes(bytes), {
        kernels,
        prefillChunk: 16,
        maxBinding,
      });
      try {
        assert.ok(split.dispatchesPerToken > whole.dispatchesPerToken);
        assert.ok(split.prefillChunk < 16, `chunk ${split.prefillChunk}`);
        const got = await split.logits(IDS);
        const err = relErr(got, want);
        const vsWhole = relErr(got, await whole.logits(IDS));
        console.log(
          `${name} (${kernels}): chunk ${split.prefillChunk}, ${split.dispatchesPerToken} vs ` +
            `${whole.dispatchesPerToken} dispatches/token; rel err vs reference ` +
            `${err.toExponential(2)}, vs unsplit ${vsWhole.toExponential(2)}`,
        );
        assert.ok(err <= refTol, `rel err vs reference ${err}`);
        assert.ok(vsWhole <= TOL, `rel err vs unsplit ${vsWhole}`);
        const ids = await collect(split.generate(IDS.slice(0, 4), { maxTokens: 5, stopIds: [] }));
        assert.deepEqual(ids, wantIds);
      } finally {
        split.dispose();
        whole.dispose();
      }
    }
  });
}

Deno.test("split: 256 experts top-8 = reference, with as many dispatches per token as 8 experts", async () => {
  const big = artifactBytes(splitModel(256, 8, 16), { kind: "f16" }, 5);
  const small = artifactBytes(splitModel(8, 8, 16), { kind: "f16" }, 5);
  const want = forward(await referenceOf(big), IDS);
  for (const kernels of ["tiled", "classic"] as const) {
    const a = await createWebGpuEngine(await openArtifactBytes(big), { kernels });
    const b = await createWebGpuEngine(await openArtifactBytes(small), { kernels });
    try {
      assert.equal(a.dispatchesPerToken, b.dispatchesPerToken);
      const err = relErr(await a.logits(IDS), want);
      console.log(`256 experts top-8 (${kernels}): rel err ${err.toExponential(2)}`);
      assert.ok(err <= TOL, `rel err ${err}`);
    } finally {
      a.dispose();
      b.dispose();
    }
  }
});

Deno.test("split: a limit below one row is one LimitError naming the tensor or activation", async () => {
  const bytes = artifactBytes(splitModel(), { kind: "f32" }, 3);
  const gpu = await requestGpu();
  try {
    await assert.rejects(
      uploadWeights(gpu.device, await openArtifactBytes(bytes), { fuse: false, maxBinding: 256 }),
      (e: unknown) =>
        e instanceof LimitError && /^tensor decoder\/-1\/-1\/embed: one row \(512 bytes\)/.test(
          e.message,
        ) && !e.message.includes("\n"),
    );
  } finally {
    gpu.device.destroy();
  }
  await assert.rejects(
    createWebGpuEngine(await openArtifactBytes(bytes), { maxBinding: 256 }),
    (e: unknown) =>
      e instanceof LimitError && /^activation hidden: one token needs 512 bytes/.test(e.message),
  );
});

Deno.test("cli logits --max-binding: split logits = reference; too small → exit 5; bad value → 2", async () => {
  const bytes = artifactBytes(splitModel(), { kind: "f16" }, 7);
  const want = forward(await referenceOf(bytes), IDS.slice(0, 3));
  const path = await Deno.makeTempFile({ dir: ".tmp", suffix: ".moeq" });
  try {
    await Deno.writeFile(path, bytes);
    const ids = ["--ids", IDS.slice(0, 3).join(",")];
    const ok = await runCli(["logits", path, ...ids, "--max-binding", "8192", "--json"]);
    assert.equal(ok.code, 0, ok.stderr);
    const err = relErr(JSON.parse(ok.stdout).logits, want);
    assert.ok(err <= TOL, `rel err ${err}`);
    const small = await runCli(["logits", path, ...ids, "--max-binding", "256"]);
    assert.equal(small.code, 5);
    assert.ok(isOneLineError(small.stderr) && /activation hidden/.test(small.stderr));
    const bad = await runCli(["logits", path, ...ids, "--max-binding", "1k"]);
    assert.equal(bad.code, 2);
    assert.ok(isOneLineError(bad.stderr) && /--max-binding/.test(bad.stderr), bad.stderr);
  } finally {
    await Deno.remove(path);
  }
});

Deno.test("rowBlocks: fewest equal blocks, multiples of 8 rows when free, all rows once", () => {
  const f32 = { kind: "f32" } as const;
  assert.deepEqual(rowBlocks(f32, 10, 4, 1, 1 << 20, "m"), [[0, 10]]);
  // 16 bytes a row: 100 rows of at most 40 per block → 3 blocks of 40, 40, 20.
  assert.deepEqual(rowBlocks(f32, 100, 4, 1, 640, "m"), [[0, 40], [40, 80], [80, 100]]);
  // [gate; up] pairs: half the rows per block.
  assert.deepEqual(rowBlocks(f32, 30, 4, 2, 640, "m"), [[0, 16], [16, 30]]);
  assert.throws(() => rowBlocks(f32, 30, 4, 2, 16, "m"), LimitError);
});
