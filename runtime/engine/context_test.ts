import assert from "node:assert/strict";
import { LimitError, UsageError } from "../../schemas/errors.ts";
import { openArtifactBytes } from "../../schemas/artifact.ts";
import { MIXTRAL_LIKE, MLA_LIKE } from "../../schemas/example_specs.ts";
import { buildArtifact } from "../../schemas/testing.ts";
import { createWebGpuEngine } from "./mod.ts";
import {
  chooseContext,
  DEFAULT_BINDING_BYTES,
  DEFAULT_GPU_KV_BYTES,
  deviceBytes,
  perTokenBytes,
} from "./context.ts";

const per = { kv: 1000, other: 24, widestBuffer: 256 };

Deno.test("chooseContext: a requested context is honoured when it fits, refused when not", () => {
  const base = { maxPositions: 4096, fixedBytes: 1e6, perToken: per, memoryBytes: 2e6 };
  assert.equal(chooseContext({ ...base, requested: 900 }), 900);
  // 1e6 bytes left / 1024 per token = 976 tokens.
  assert.equal(chooseContext({ ...base, requested: 976 }), 976);
  assert.throws(
    () => chooseContext({ ...base, requested: 977, flag: "--context" }),
    (e) =>
      e instanceof LimitError && /--context: 977 tokens/.test(e.message) && /976/.test(e.message),
  );
  assert.throws(
    () => chooseContext({ ...base, requested: 4097, memoryBytes: null }),
    (e) => e instanceof UsageError && /4096 positions/.test(e.message),
  );
  assert.throws(() => chooseContext({ ...base, requested: 0 }), UsageError);
  assert.throws(() => chooseContext({ ...base, requested: 2.5 }), UsageError);
  // Unknown memory (a GPU): any context within the positions.
  assert.equal(chooseContext({ ...base, requested: 4096, memoryBytes: null }), 4096);
});

Deno.test("chooseContext: the default is the positions, capped by memory, binding and the GPU KV cap", () => {
  const base = { fixedBytes: 1e6, perToken: per };
  assert.equal(chooseContext({ ...base, maxPositions: 512, memoryBytes: 1e9 }), 512);
  assert.equal(chooseContext({ ...base, maxPositions: 1 << 20, memoryBytes: 2e6 }), 976);
  const wide = { kv: 64, other: 8, widestBuffer: 1 << 16 };
  assert.equal(
    chooseContext({ fixedBytes: 0, perToken: wide, maxPositions: 1 << 20, memoryBytes: 1e12 }),
    DEFAULT_BINDING_BYTES / (1 << 16),
  );
  const heavy = { kv: 1 << 20, other: 8, widestBuffer: 4 };
  assert.equal(
    chooseContext({ fixedBytes: 0, perToken: heavy, maxPositions: 1 << 20, memoryBytes: null }),
    DEFAULT_GPU_KV_BYTES / (1 << 20),
  );
  assert.equal(chooseContext({ ...base, maxPositions: 0, memoryBytes: null }), 4096);
  assert.throws(
    () => chooseContext({ ...base, maxPositions: 512, memoryBytes: 5e5 }),
    (e) => e instanceof LimitError && /do not fit/.test(e.message),
  );
});

Deno.test("perTokenBytes/deviceBytes: GQA keys + values per layer, MLA latent, RoPE tables, token buffers", () => {
  // MIXTRAL_LIKE: 2 layers of GQA 4/2 × 8, one RoPE table over 8 dims.
  const p = perTokenBytes(MIXTRAL_LIKE);
  assert.equal(p.kv, 2 * 2 * (2 * 8) * 4);
  assert.equal(p.widestBuffer, 2 * 8 * 4);
  assert.equal(p.other, 8 * 4 + 8);
  const d = deviceBytes(MIXTRAL_LIKE, 1000, 500, 64);
  assert.equal(d.kv, 64 * p.kv);
  assert.equal(d.total, 1500 + 64 * (p.kv + p.other));
  // MLA_LIKE: two latent caches of kvLoraRank 12 + rope 4, one table over 4 dims.
  const m = perTokenBytes(MLA_LIKE);
  assert.equal(m.kv, 2 * (12 + 4) * 4);
  assert.equal(m.widestBuffer, (12 + 4) * 4);
  assert.equal(m.other, 4 * 4 + 8);
});

Deno.test("the engine sizes its KV cache from maxContext and refuses one that does not fit", async () => {
  const artifact = await openArtifactBytes(buildArtifact(MIXTRAL_LIKE));
  try {
    const e = await createWebGpuEngine(artifact, { maxContext: 24 });
    try {
      assert.equal(e.maxContext, 24);
      assert.equal(e.deviceBytes.context, 24);
      assert.equal(e.deviceBytes.kv, 24 * perTokenBytes(MIXTRAL_LIKE).kv);
      assert.equal(e.deviceBytes.weights, e.weightBytes);
      // The cache holds 24 positions: a 24-token prompt fits, 25 do not.
      const ids = Array.from({ length: 24 }, (_, i) => i % 32);
      assert.equal((await e.logits(ids)).length, 24);
      await assert.rejects(() => e.logits([...ids, 1]), LimitError);
    } finally {
      e.dispose();
    }
    await assert.rejects(
      () => createWebGpuEngine(artifact, { maxContext: 48, memoryBytes: 30_000 }),
      (e) => e instanceof LimitError && /maxContext: 48 tokens/.test(e.message),
    );
    await assert.rejects(
      () => createWebGpuEngine(artifact, { maxContext: 65, contextFlag: "--context" }),
      (e) => e instanceof UsageError && /--context: 65 tokens exceed/.test(e.message),
    );
  } finally {
    artifact.close();
  }
});
