/**
 * Strict command-line parsing for `cli.ts`: every flag is declared, unknown flags and bad values
 * are UsageErrors naming the flag.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { UsageError } from "../schemas/errors.ts";

/** One declared flag: a string-valued option or a boolean switch. */
export interface FlagSpec {
  type: "string" | "boolean";
  short?: string;
  /** Shown in the help text. */
  help: string;
  /** Shown in the help text as the default. */
  default?: string;
}

/** A subcommand's declaration. */
export interface CommandSpec {
  /** Usage line after the command name, e.g. "<checkpoint> -o <out>". */
  usage: string;
  /** One line describing the command. */
  summary: string;
  /** Number of positional arguments accepted: [min, max]. */
  positionals: [number, number];
  flags: Record<string, FlagSpec>;
}

/** Parsed arguments with typed accessors that validate as they read. */
export class Args {
  /** Positional arguments. */
  readonly positionals: string[];
  readonly #values: Record<string, string | boolean | undefined>;

  /** Wraps parsed values; use {@link parseCommand} to create. */
  constructor(positionals: string[], values: Record<string, string | boolean | undefined>) {
    this.positionals = positionals;
    this.#values = values;
  }

  /** True when a boolean switch was given. */
  flag(name: string): boolean {
    return this.#values[name] === true;
  }

  /** A string option, or `fallback`. */
  string(name: string): string | undefined;
  /** A string option, or `fallback`. */
  string(name: string, fallback: string): string;
  string(name: string, fallback?: string): string | undefined {
    const v = this.#values[name];
    return typeof v === "string" ? v : fallback;
  }

  /** A string option that must be one of `choices`. */
  choice<T extends string>(name: string, choices: readonly T[], fallback: T): T {
    const v = this.string(name, fallback);
    if (!(choices as readonly string[]).includes(v)) {
      throw new UsageError(`--${name} must be one of ${choices.join(", ")} (got "${v}")`);
    }
    return v as T;
  }

  /** A finite number option within [min, max], or `fallback`. */
  number(name: string, fallback: number, min = -Infinity, max = Infinity): number {
    const raw = this.string(name);
    if (raw === undefined) return fallback;
    const v = Number(raw);
    if (raw.trim() === "" || !Number.isFinite(v) || v < min || v > max) {
      throw new UsageError(`--${name} must be a number in [${min}, ${max}] (got "${raw}")`);
    }
    return v;
  }

  /** An integer option within [min, max], or `fallback`. */
  int(name: string, fallback: number, min = -Infinity, max = Infinity): number {
    const v = this.number(name, fallback, min, max);
    if (!Number.isInteger(v)) throw new UsageError(`--${name} must be an integer (got ${v})`);
    return v;
  }

  /** A comma-separated list of integers (token ids), or undefined when absent. */
  intList(name: string, min = 0, max = 2 ** 31 - 1): number[] | undefined {
    const raw = this.string(name);
    if (raw === undefined) return undefined;
    const parts = raw.split(",").map((s) => s.trim()).filter((s) => s !== "");
    if (parts.length === 0) throw new UsageError(`--${name} is empty`);
    return parts.map((p) => {
      const v = Number(p);
      if (!Number.isInteger(v) || v < min || v > max) {
        throw new UsageError(`--${name}: "${p}" is not an integer in [${min}, ${max}]`);
      }
      return v;
    });
  }

  /** A comma-separated list of numbers, or `fallback`. */
  numberList(name: string, fallback: number[]): number[] {
    const raw = this.string(name);
    if (raw === undefined) return fallback;
    return raw.split(",").map((p) => {
      const v = Number(p.trim());
      if (p.trim() === "" || !Number.isFinite(v)) {
        throw new UsageError(`--${name}: "${p}" is not a number`);
      }
      return v;
    });
  }
}

/** Parses `argv` against a command's spec; unknown flags or wrong arity are UsageErrors. */
export function parseCommand(name: string, spec: CommandSpec, argv: string[]): Args {
  const options: Record<string, { type: "string" | "boolean"; short?: string }> = {};
  for (const [flag, f] of Object.entries(spec.flags)) {
    options[flag] = f.short ? { type: f.type, short: f.short } : { type: f.type };
  }
  let parsed;
  try {
    parsed = parseArgs({ args: argv, options, allowPositionals: true, strict: true });
  } catch (e) {
    const msg = (e as Error).message.split("\n")[0].replace(/\. To specify a positional.*$/, "");
    throw new UsageError(`${name}: ${msg}`);
  }
  const [min, max] = spec.positionals;
  const pos = parsed.positionals;
  if (pos.length < min || pos.length > max) {
    throw new UsageError(`usage: moeq ${name} ${spec.usage}`);
  }
  return new Args(pos, parsed.values as Record<string, string | boolean | undefined>);
}

/** Renders the help text of one command. */
export function commandHelp(name: string, spec: CommandSpec): string {
  const lines = [`moeq ${name} ${spec.usage}`, `  ${spec.summary}`, ""];
  for (const [flag, f] of Object.entries(spec.flags)) {
    const left = `  --${flag}${f.type === "string" ? " <value>" : ""}`;
    const def = f.default !== undefined ? ` (default ${f.default})` : "";
    lines.push(`${left.padEnd(28)} ${f.help}${def}`);
  }
  return lines.join("\n");
}
