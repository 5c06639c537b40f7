/**
 * moeq command-line interface: `deno run -A cli.ts <command> [options]`.
 *
 * Every command lives in `cli/<command>.ts` and is loaded on demand. This file is the one place
 * that turns errors into a one-line message and an exit code (`--debug` shows the stack).
 *
 * @module
 */

import { MoeqError, UsageError } from "./schemas/errors.ts";
import { commandHelp, type CommandSpec, parseCommand } from "./cli/args.ts";

/** A command module: its flag declarations and its action. */
export interface CommandModule {
  spec: CommandSpec;
  run(args: import("./cli/args.ts").Args): Promise<void>;
}

const COMMANDS: Record<string, { summary: string; load: () => Promise<CommandModule> }> = {
  compile: {
    summary: "compile a Hugging Face checkpoint directory into a .moeq artifact",
    load: () => import("./cli/compile.ts"),
  },
  inspect: {
    summary: "show an artifact's architecture, tensors and per-expert bits",
    load: () => import("./cli/inspect.ts"),
  },
  logits: {
    summary: "print logits for token ids (checkpoint or artifact; cpu or webgpu)",
    load: () => import("./cli/logits.ts"),
  },
  run: { summary: "generate text from an artifact", load: () => import("./cli/run.ts") },
  eval: {
    summary: "held-out bits/byte (or per token) of an artifact",
    load: () => import("./cli/eval.ts"),
  },
  study: {
    summary: "compare bit allocators at equal average bits on held-out text",
    load: () => import("./cli/study.ts"),
  },
  serve: {
    summary: "serve an artifact over an OpenAI-style HTTP API",
    load: () => import("./cli/serve.ts"),
  },
  bench: {
    summary: "benchmarks: kernels | decode | compile",
    load: () => import("./cli/bench.ts"),
  },
  demo: {
    summary: "compile the bundled Shakespeare MoE at 2.5 bits and generate text",
    load: () => import("./cli/demo.ts"),
  },
};

function usage(): string {
  const lines = ["usage: moeq <command> [options]   (moeq <command> --help for its options)", ""];
  for (const [name, c] of Object.entries(COMMANDS)) lines.push(`  ${name.padEnd(9)} ${c.summary}`);
  return lines.join("\n");
}

/** Runs one CLI invocation; resolves to the process exit code. */
export async function main(argv: string[]): Promise<number> {
  const debug = argv.includes("--debug");
  const rest = argv.filter((a) => a !== "--debug");
  try {
    const [name, ...args] = rest;
    if (name === undefined || name === "help" || name === "--help" || name === "-h") {
      console.log(usage());
      return name === undefined ? 2 : 0;
    }
    const entry = COMMANDS[name];
    if (!entry) {
      throw new UsageError(
        `unknown command "${name}"; commands: ${Object.keys(COMMANDS).join(", ")}`,
      );
    }
    const mod = await entry.load();
    if (args.includes("--help") || args.includes("-h")) {
      console.log(commandHelp(name, mod.spec));
      return 0;
    }
    await mod.run(parseCommand(name, mod.spec, args));
    return 0;
  } catch (e) {
    if (e instanceof MoeqError) {
      console.error(`moeq: ${e.message}`);
      if (debug) console.error(e.stack);
      return e.exitCode;
    }
    const err = e instanceof Error ? e : new Error(String(e));
    console.error(
      `moeq: internal error: ${err.message.split("\n")[0]} (rerun with --debug for the stack)`,
    );
    if (debug) console.error(err.stack);
    return 1;
  }
}

if (import.meta.main) {
  Deno.exit(await main(Deno.args));
}
