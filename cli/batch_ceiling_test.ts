import assert from "node:assert/strict";
import type { ModelSpec } from "../schemas/model.ts";
import type { TensorRecord } from "../schemas/header.ts";
import { batchCeiling, expectedDistinctExperts } from "./batch_ceiling.ts";

Deno.test("expectedDistinctExperts matches a Monte Carlo count of distinct top-k choices", () => {
  // Simulated: S tokens each pick k distinct experts of E uniformly.
  let seed = 12345;
  const rand = () => (seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648;
  for (const [E, k, S] of [[8, 2, 8], [32, 4, 8], [128, 8, 4]]) {
    const trials = 4000;
    let total = 0;
    for (let i = 0; i < trials; i++) {
      const seen = new Set<number>();
      for (let s = 0; s < S; s++) {
        const pool = Array.from({ length: E }, (_, e) => e);
        for (let j = 0; j < k; j++) {
          const at = j + Math.floor(rand() * (E - j));
          [pool[j], pool[at]] = [pool[at], pool[j]];
          seen.add(pool[j]);
        }
      }
      total += seen.size;
    }
    const want = expectedDistinctExperts(E, k, S);
    assert.ok(
      Math.abs(total / trials - want) < 0.02 * want,
      `${E}/${k}/${S}: ${total / trials} vs ${want}`,
    );
  }
  assert.equal(expectedDistinctExperts(8, 2, 1), 2);
});

Deno.test("batchCeiling: dense bytes shared, experts by expected distinct count, embed excluded", () => {
  // One MoE layer of 4 experts (top-2), f32: attention 8×8, experts 3 matrices of 4×8 each,
  // untied head 16×8 and an embedding 16×8 (a gather, not counted).
  const rec = (role: string, layer: number, expert: number, shape: number[]) =>
    ({ name: role, stack: "decoder", role, layer, expert, shape, storage: "f32" }) as TensorRecord;
  const tensors = [rec("embed", -1, -1, [16, 8]), rec("lm_head", -1, -1, [16, 8])];
  tensors.push(rec("attn_q", 0, -1, [8, 8]), rec("router", 0, -1, [4, 8]));
  for (let e = 0; e < 4; e++) {
    for (const r of ["expert_gate", "expert_up", "expert_down"]) {
      tensors.push(rec(r, 0, e, [4, 8]));
    }
  }
  const spec = {
    head: { tied: false },
    decoder: {
      layers: [{ blocks: [{ kind: "ffn", ffn: { kind: "moe", numExperts: 4, topK: 2 } }] }],
    },
  } as unknown as ModelSpec;
  const dense = 4 * (16 * 8 + 8 * 8 + 4 * 8), expert = 4 * 3 * 4 * 8;
  const one = batchCeiling(spec, tensors, 1);
  assert.equal(one.denseBytes, dense);
  assert.equal(one.expertBytesOne, 2 * expert);
  assert.ok(Math.abs(one.ceiling - 1) < 1e-12);
  const eight = batchCeiling(spec, tensors, 8);
  const d = 4 * (1 - Math.pow(0.5, 8));
  assert.ok(Math.abs(eight.distinctExperts - d) < 1e-12);
  const want = (8 * (dense + 2 * expert)) / (dense + d * expert);
  assert.ok(Math.abs(eight.ceiling - want) < 1e-9, `${eight.ceiling} vs ${want}`);
});
