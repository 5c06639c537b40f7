/**
 * The WebGPU MLA path on synthetic random models (every tensor seeded, non-zero) against the
 * float64 reference, in both kernel styles: direct queries and the q LoRA (no HF fixture has
 * one), interleaved and half-split RoPE, YaRN, sigmoid + selection bias + grouped routing with a
 * shared expert, and a context of 150 tokens prefilled in chunks so the latent attention runs
 * over several key tiles and cache rows written by earlier chunks.
 */
import assert from "node:assert/strict";
import { forward, prepareReference } from "../compiler/reference/mod.ts";
import { MLA_LIKE } from "../schemas/example_specs.ts";
import type { ModelSpec } from "../schemas/model.ts";
import { loadModel } from "../runtime/mod.ts";
import { emitTemp, relErr, seededSynthetic } from "./engine_helpers.ts";

/** MLA_LIKE with half-split RoPE and V2 routing (softmax, groups by max, no bias). */
const HALF_V2: ModelSpec = {
  ...MLA_LIKE,
  family: "deepseek_v2",
  maxPositions: 256,
  decoder: {
    ...MLA_LIKE.decoder,
    layers: MLA_LIKE.decoder.layers.map((l) => ({
      ...l,
      blocks: l.blocks.map((b) => {
        if (b.kind === "attention" && b.attention.kind === "mla") {
          const position = { ...b.attention.position, pairing: "half" as const };
          return { ...b, attention: { ...b.attention, position } };
        }
        if (b.kind === "ffn" && b.ffn.kind === "moe" && b.ffn.router.kind === "topk") {
          const router = {
            ...b.ffn.router,
            scoring: "softmax" as const,
            selectionBias: false,
            normTopK: false,
            groups: { count: 4, keep: 2, score: "max" as const },
          };
          return { ...b, ffn: { ...b.ffn, router } };
        }
        return b;
      }),
    })),
  },
};

/** MLA_LIKE with YaRN RoPE (schemas/rope_frequencies.ts; a cos/sin factor ≠ 1). */
const YARN_V3: ModelSpec = {
  ...MLA_LIKE,
  decoder: {
    ...MLA_LIKE.decoder,
    layers: MLA_LIKE.decoder.layers.map((l) => ({
      ...l,
      blocks: l.blocks.map((b) => {
        if (b.kind !== "attention" || b.attention.kind !== "mla") return b;
        const scaling = {
          kind: "yarn" as const,
          factor: 4,
          originalMaxPositions: 8,
          betaFast: 32,
          betaSlow: 1,
          attentionFactor: 1.2,
          truncate: true,
        };
        const position = { ...b.attention.position, scaling };
        return { ...b, attention: { ...b.attention, position } };
      }),
    })),
  },
};

const TOL = 1e-5;
const CASES: [string, ModelSpec, number[], number][] = [
  ["DeepSeek-V3-like (q LoRA, interleaved)", MLA_LIKE, [1, 7, 31, 3, 3, 19, 24, 8, 0, 25], 4],
  ["DeepSeek-V3-like with YaRN RoPE", YARN_V3, [1, 7, 31, 3, 3, 19, 24, 8, 0, 25], 4],
  [
    "DeepSeek-V2-like (half RoPE, groups by max), 150 tokens",
    HALF_V2,
    Array.from({ length: 150 }, (_, i) => (i * 7 + 3) % 32),
    64,
  ],
];

for (const [label, spec, ids, chunk] of CASES) {
  Deno.test(`engine MLA synthetic: ${label} vs the reference, tiled and classic (rel ≤ ${TOL})`, async () => {
    const ir = seededSynthetic(spec, 11);
    const want = forward(await prepareReference(ir), ids);
    const path = await emitTemp(ir);
    try {
      for (const kernels of ["tiled", "classic"] as const) {
        const engine = await loadModel(path, { prefillChunk: chunk, kernels });
        try {
          const err = relErr(await engine.logits(ids), want);
          console.log(`${label} (${kernels}): rel err ${err.toExponential(2)}`);
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
