/**
 * Typed access to a config.json object: every getter checks its field and fails with a one-line
 * InputError naming the file and the field. The family adapters read their configs through it.
 *
 * @module
 */

import { InputError } from "../../schemas/errors.ts";

/** Upper bound for any size field (2^24: far above real models, small enough for exact math). */
export const MAX_DIMENSION = 1 << 24;
/** Upper bound for layer, head and expert counts. */
export const MAX_COUNT = 1 << 16;

/** The fields of one config.json object, read with checks. */
export class ConfigFields {
  /** `raw` is the parsed JSON object; `file` names it in messages. */
  constructor(readonly raw: Record<string, unknown>, readonly file: string) {}

  /** Throws the InputError `<file>: field "<key>" <what>`. */
  fail(key: string, what: string): never {
    throw new InputError(`field "${key}" ${what}`, this.file);
  }

  /** True when the key is present and not null. */
  has(key: string): boolean {
    return this.raw[key] !== undefined && this.raw[key] !== null;
  }

  /** A positive integer no larger than `max` (a sanity bound that keeps later arithmetic exact). */
  positiveInt(key: string, fallback?: number, max = MAX_DIMENSION): number {
    if (!this.has(key)) {
      if (fallback !== undefined) return fallback;
      this.fail(key, "missing");
    }
    const v = this.raw[key];
    if (typeof v !== "number" || !Number.isSafeInteger(v) || v <= 0) {
      this.fail(key, `must be a positive integer, got ${JSON.stringify(v)}`);
    }
    if (v > max) this.fail(key, `is ${v}, above the supported maximum ${max}`);
    return v;
  }

  /** A non-negative integer, `fallback` when absent. */
  nonNegativeInt(key: string, fallback: number): number {
    if (!this.has(key)) return fallback;
    const v = this.raw[key];
    if (typeof v !== "number" || !Number.isSafeInteger(v) || v < 0) {
      this.fail(key, `must be a non-negative integer, got ${JSON.stringify(v)}`);
    }
    return v;
  }

  /** A finite positive number, `fallback` when absent. */
  positiveNumber(key: string, fallback?: number): number {
    if (!this.has(key)) {
      if (fallback !== undefined) return fallback;
      this.fail(key, "missing");
    }
    const v = this.raw[key];
    if (typeof v !== "number" || !Number.isFinite(v) || v <= 0) {
      this.fail(key, `must be a positive number, got ${JSON.stringify(v)}`);
    }
    return v;
  }

  /** true or false, `fallback` when absent. */
  bool(key: string, fallback: boolean): boolean {
    if (!this.has(key)) return fallback;
    const v = this.raw[key];
    if (typeof v !== "boolean") this.fail(key, `must be true or false, got ${JSON.stringify(v)}`);
    return v;
  }

  /** A list of non-negative integers, [] when absent. */
  intList(key: string): number[] {
    if (!this.has(key)) return [];
    const v = this.raw[key];
    if (!Array.isArray(v) || !v.every((x) => Number.isSafeInteger(x) && x >= 0)) {
      this.fail(key, `must be a list of non-negative integers, got ${JSON.stringify(v)}`);
    }
    return v as number[];
  }

  /** A token id, or a list of them (eos_token_id); null/absent → []. */
  tokenIds(key: string, vocab: number): number[] {
    if (!this.has(key)) return [];
    const v = this.raw[key];
    const ids = Array.isArray(v) ? v : [v];
    for (const id of ids) {
      if (!Number.isSafeInteger(id) || id < 0 || id >= vocab) {
        this.fail(key, `must be a token id below vocab_size ${vocab}, got ${JSON.stringify(v)}`);
      }
    }
    return ids as number[];
  }

  /** A nested object (rope_parameters), or null when absent. */
  object(key: string): ConfigFields | null {
    if (!this.has(key)) return null;
    const v = this.raw[key];
    if (typeof v !== "object" || Array.isArray(v)) this.fail(key, "must be an object");
    return new ConfigFields(v as Record<string, unknown>, `${this.file} ${key}`);
  }
}
