/**
 * Quantized artifacts of the DeepSeek-style fixtures (deepseek_v2/v3 with MLA, glm4_moe,
 * ernie4_5_moe) on WebGPU against the float64 reference on the same dequantized weights: each
 * expert bit width (2, 3, 4, 8) and mixed widths per expert, shared experts and dense layers at
 * 8 bits, MLA's kv_b quantized (read by the absorption kernels through the shared decode); logits
 * within 1e-3 relative, greedy decoding through the (latent) KV cache equal to the reference's.
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
const CASES: { label: string; fixture: string; bits: (expert: number) => QuantBits }[] = [
  { label: "q2", fixture: "deepseek_v2-a", bits: () => 2 },
  { label: "mixed 2/3/4/8", fixture: "deepseek_v3-a-packed", bits: (e) => BITS[e % 4] },
  { label: "q4", fixture: "glm4_moe-a", bits: () => 4 },
  { label: "mixed 3/8", fixture: "ernie4_5_moe-a", bits: (e) => (e % 2 ? 8 : 3) },
];

/** embed f32, lm_head bf16, router f16, attention f16 but MLA's kv_b q8, other matrices quantized. */
function encoding(bits: (expert: number) => QuantBits) {
  return (p: PlacedTensor): TensorEncoding => {
    if (p.ref.shape.length !== 2 || p.role === "embed") return { storage: "f32" };
    if (p.role === "lm_head") return { storage: "bf16" };
    const cols = p.ref.shape[1];
    const groupSize = cols % 32 === 0 ? 32 : cols;
    if (p.role === "attn_kv_b") return { storage: "q", bits: 8, groupSize, method: "rtn" };
    if (p.role.startsWith("attn_") || p.role === "router") return { storage: "f16" };
    const b = p.expert >= 0 && isExpertMatrixRole(p.role) ? bits(p.expert) : 8;
    return { storage: "q", bits: b, groupSize, method: "rtn" };
  };
}

for (const c of CASES) {
  Deno.test(`engine quantized ${c.label} (${c.fixture}): logits vs the reference on the same weights (rel ≤ 1e-3), greedy decode`, async () => {
    const ir = await loadCheckpoint(`testdata/hf-oracle/${c.fixture}`);
    const path = await emitTemp(ir, { encode: encoding(c.bits) });
    const artifact = await openArtifact(path);
    const model = await prepareReference(await artifactToIR(artifact));
    const ids = [3, 17, 5, 40, 22, 9, 31].map((id) => id % ir.spec.vocabSize);
    const want = forward(model, ids);
    const engine = await createWebGpuEngine(artifact);
    try {
      const err = relErr(await engine.logits(ids), want);
      console.log(`${c.label} ${c.fixture}: rel err ${err.toExponential(2)}`);
      assert.ok(err <= 1e-3, `rel err ${err}`);
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
