/**
 * Engine paths and variants the HF fixtures do not exercise, on synthetic random models (every
 * tensor seeded, non-zero) checked against the float64 reference in both kernel styles:
 * per-head and full-width q/k norms, dense layers, shared experts (plain and gated), q/k/v
 * biases, GQA 4:1, odd widths, the q/k/v clamp (OLMoE clip_qkv) after the q/k norm and on a
 * stacked projection, and the multipliers: embedding, residual, attention and head scales, the
 * head bias and the routed scaling factor.
 */
import assert from "node:assert/strict";
import type { ModelIR } from "../compiler/ir.ts";
import { syntheticIR } from "../compiler/emit/testing.ts";
import { forward, prepareReference } from "../compiler/reference/mod.ts";
import {
  attentionBlock,
  decoderOnly,
  ffnBlock,
  gqa,
  mlp,
  moe,
  rmsNorm,
  rope,
  topkRouter,
} from "../schemas/example_specs.ts";
import type { ModelSpec } from "../schemas/model.ts";
import { mulberry32 } from "../schemas/prng.ts";
import type { ExpectedTensor } from "../schemas/tensors.ts";
import { loadModel } from "../runtime/mod.ts";
import { emitTemp, relErr } from "./engine_helpers.ts";

/** Seeded values: norm weights 1 ± 0.2, embedding and router ±1, other tensors ±0.3. */
function synthetic(spec: ModelSpec, seed: number): ModelIR {
  return syntheticIR(spec, {
    values: (t: ExpectedTensor, i: number) => {
      const rand = mulberry32(seed * 1000 + i);
      const n = t.shape.reduce((a, b) => a * b, 1);
      const norm = t.role.endsWith("norm");
      const [center, scale] = norm
        ? [1, 0.2]
        : t.role === "embed" || t.role === "router"
        ? [0, 1]
        : [0, 0.3];
      return Float32Array.from({ length: n }, () => center + scale * (rand() * 2 - 1));
    },
  });
}

const eps = rmsNorm(1e-6);
const attn = (extra: Parameters<typeof gqa>[3] = {}, nkv = 1) =>
  attentionBlock(gqa(4, nkv, 10, { qkNormSpec: eps, position: rope(1e6, 10), ...extra }), eps);

const CASES: { label: string; spec: ModelSpec; clipped?: boolean }[] = [
  {
    label: "per-head q/k norm, dense layer, tied embeddings, GQA 4:1",
    spec: decoderOnly("qwen3_moe", 53, 40, [
      [attn({ qkNorm: "head" }), ffnBlock(moe(6, 3, mlp(24)), eps)],
      [attn({ qkNorm: "head" }), ffnBlock(mlp(36), eps)],
      [attn({ qkNorm: "head" }), ffnBlock(moe(6, 3, mlp(24)), eps)],
    ], { head: { tied: true, scale: 1, bias: false } }),
  },
  {
    label: "full-width q/k norm then clip_qkv, ungated shared expert, q/k/v bias, no renorm",
    spec: decoderOnly(
      "olmoe",
      53,
      40,
      [0, 1, 2].map(() => [
        attn({ qkNorm: "full", qkvBias: true, clipQkv: 0.8 }, 2),
        ffnBlock(
          moe(6, 3, mlp(24), {
            router: topkRouter({ normTopK: false }),
            shared: { mlp: mlp(20), gated: false },
          }),
          eps,
        ),
      ]),
    ),
    clipped: true,
  },
  {
    label:
      "clip_qkv on stacked q/k/v; embedding, residual, attention and head scales, head bias, " +
      "routed scaling, gated shared expert",
    spec: decoderOnly(
      "granitemoe",
      53,
      40,
      [0, 1].map(() => [
        attn({ clipQkv: 0.35, scale: 0.2 }, 2),
        ffnBlock(
          moe(6, 2, mlp(24), {
            router: topkRouter({ scale: 2.5 }),
            shared: { mlp: mlp(20), gated: true },
          }),
          eps,
        ),
      ]),
      { embedScale: 1.5, head: { tied: false, scale: 0.5, bias: true } },
    ),
    clipped: true,
  },
];
/**
 * The spec with an eps 1e-6 final norm and, for the multiplier case, residual scale 0.7
 * (decoderOnly gives every layer residual scale 1).
 */
function finish(spec: ModelSpec): ModelSpec {
  const residualScale = spec.family === "granitemoe" ? 0.7 : 1;
  return {
    ...spec,
    decoder: {
      layers: spec.decoder.layers.map((l) => ({ ...l, residualScale })),
      finalNorm: eps,
    },
  };
}

/** The same description without the q/k/v clamp. */
function unclipped(spec: ModelSpec): ModelSpec {
  return {
    ...spec,
    decoder: {
      ...spec.decoder,
      layers: spec.decoder.layers.map((l) => ({
        ...l,
        blocks: l.blocks.map((b) =>
          b.kind === "attention" && b.attention.kind === "gqa"
            ? { ...b, attention: { ...b.attention, clipQkv: null } }
            : b
        ),
      })),
    },
  };
}

const IDS = [1, 7, 52, 3, 3, 19, 44, 8, 0, 25];
const TOL = 1e-5;

for (const c of CASES) {
  Deno.test(`engine synthetic: ${c.label} vs the reference, tiled and classic (rel ≤ ${TOL})`, async () => {
    const spec = finish(c.spec);
    const ir = synthetic(spec, 5);
    const want = forward(await prepareReference(ir), IDS);
    if (c.clipped) {
      // The clamp must matter here, or this case could not catch its absence.
      const free = forward(await prepareReference(synthetic(unclipped(spec), 5)), IDS);
      assert.ok(relErr(free, want) > 100 * TOL, "the clamp changes nothing on this model");
    }
    const path = await emitTemp(ir);
    try {
      for (const kernels of ["tiled", "classic"] as const) {
        const engine = await loadModel(path, { prefillChunk: 4, kernels });
        try {
          const err = relErr(await engine.logits(IDS), want);
          console.log(`${c.label} (${kernels}): rel err ${err.toExponential(2)}`);
          assert.ok(err <= TOL, `${kernels}: rel err ${err}`);
        } finally {
          engine.dispose();
        }
      }
    } finally {
      await Deno.remove(path);
    }
  });
}
