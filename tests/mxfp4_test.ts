/**
 * MXFP4 end to end on a Mixtral-layout fixture (testdata/hf-oracle/mixtral-a-packed) made an
 * MXFP4 release by the project's own helper (compiler/checkpoint/mxfp4_testing.ts):
 *
 * - `--expert-bits mxfp4` keeps every expert as released: the artifact's codes are the release's
 *   bytes, its dequantized experts bit-identical to the checkpoint's decoded ones, and WebGPU
 *   logits equal the float64 reference on those weights (max abs 1e-4), greedy ids too;
 * - the budget allocator mixes MXFP4 and 3-bit experts under a 3.5 average, and a float
 *   checkpoint's experts can be quantized to MXFP4.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { loadCheckpoint } from "../compiler/checkpoint/mod.ts";
import { writeMxfp4Release } from "../compiler/checkpoint/mxfp4_testing.ts";
import { compileModel } from "../compiler/compile.ts";
import { resolvePlan } from "../compiler/stages/plan.ts";
import { forward, prepareReference } from "../compiler/reference/mod.ts";
import { openArtifact as openArtifactFile } from "../schemas/artifact.ts";
import { createWebGpuEngine, openArtifact } from "../runtime/mod.ts";
import { collect, referenceGreedy } from "./engine_helpers.ts";
import { openSafetensors } from "../compiler/checkpoint/safetensors.ts";

const FIXTURE = "testdata/hf-oracle/mixtral-a-packed";
const release = await Deno.makeTempDir({ dir: ".tmp", prefix: "mxfp4-release-" });
await writeMxfp4Release(
  FIXTURE,
  release,
  (n) => /mlp\.experts\.(gate_up|down)_proj$/.test(n) ? {} : null,
);
const IDS = [3, 17, 5, 40, 22, 9, 31];

Deno.test("mxfp4 e2e: --expert-bits mxfp4 keeps released experts bit-exact; WebGPU = reference (1e-4)", async () => {
  const ir = await loadCheckpoint(release);
  const path = join(release, "mx.moeq");
  await compileModel(ir, path, {
    expertStorage: { kind: "bits", average: 4.25 },
    denseStorage: { kind: "float", storage: "f32" },
    allocator: "uniform",
  });
  const file = await openArtifactFile(path);
  const st = await openSafetensors(join(release, "model.safetensors"));
  try {
    const experts = file.tensors.filter((t) => t.expert >= 0);
    assert.equal(experts.length, 24);
    for (const t of experts) {
      assert.deepEqual(
        [t.quant?.scaleType, t.quant?.bits, t.quant?.groupSize, t.quant?.quantizer],
        ["e8m0", 4, 32, "mxfp4-release"],
      );
      const src = ir.tensors.find((p) =>
        p.layer === t.layer && p.expert === t.expert && p.role === t.role
      )!;
      // Dequantized expert = the checkpoint's decoded values, bit for bit.
      assert.deepEqual(await file.readF32(t), await src.ref.read(), t.name);
      // Codes = the released bytes.
      const q = await file.readQuantized(t);
      const released = await src.ref.readMxfp4!();
      assert.deepEqual(new Uint8Array(q.codes.buffer), new Uint8Array(released.codes.buffer));
      assert.deepEqual(q.scales, released.scales);
    }
    assert.equal(file.summary.avgExpertBits, 4.25);
    const blocks = st.tensors.get("model.layers.0.mlp.experts.gate_up_proj_blocks")!;
    assert.deepEqual(blocks.shape, [4, 96, 1, 16]);
  } finally {
    file.close();
  }

  const artifact = await openArtifact(path);
  const model = await prepareReference(ir); // the release's weights, decoded by the reader
  const engine = await createWebGpuEngine(artifact);
  try {
    const want = forward(model, IDS);
    const got = await engine.logits(IDS);
    let err = 0;
    got.forEach((row, t) => row.forEach((v, i) => err = Math.max(err, Math.abs(v - want[t][i]))));
    console.log(`mxfp4 release on WebGPU: max abs logit error vs float64 ${err.toExponential(2)}`);
    assert.ok(err <= 1e-4, `max abs err ${err}`);
    const wantIds = referenceGreedy(model, IDS.slice(0, 3), 6);
    assert.deepEqual(
      await collect(engine.generate(IDS.slice(0, 3), { maxTokens: 6, stopIds: [] })),
      wantIds,
    );
  } finally {
    engine.dispose();
    artifact.close();
  }
});

Deno.test("mxfp4 e2e: budget mixes mxfp4 and 3-bit at 3.5; float experts quantize to MXFP4", async () => {
  for (const [dir, quantizer] of [[release, "mxfp4-release"], [FIXTURE, "mxfp4"]]) {
    const ir = await loadCheckpoint(dir);
    const path = join(release, "mix.moeq");
    const result = await compileModel(ir, path, {
      expertStorage: { kind: "bits", average: 3.5 },
      allocator: "budget",
      widths: [3, 4.25],
      groupSize: 32,
    });
    const summary = result.allocation!;
    assert.deepEqual(summary.levels, [3, 4.25]);
    // A release has MXFP4 among the budget's default widths; a float model has not.
    const plan = resolvePlan(ir, { expertStorage: { kind: "bits", average: 3.5 } });
    assert.deepEqual(plan.widths, dir === release ? [2, 3, 4, 4.25] : [2, 3, 4]);
    // 8 equal experts: 3 + 1.25·k/8 ≤ 3.5 → k = 3 MXFP4 experts (the largest total below 3.5).
    assert.equal(summary.achievedAverage, 3 + 1.25 * 3 / 8);
    const file = await openArtifactFile(path);
    try {
      const expertQuant = file.tensors.filter((t) => t.expert >= 0).map((t) => t.quant!);
      assert.ok(expertQuant.some((q) => q.scaleType === "e8m0" && q.quantizer === quantizer));
      assert.ok(expertQuant.some((q) => q.bits === 3 && q.scaleType === "f16"));
      assert.equal(file.summary.avgExpertBits, summary.achievedAverage);
      assert.equal(expertQuant.filter((q) => q.scaleType === "e8m0").length, 3 * 3);
    } finally {
      file.close();
    }
  }
});

Deno.test("mxfp4 e2e gpt_oss: a release made from gpt_oss-a compiles with --expert-bits mxfp4; experts bit-identical, WebGPU = reference (1e-4)", async () => {
  const dir = join(release, "gpt_oss");
  // gpt-oss keeps experts as x·W ([E, H, 2I], [E, I, H]); releases store W ([E, 2I, H/32, 16]).
  const decoded = await writeMxfp4Release(
    "testdata/hf-oracle/gpt_oss-a",
    dir,
    (n) => /mlp\.experts\.(gate_up|down)_proj$/.test(n) ? { transpose: true } : null,
  );
  const path = join(dir, "mx.moeq");
  const cli = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      "cli.ts",
      "compile",
      dir,
      "-o",
      path,
      "--expert-bits",
      "mxfp4",
      "--dense-bits",
      "f32",
    ],
    stdout: "piped",
    stderr: "piped",
  });
  const out = await cli.output();
  assert.equal(out.code, 0, new TextDecoder().decode(out.stderr));
  const ir = await loadCheckpoint(dir);
  const artifact = await openArtifact(path);
  try {
    const [H, I] = [32, 24];
    for (const t of artifact.tensors.filter((t) => t.expert >= 0 && t.quant)) {
      assert.equal(t.quant!.quantizer, "mxfp4-release", t.name);
      const got = await artifact.readF32(t);
      // The checkpoint's decoded weights, taken straight from the helper's [E, in, out] tensor.
      const down = t.role === "expert_down";
      const src = decoded.get(
        `model.layers.${t.layer}.mlp.experts.${down ? "down" : "gate_up"}_proj`,
      )!;
      const [rows, cols] = t.shape;
      const outDim = down ? H : 2 * I;
      for (let r = 0; r < rows; r++) {
        const o = down ? r : 2 * r + (t.role === "expert_up" ? 1 : 0);
        for (let c = 0; c < cols; c++) {
          const want = src[(t.expert * cols + c) * outDim + o];
          if (got[r * cols + c] !== want) {
            assert.fail(`${t.name} [${r}, ${c}]: ${got[r * cols + c]} ≠ ${want}`);
          }
        }
      }
    }
    assert.equal(artifact.tensors.filter((t) => t.quant).length, 2 * 4 * 3);
    const model = await prepareReference(ir);
    const engine = await createWebGpuEngine(artifact);
    try {
      const want = forward(model, IDS);
      const got = await engine.logits(IDS);
      let err = 0;
      got.forEach((row, t) => row.forEach((v, i) => err = Math.max(err, Math.abs(v - want[t][i]))));
      console.log(`gpt_oss MXFP4 release on WebGPU: max abs logit error ${err.toExponential(2)}`);
      assert.ok(err <= 1e-4, `max abs err ${err}`);
      const wantIds = referenceGreedy(model, IDS.slice(0, 3), 6);
      const gotIds = await collect(engine.generate(IDS.slice(0, 3), { maxTokens: 6, stopIds: [] }));
      assert.deepEqual(gotIds, wantIds);
    } finally {
      engine.dispose();
    }
  } finally {
    artifact.close();
  }
});

Deno.test({
  name: "mxfp4 e2e: cleanup",
  fn: async () => await Deno.remove(release, { recursive: true }),
});
