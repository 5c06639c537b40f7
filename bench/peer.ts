/**
 * `deno task bench-peer`: moeq against llama.cpp on the same weights, on the same adapter.
 *
 * For each model (the bundled shakespeare-moe, a 978M-parameter synthetic Mixtral, or any
 * Mixtral-style checkpoint directory) and precision (`f16`, `q8`: 8-bit everywhere, `q4`: 4-bit
 * experts with 8-bit dense weights), it compiles the moeq artifact (`cli.ts compile`) and writes
 * the GGUF of the same checkpoint (F16, Q8_0, Q4_0 + Q8_0; bench/gguf/), then runs cold
 * processes (bench/peer_child.ts) alternating moeq on WebGPU, llama.cpp's Vulkan build and its
 * CPU build, `--runs` rounds. It prints decode and prefill tok/s (min / median over the runs),
 * moeq ÷ llama.cpp (medians), whether the greedy ids agree (they must at f16), and which
 * backend and device each engine ran on; `--json` prints the same as JSON, `--out DIR` writes
 * both to DIR.
 *
 * llama.cpp comes from npm `node-llama-cpp` 3.22 installed under bench/.deps (see
 * docs/PERFORMANCE.md): it is never needed by the test suite. llama.cpp's Vulkan build
 * ignores CPU devices such as lavapipe unless `GGML_VK_VISIBLE_DEVICES` is set; this script sets
 * it to 0 when unset, and the child checks that the Vulkan backend really ran.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { join } from "node:path";
import {
  GGUF_PRECISIONS,
  type GgufPrecision,
  writeCheckpointGguf,
} from "./gguf/from_checkpoint.ts";
import type { ChildResult } from "./peer_child.ts";
import { type SyntheticDims, writeSyntheticMixtral } from "../cli/bench_compile.ts";
import { IoError, MoeqError, UsageError } from "../schemas/errors.ts";

const ROOT = new URL("..", import.meta.url).pathname;
const ENGINES = ["moeq", "llama-vulkan", "llama-cpu"] as const;
type EngineName = typeof ENGINES[number];

/** The synthetic model of issue 16: 978M parameters, hidden 2048, 32 experts top-4, 4 layers. */
export const SYNTHETIC_DIMS: SyntheticDims = {
  layers: 4,
  hidden: 2048,
  intermediate: 1024,
  experts: 32,
  topK: 4,
  heads: 16,
  kvHeads: 4,
  headDim: 128,
  vocab: 32000,
};

/** moeq compile flags per precision. */
const MOEQ_FLAGS: Record<GgufPrecision, string[]> = {
  f16: ["--expert-bits", "f16", "--dense-bits", "f16"],
  q8: ["--expert-bits", "8", "--dense-bits", "8"],
  q4: ["--expert-bits", "4", "--dense-bits", "8"],
};

/** Median and minimum of a list. */
export function stats(xs: number[]): { min: number; median: number } {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return { min: s[0], median: s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2 };
}

/** Tokens two greedy id lists share from the start. */
export function agreeing(a: readonly number[], b: readonly number[]): number {
  let i = 0;
  while (i < a.length && i < b.length && a[i] === b[i]) i++;
  return i;
}

/** One (model, precision, engine) cell: every run's figures. */
export interface Cell {
  model: string;
  precision: GgufPrecision;
  engine: EngineName;
  backend: string;
  device: string;
  runs: ChildResult[];
  decode: { min: number; median: number };
  prefill: { min: number; median: number };
  loadMs: { min: number; median: number };
}

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch {
    return false;
  }
}

async function run(cmd: string[], env: Record<string, string>, what: string): Promise<string> {
  const out = await new Deno.Command(cmd[0], {
    args: cmd.slice(1),
    env,
    cwd: ROOT,
    stdout: "piped",
    stderr: "piped",
  }).output();
  const stdout = new TextDecoder().decode(out.stdout);
  if (!out.success) {
    const err = new TextDecoder().decode(out.stderr).trim().split("\n").slice(-3).join(" | ");
    throw new IoError(`bench peer: ${what} failed (exit ${out.code}): ${err}`);
  }
  return stdout;
}

/** The checkpoint directory and prompt source of a model name. */
async function resolveModel(name: string, work: string, log: (s: string) => void) {
  if (name === "shakespeare") return join(ROOT, "testdata/shakespeare-moe");
  if (name === "synthetic") {
    const dir = join(work, "synthetic-978m");
    log(`synthetic checkpoint → ${dir}`);
    const { bytes, reused } = await writeSyntheticMixtral(dir, SYNTHETIC_DIMS);
    log(`  ${(bytes / 1e9).toFixed(2)} GB${reused ? " (reused)" : ""}`);
    return dir;
  }
  if (!(await exists(join(name, "config.json")))) {
    throw new UsageError(`bench peer: "${name}" is not shakespeare, synthetic or a checkpoint dir`);
  }
  return name;
}

