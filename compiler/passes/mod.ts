/**
 * Expert-sensitivity passes and bit allocators: pure functions over per-expert score tables.
 *
 * @module
 */

export * from "./scores.ts";
export * from "./sensitivity.ts";
export * from "./ranking.ts";
export * from "../../schemas/prng.ts";
export * from "./allocation.ts";
export * from "./allocate.ts";
export * from "./budget.ts";
export * from "./report.ts";
export * from "./collect.ts";
