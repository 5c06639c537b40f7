/**
 * Quantized artifacts on WebGPU against the float64 reference on the same (dequantized) weights:
 * every bit width (2, 3, 4, 8), mixed widths per expert (so an expert block has several
 * precision groups), f16/bf16/f32 dense matrices, with and without shader-f16; the logits within
 * 1e-3 relative, and greedy decoding through the KV cache equal to the reference's.
 */
import assert from "node:assert/strict";
import { loadCheckpoint } from "../compiler/checkpoint/mod.ts";
import { artifactToIR, type TensorEncoding } from "../compiler/emit/mod.ts";
import type { PlacedTensor } from "../compiler/ir.ts";
import { forward, prepareReference } from "../compiler/reference/mod.ts";
import type { QuantBits } from "../schemas/packing.ts";
import { isExpertMatrixRole } from "../schemas/tensors.ts";
import { createWebGpuEngine, openArtifact } from "../runtime/mod.ts";
import { collect, emitTemp, referenceGreedy, relErr } from "./engine_helpers.ts";

const BITS: QuantBits[] = [2, 3, 4, 8];
const CASES: {
  label: string;
  fixture: string;
  bits: (expert: number) => QuantBits;
  f16: boolean;
}[] = [
  ...BITS.map((b) => ({
    label: `q${b}`,
    fixture: "hf-moe/mixtral-packed",
    bits: () => b,
    f16: true,
  })),
  { label: "mixed 2/3/4/8", fixture: "hf-moe/qwen2-moe", bits: (e) => BITS[e % 4], f16: true },
  {
    label: "mixed 2/3/4/8, f16 disabled",
    fixture: "hf-moe/mixtral-classic",
    bits: (e) => BITS[(e + 1) % 4],
    f16: false,
  },
  // Per-head and full-width q/k norms on quantized attention (the split q/k/v path).
  { label: "mixed 2/3/4/8", fixture: "hf-oracle/qwen3_moe-a", bits: (e) => BITS[e % 4], f16: true },
  {
    label: "mixed 2/3/4/8",
    fixture: "hf-oracle/olmoe-a-packed",
    bits: (e) => BITS[(e + 2) % 4],
    f16: true,
  },
  // Granite's multipliers, PhiMoE's LayerNorms/biases/sparsemixer, gpt-oss's sinks, windows,
  // biased router and biased clamped-SwiGLU experts, on quantized experts.
  {
    label: "mixed 2/3/4/8",
    fixture: "hf-oracle/granitemoe-a",
    bits: (e) => BITS[e % 4],
    f16: true,
  },
  {
    label: "mixed 2/3/4/8",
    fixture: "hf-oracle/phimoe-a",
    bits: (e) => BITS[(e + 1) % 4],
    f16: true,
  },
  {
    label: "mixed 2/3/4/8",
    fixture: "hf-oracle/gpt_oss-a",
    bits: (e) => BITS[(e + 3) % 4],
    f16: true,
  },
];

/** embed f32, lm_head bf16, attention and router f16, other matrices quantized. */
function encoding(bits: (expert: number) => QuantBits) {
  return (p: PlacedTensor): TensorEncoding => {
    if (p.ref.shape.length !== 2 || p.role === "embed") return { storage: "f32" };
    if (p.role === "lm_head") return { storage: "bf16" };
    if (p.role.startsWith("attn_") || p.role === "router") return { storage: "f16" };
    const cols = p.ref.shape[1];
    const b = p.expert >= 0 && isExpertMatrixRole(p.role) ? bits(p.expert) : 8;
    return { storage: "q", bits: b, groupSize: cols % 32 === 0 ? 32 : cols, method: "rtn" };
  };
}

for (const c of CASES) {
  Deno.test(`engine quantized ${c.label} (${c.fixture}): logits vs the reference on the same weights (rel ≤ 1e-3), greedy decode`, async () => {
    const ir = await loadCheckpoint(`testdata/${c.fixture}`);
    const path = await emitTemp(ir, { encode: encoding(c.bits) });
    const artifact = await openArtifact(path);
    const model = await prepareReference(await artifactToIR(artifact));
    const ids = [3, 17, 5, 40, 22, 9, 31].map((id) => id % ir.spec.vocabSize);
    const want = forward(model, ids);
    const engine = await createWebGpuEngine(artifact, { f16: c.f16 });
    try {
      assert.equal(engine.f16, c.f16 && engine.device.features.has("shader-f16"));
      const err = relErr(await engine.logits(ids), want);
      console.log(`${c.label} ${c.fixture}: rel err ${err.toExponential(2)}`);
      assert.ok(err <= 1e-3, `rel err ${err}`);
      // Greedy decode through the KV cache equals the reference's argmax continuation.
      const wantIds = referenceGreedy(model, ids.slice(0, 3), 5);
      const gotIds = await collect(engine.generate(ids.slice(0, 3), { maxTokens: 5, stopIds: [] }));
      assert.deepEqual(gotIds, wantIds);
    } finally {
      engine.dispose();
      artifact.close();
      await Deno.remove(path);
    }
  });
}
