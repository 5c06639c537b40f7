/**
 * The decode plan keeps its fusions: on a Mixtral-like model whose experts come in two
 * precision groups, one dispatch per kernel the block functions document — tiled: stacked
 * q/k/v, one route-lists dispatch, fused gate/up + SwiGLU per precision group; classic: separate
 * q/k/v, the router kernel, gate/up/SwiGLU/down per group — and the engine's count equals it.
 */
import assert from "node:assert/strict";
import { openArtifactBytes } from "../../schemas/artifact.ts";
import { MIXTRAL_LIKE } from "../../schemas/example_specs.ts";
import { buildArtifact, randomQuantized, seededValues } from "../../schemas/testing.ts";
import { createWebGpuEngine } from "./mod.ts";

/** Expert matrices alternate between 2 and 4 bits: two precision groups per matrix. */
const bytes = buildArtifact(MIXTRAL_LIKE, {
  content: (t, i) => {
    const n = t.shape.reduce((a, b) => a * b, 1);
    if (!t.expertMatrix) return { storage: "f32", values: seededValues(n, i + 1) };
    const layout = { bits: t.expert % 2 ? 4 : 2, groupSize: t.shape[1], scaleType: "f16" } as const;
    return {
      storage: "q",
      tensor: randomQuantized(t.shape[0], t.shape[1], layout, i + 1),
      quantizer: "rtn",
    };
  },
});

const GROUPS = 2;
const LAYERS = MIXTRAL_LIKE.decoder.layers.length;
/** embed, then per layer: attention, MoE; then the last-token norm and the head. */
const EXPECTED = {
  // norm, [q;k;v], rope+store, attention, o | norm, router, route lists, gate/up ×G, down ×G, combine
  tiled: 1 + LAYERS * (5 + 3 + 2 * GROUPS + 1) + 2,
  // norm, q, k, v, rope+store, attention, o | norm, router matmul, router, gate ×G, up ×G, SwiGLU,
  // down ×G, combine
  classic: 1 + LAYERS * (7 + 3 + 3 * GROUPS + 2) + 2,
};

for (const kernels of ["tiled", "classic"] as const) {
  Deno.test(`decode plan (${kernels}): one dispatch per documented kernel, fusions kept`, async () => {
    const artifact = await openArtifactBytes(bytes);
    const engine = await createWebGpuEngine(artifact, { kernels });
    try {
      assert.equal(engine.dispatchesPerToken, EXPECTED[kernels]);
      const ids: number[] = [];
      for await (const id of engine.generate([1, 2, 3], { maxTokens: 4, stopIds: [] })) {
        ids.push(id);
      }
      assert.equal(ids.length, 4);
    } finally {
      engine.dispose();
      artifact.close();
    }
  });
}