/** Runs the benchmark with command-line arguments `argv`; prints the report. */
export async function benchPeer(argv: string[]): Promise<void> {
  const { values } = parseArgs({
    args: argv,
    options: {
      models: { type: "string", default: "shakespeare" },
      precisions: { type: "string", default: GGUF_PRECISIONS.join(",") },
      engines: { type: "string", default: ENGINES.join(",") },
      runs: { type: "string", default: "3" },
      "prompt-tokens": { type: "string", default: "32" },
      // ≥ 3 readback batches of moeq (8 tokens each) for the in-request decode rate
      tokens: { type: "string", default: "64" },
      threads: { type: "string", default: "2" },
      work: { type: "string", default: "/tmp/moeq-peer" },
      out: { type: "string" },
      fresh: { type: "boolean", default: false },
      json: { type: "boolean", default: false },
      help: { type: "boolean", default: false },
    },
  });
  if (values.help) {
    console.log(
      "usage: deno task bench-peer [--models shakespeare,synthetic,<dir>] [--precisions f16,q8,q4]\n" +
        "  [--engines moeq,llama-vulkan,llama-cpu] [--runs 3] [--prompt-tokens 32] [--tokens 64]\n" +
        "  [--threads 2] [--work /tmp/moeq-peer] [--out DIR] [--fresh] [--json]",
    );
    return;
  }
  const int = (name: string, v: string, lo: number, hi: number) => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < lo || n > hi) {
      throw new UsageError(`--${name} must be an integer in [${lo}, ${hi}] (got "${v}")`);
    }
    return n;
  };
  const runs = int("runs", values.runs, 1, 100);
  const promptTokens = int("prompt-tokens", values["prompt-tokens"], 1, 4096);
  const tokens = int("tokens", values.tokens, 2, 4096);
  const threads = int("threads", values.threads, 1, 256);
  const list = <T extends string>(name: string, v: string, allowed: readonly T[]) =>
    v.split(",").map((s) => {
      if (!allowed.includes(s.trim() as T)) {
        throw new UsageError(`--${name}: "${s}" is not one of ${allowed.join(", ")}`);
      }
      return s.trim() as T;
    });
  const precisions = list("precisions", values.precisions, GGUF_PRECISIONS);
  const engines = list("engines", values.engines, ENGINES);
  const models = values.models.split(",").map((s) => s.trim()).filter(Boolean);
  const work = values.work;
  await Deno.mkdir(work, { recursive: true });
  const log = (s: string) => console.error(s);
  const deno = Deno.execPath();
  const env: Record<string, string> = {
    XDG_RUNTIME_DIR: Deno.env.get("XDG_RUNTIME_DIR") ?? "/tmp",
    GGML_VK_VISIBLE_DEVICES: Deno.env.get("GGML_VK_VISIBLE_DEVICES") ?? "0",
  };
  const heldout = await Deno.readFile(join(ROOT, "testdata/shakespeare-moe/heldout.txt"));
  const ids = Array.from(heldout.subarray(0, promptTokens));

  const cells: Cell[] = [];
  const setup = { runs, promptTokens, tokens, threads };
  const save = async () => {
    if (!values.out) return;
    const report = summarize(cells, setup);
    await Deno.mkdir(values.out, { recursive: true });
    await Deno.writeTextFile(join(values.out, "peer.json"), JSON.stringify(report.json, null, 1));
    await Deno.writeTextFile(join(values.out, "peer.md"), report.table + "\n");
  };
  for (const model of models) {
    const dir = await resolveModel(model, work, log);
    const tag = model.includes("/") ? dir.split("/").filter(Boolean).pop()! : model;
    const files = new Map<GgufPrecision, { artifact: string; gguf: string }>();
    for (const p of precisions) {
      const artifact = join(work, `${tag}-${p}.moeq`), gguf = join(work, `${tag}-${p}.gguf`);
      if (values.fresh || !(await exists(artifact))) {
        log(`compile ${artifact}`);
        await run(
          [deno, "run", "-A", "cli.ts", "compile", dir, "-o", artifact, ...MOEQ_FLAGS[p]]
            .concat(["--allocator", "uniform"]),
          env,
          `compiling ${artifact}`,
        );
      }
      if (values.fresh || !(await exists(gguf))) {
        log(`write ${gguf}`);
        await writeCheckpointGguf(dir, gguf, p);
      }
      files.set(p, { artifact, gguf });
    }
    for (let r = 0; r < runs; r++) {
      for (const p of precisions) {
        for (const e of engines) {
          const f = files.get(p)!;
          const args = e === "moeq"
            ? ["run", "-A", "bench/peer_child.ts", e, f.artifact]
            : ["run", "-A", "--node-modules-dir=manual", "bench/peer_child.ts", e, f.gguf];
          args.push(ids.join(","), String(tokens), String(threads));
          const text = await run([deno, ...args], env, `${e} on ${tag} ${p} (run ${r + 1})`);
          const line = text.trim().split("\n").filter((l) => l.startsWith("{")).pop();
          if (!line) throw new IoError(`bench peer: ${e} printed no result`);
          const res = JSON.parse(line) as ChildResult;
          log(
            `run ${r + 1}/${runs} ${tag} ${p} ${e}: decode ${res.decodeTokS.toFixed(1)} tok/s, ` +
              `prefill ${res.prefillTokS.toFixed(1)} tok/s, load ${
                (res.loadMs / 1000).toFixed(1)
              } s`,
          );
          let cell = cells.find((c) => c.model === tag && c.precision === p && c.engine === e);
          if (!cell) {
            cell = {
              model: tag,
              precision: p,
              engine: e,
              backend: res.backend,
              device: res.device,
              runs: [],
              decode: { min: 0, median: 0 },
              prefill: { min: 0, median: 0 },
              loadMs: { min: 0, median: 0 },
            };
            cells.push(cell);
          }
          cell.runs.push(res);
          cell.decode = stats(cell.runs.map((x) => x.decodeTokS));
          cell.prefill = stats(cell.runs.map((x) => x.prefillTokS));
          cell.loadMs = stats(cell.runs.map((x) => x.loadMs));
          await save(); // partial results survive a timeout
        }
      }
    }
  }
  const report = summarize(cells, setup);
  await save();
  console.log(values.json ? JSON.stringify(report.json) : report.table);
}

