/**
 * A long fuzz run of every input parser: `deno run -A tests/fuzz_long.ts [iterations] [seed]`
 * (the `fuzz` task). Runs the safetensors fuzzer, the config.json fuzzer and the artifact fuzzer
 * (on the format layer's tiny artifact and on a compiled one) for `iterations` cases each, with a
 * random seed unless one is given, and prints the cases rejected per error class. Any case that
 * throws something other than a typed MoeqError, or hangs, ends the run with exit code 1 and the
 * seed to replay it.
 *
 * @module
 */

import { fuzzConfig, fuzzSafetensors } from "../compiler/checkpoint/fuzz.ts";
import { fuzzArtifact } from "../schemas/artifact_fuzz.ts";
import { tinyArtifact } from "../schemas/testing.ts";
import { SMALL_MIXTRAL, smallArtifact } from "./reliability_cases.ts";

/** One fuzzer's tally. */
export interface FuzzLine {
  fuzzer: string;
  seed: number;
  iterations: number;
  accepted: number;
  rejected: Record<string, number>;
  seconds: number;
}

/** Runs all fuzzers for `iterations` cases each from `seed`; throws on the first untyped crash. */
export async function fuzzAll(iterations: number, seed: number): Promise<FuzzLine[]> {
  const lines: FuzzLine[] = [];
  const timed = async (
    fuzzer: string,
    s: number,
    f: () => Promise<Omit<FuzzLine, "fuzzer" | "seed" | "seconds">>,
  ) => {
    const t0 = performance.now();
    const r = await f();
    lines.push({ fuzzer, seed: s, ...r, seconds: (performance.now() - t0) / 1000 });
  };
  await timed("safetensors", seed, async () => {
    const r = await fuzzSafetensors(iterations, { seed });
    return { iterations, accepted: r.loaded, rejected: r.rejected };
  });
  await timed("config.json", seed + 1, () => {
    const r = fuzzConfig(SMALL_MIXTRAL, iterations, seed + 1);
    return Promise.resolve({
      iterations,
      accepted: r.parsed,
      rejected: { "MoeqError (any)": r.rejected },
    });
  });
  const artifacts = [
    ["artifact (tiny)", tinyArtifact(), seed + 2],
    ["artifact (compiled)", await smallArtifact(), seed + 3],
  ] as const;
  for (const [name, bytes, s] of artifacts) {
    await timed(name, s, async () => {
      const r = await fuzzArtifact(bytes, { iterations, seed: s });
      return { iterations, accepted: r.accepted, rejected: r.rejected };
    });
  }
  return lines;
}

if (import.meta.main) {
  const iterations = Number(Deno.args[0] ?? 50000);
  const seed = Deno.args[1] !== undefined
    ? Number(Deno.args[1])
    : crypto.getRandomValues(new Uint32Array(1))[0] >>> 1;
  if (!Number.isSafeInteger(iterations) || iterations < 1 || !Number.isSafeInteger(seed)) {
    console.error("usage: deno run -A tests/fuzz_long.ts [iterations >= 1] [seed]");
    Deno.exit(2);
  }
  console.log(`fuzzing ${iterations} cases per fuzzer, seed ${seed}`);
  try {
    for (const l of await fuzzAll(iterations, seed)) {
      const rej = Object.entries(l.rejected).map(([k, v]) => `${k} ${v}`).join(", ");
      console.log(
        `${l.fuzzer.padEnd(20)} seed ${l.seed}: ${l.iterations} cases, ${l.accepted} accepted, ` +
          `rejected: ${rej || "none"} (${l.seconds.toFixed(1)} s)`,
      );
    }
    console.log("untyped crashes: 0");
  } catch (e) {
    console.error(`FUZZ FAILURE (replay with seed ${seed}): ${(e as Error).message}`);
    if ((e as Error).cause) console.error((e as Error).cause);
    Deno.exit(1);
  }
}
