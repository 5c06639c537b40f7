import assert from "node:assert/strict";
import { allocate } from "./allocate.ts";
import { allocatePaper, allocateRandom } from "./order_allocators.ts";

/** Two MoE layers of four experts, and an empty one (tolerated: it gets an empty row). */
const lambda = [[0.5, 0.1, 0.3, 0.2], [0.0, 0.9, -0.3, 0.4], []];
const maxVar = [[1, 1, 1, 1], [1, 1, 1, 1], []];

Deno.test("allocate(): dispatches by name and names missing inputs", () => {
  assert.deepEqual(
    allocate("paper", { lambda, maxVar, targetAverage: 2.5 }).bits,
    allocatePaper({ lambda, maxVar }, 2.5).bits,
  );
  assert.deepEqual(
    allocate("random", { lambda, targetAverage: 3, seed: 1 }).bits,
    allocateRandom([4, 4, 0], 3, 1).bits,
  );
  assert.deepEqual(allocate("uniform", { expertsPerLayer: [2], targetAverage: 8 }).bits, [[8, 8]]);
  assert.throws(() => allocate("paper", { lambda, targetAverage: 2.5 }), /needs maxVar/);
  assert.throws(() => allocate("frequency", { targetAverage: 2.5 }), /needs routing frequencies/);
  assert.throws(() => allocate("budget", { targetAverage: 2.5 }), /needs per-expert costs/);
  assert.throws(() => allocate("uniform", { targetAverage: 2 }), /needs expertsPerLayer/);
  const b = allocate("budget", {
    targetAverage: 3,
    budget: { widths: [2, 4], cost: [[[10, 0], [1, 0]]] },
  });
  assert.deepEqual(b.bits, [[4, 2]]);
});
