/**
 * Expert-sensitivity passes and bit allocators: pure functions over per-expert score tables
 * indexed `[moeLayer][expert]` (scores.ts).
 *
 * - sensitivity.ts: Λ (router-norm change), MaxVar, routing frequency, weight statistics
 * - ranking.ts: per-layer expert orders
 * - order_allocators.ts: paper, reverse-paper, frequency, random, uniform (bands per layer)
 * - budget_allocator.ts: the cross-layer knapsack
 * - allocate.ts: runs an allocator by name; allocation_result.ts: what every allocator returns
 * - report.ts: the per-expert rows stored in the artifact
 *
 * @module
 */

export * from "./scores.ts";
export * from "./sensitivity.ts";
export * from "./ranking.ts";
export * from "./allocation_result.ts";
export * from "./order_allocators.ts";
export * from "./budget_allocator.ts";
export * from "./allocate.ts";
export * from "./report.ts";
