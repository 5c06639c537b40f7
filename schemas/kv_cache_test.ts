import assert from "node:assert/strict";
import { MIXTRAL_LIKE, MLA_LIKE } from "./example_specs.ts";
import { describeKvCache, kvCacheCost } from "./kv_cache.ts";

Deno.test("kv cache per token: MLA keeps the latent and RoPE key; GQA keys and values", () => {
  // MLA_LIKE: 2 MLA blocks, kv-lora 12 + rope 4 cached; full K/V 2 heads × (8 + 4 + 6).
  assert.deepEqual(kvCacheCost(MLA_LIKE), {
    bytesPerToken: 2 * (12 + 4) * 4,
    fullKvBytesPerToken: 2 * 2 * (8 + 4 + 6) * 4,
    latentBlocks: 2,
  });
  assert.equal(
    describeKvCache(MLA_LIKE),
    "kv cache: 128 bytes/token (f32), latent (MLA) in 2 blocks; " +
      "full per-head K/V would be 288 bytes/token (2.3×)",
  );
  const gqa = kvCacheCost(MIXTRAL_LIKE);
  assert.equal(gqa.bytesPerToken, gqa.fullKvBytesPerToken);
  assert.equal(gqa.latentBlocks, 0);
  assert.match(describeKvCache(MIXTRAL_LIKE), /^kv cache: \d+ bytes\/token \(f32\)$/);
});
