/**
 * Sequence slots in the kernels of a multi-slot engine (continuous batching): where a token's
 * id, position and KV-cache rows are.
 *
 * Slot s owns KV-cache rows s·context .. s·context + context − 1 of every attention block's
 * caches and token-buffer entries s·(context + 1) .. s·(context + 1) + context (the id fed at
 * position p is entry s·(context + 1) + p). A forward finds the slot and position of its token t
 * in one of two ways:
 *
 * - "step": the forward runs one sequence (a prefill chunk, a one-token decode step): its slot is
 *   the Step uniform's `slot`, token t sits at position pos0 + t;
 * - "rows": the forward runs one token of each of several sequences (a batched decode step):
 *   binding `rows` holds the pairs (slot, position) of the tokens, rows[2t] and rows[2t + 1].
 *
 * Without a layout (single-slot engines) the kernels are those of one sequence at rows 0...
 *
 * @module
 */

import { type BindingDecl, u } from "./kernel.ts";

/** How a kernel finds each token's slot and position (see the module docs). */
export interface SlotLayout {
  /** KV-cache rows per slot (the engine's maxContext); token entries per slot: context + 1. */
  context: number;
  /** "step": one sequence per forward (Step.slot); "rows": per-token pairs in binding `rows`. */
  source: "step" | "rows";
}

/** The extra binding a layout needs ("rows" only). */
export function slotDecls(s: SlotLayout | undefined): BindingDecl[] {
  return s?.source === "rows" ? [["rows", "array<u32>"]] : [];
}

/** WGSL: the sequence position of token `t` (a u32 expression). */
export function tokenPosition(s: SlotLayout | undefined, t: string): string {
  return s?.source === "rows" ? `rows[2u * (${t}) + 1u]` : `(step.pos0 + ${t})`;
}

/** WGSL: the first KV-cache row of token `t`'s slot (0 without a layout). */
export function kvRowBase(s: SlotLayout | undefined, t: string): string {
  if (!s) return "0u";
  const slot = s.source === "rows" ? `rows[2u * (${t})]` : "step.slot";
  return `(${slot} * ${u(s.context)})`;
}

/** WGSL: the token-buffer entry of token `t` (its id). */
export function tokenEntry(s: SlotLayout | undefined, t: string): string {
  if (!s) return `step.pos0 + ${t}`;
  if (s.source === "step") return `step.slot * ${u(s.context + 1)} + step.pos0 + ${t}`;
  return `rows[2u * (${t})] * ${u(s.context + 1)} + rows[2u * (${t}) + 1u]`;
}

/** Label suffix of a layout ("" without one). */
export function slotLabel(s: SlotLayout | undefined): string {
  return s ? `.slots${s.source === "rows" ? "R" : "S"}${s.context}` : "";
}