/** The rows of the report: per model and precision, each engine's figures and the ratios. */
export function summarize(
  cells: Cell[],
  setup: { runs: number; promptTokens: number; tokens: number; threads: number },
): { json: Record<string, unknown>; table: string } {
  const rows: Record<string, unknown>[] = [];
  const lines: string[] = [
    `moeq vs llama.cpp: ${setup.runs} cold processes per cell (alternating), prompt ${setup.promptTokens} tokens, ` +
    `${setup.tokens} generated; tok/s as min / median; ratios of medians`,
    "",
  ];
  const engines = [...new Set(cells.map((c) => c.engine))];
  for (const e of engines) {
    const c = cells.find((c) => c.engine === e)!;
    lines.push(`- ${e}: ${c.backend}${c.device ? ` on ${c.device}` : ""}`);
  }
  lines.push(
    "",
    "| model | precision | engine | decode tok/s | prefill tok/s | load s | decode moeq ÷ | prefill moeq ÷ | greedy ids = moeq |",
    "|---|---|---|---|---|---|---|---|---|",
  );
  const fmt = (s: { min: number; median: number }, d = 1) =>
    `${s.min.toFixed(d)} / ${s.median.toFixed(d)}`;
  const keys = [...new Set(cells.map((c) => `${c.model}\u0000${c.precision}`))];
  for (const key of keys) {
    const [model, precision] = key.split("\u0000");
    const here = cells.filter((c) => c.model === model && c.precision === precision);
    const moeq = here.find((c) => c.engine === "moeq");
    for (const c of here) {
      const decodeRatio = moeq && c !== moeq ? moeq.decode.median / c.decode.median : null;
      const prefillRatio = moeq && c !== moeq ? moeq.prefill.median / c.prefill.median : null;
      const agree = moeq && c !== moeq ? agreeing(moeq.runs[0].ids, c.runs[0].ids) : null;
      const deterministic = c.runs.every((r) => agreeing(r.ids, c.runs[0].ids) === r.ids.length);
      rows.push({
        model,
        precision,
        engine: c.engine,
        backend: c.backend,
        device: c.device,
        decode_tok_s: c.decode,
        prefill_tok_s: c.prefill,
        load_ms: c.loadMs,
        moeq_over_decode: decodeRatio,
        moeq_over_prefill: prefillRatio,
        greedy_agree_tokens: agree,
        tokens: setup.tokens,
        deterministic,
        runs: c.runs,
      });
      lines.push(
        `| ${model} | ${precision} | ${c.engine} | ${fmt(c.decode)} | ${fmt(c.prefill)} | ${
          (c.loadMs.median / 1000).toFixed(1)
        } | ${decodeRatio === null ? "" : `${decodeRatio.toFixed(2)}×`} | ${
          prefillRatio === null ? "" : `${prefillRatio.toFixed(2)}×`
        } | ${agree === null ? "" : `${agree}/${setup.tokens}`}${
          deterministic ? "" : " (ids vary by run)"
        } |`,
      );
    }
  }
  const f16 = rows.filter((r) => r.precision === "f16" && r.greedy_agree_tokens !== null);
  const ok = f16.every((r) => r.greedy_agree_tokens === setup.tokens);
  if (f16.length) {
    lines.push(
      "",
      `greedy ids at f16: ${
        ok ? "moeq and llama.cpp agree on every token" : "DISAGREE (see table)"
      }`,
    );
  }
  return {
    json: { setup, rows, f16_greedy_agree: f16.length ? ok : null },
    table: lines.join("\n"),
  };
}

if (import.meta.main) {
  try {
    await benchPeer(Deno.args);
  } catch (e) {
    if (e instanceof MoeqError) {
      console.error(`moeq: ${e.message}`);
      Deno.exit(e.exitCode);
    }
    if (e instanceof TypeError && (e as { code?: string }).code?.startsWith("ERR_PARSE_ARGS")) {
      console.error(`moeq: bench peer: ${e.message}`);
      Deno.exit(2);
    }
    throw e;
  }
}
