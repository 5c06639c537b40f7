/**
 * `moeq study <checkpoint> --text FILE --bits 2.25,2.5,3`: the allocation study.
 *
 * Compiles the model under every allocator at each average expert bit-width (and the uniform,
 * float and MoQE dense-vs-expert contrasts), evaluates every artifact on the same held-out
 * bytes, and prints a markdown table (or JSON). Calibration text, when an allocator needs it, is
 * taken from the same file right AFTER the evaluated prefix, so the two never overlap.
 *
 * An encoder–decoder model is studied on a span set instead (`--spans FILE.jsonl`, as
 * `eval --spans`): the first `--examples` examples are evaluated teacher-forced (bits per target
 * token, in the table's bits/byte column), the next `--calibration-examples` calibrate.
 *
 * @module
 */

import type { Args, CommandSpec } from "./args.ts";
import { loadCheckpoint } from "../compiler/checkpoint/mod.ts";
import type { ModelIR } from "../compiler/ir.ts";
import {
  compileModel,
  type CompileOptions,
  type DenseStorage,
  type ExpertStorage,
} from "../compiler/compile.ts";
import { storageJson } from "../compiler/stages/plan.ts";
import { calibrate, calibrateSpans, type CalibrationData } from "../compiler/calibration.ts";
import { DATA_FREE_COSTS } from "../compiler/data_free.ts";
import { parseSpans, prepareReference, type Span } from "../compiler/reference/mod.ts";
import type { AllocatorName } from "../compiler/passes/mod.ts";
import { QUANT_METHODS, type QuantMethod } from "../compiler/quantize/mod.ts";
import { openArtifact } from "../schemas/artifact.ts";
import { UsageError } from "../schemas/errors.ts";
import type { DeviceKind } from "./model_source.ts";
import type { EvalReply, EvalRequest } from "./study_worker.ts";
import { readTextIds } from "./text.ts";
import { probe, probeTables } from "./study_probe.ts";
import { isQuantBits, type QuantBits } from "../schemas/packing.ts";
import { parseDenseStorage } from "./compile_flags.ts";

/** Flags of `study`. */
export const spec: CommandSpec = {
  usage: "<checkpoint-dir> (--text FILE | --spans FILE.jsonl) [options]",
  summary: "compare bit allocators at equal average expert bits on held-out text",
  positionals: [1, 1],
  flags: {
    text: { type: "string", help: "held-out text (decoder-only models)" },
    spans: {
      type: "string",
      help: "encoder–decoder models: held-out examples (JSONL, as eval --spans)",
    },
    examples: { type: "string", help: "--spans: examples evaluated", default: "128" },
    "calibration-examples": {
      type: "string",
      help: "--spans: calibration examples, taken right after the evaluated ones",
      default: "64",
    },
    init: { type: "string", help: "step-0 checkpoint (router-norm change)" },
    bits: { type: "string", help: "average expert bit-widths", default: "2.25,2.5,3" },
    "max-bytes": { type: "string", help: "evaluate the first N bytes", default: "16384" },
    "calibration-bytes": {
      type: "string",
      help: "calibration bytes taken right after the evaluated ones",
      default: "4096",
    },
    context: { type: "string", help: "window length", default: "the model's max positions" },
    quantizer: { type: "string", help: QUANT_METHODS.join("|"), default: "rtn" },
    quantizers: {
      type: "string",
      help: "extra quantizers compared at uniform 3 bits and budget, e.g. hqq,gptq",
      default: "hqq,gptq",
    },
    "dense-bits": { type: "string", help: "non-expert storage", default: "f32" },
    seeds: { type: "string", help: "random-allocator seeds", default: "10" },
    "group-size": { type: "string", help: "quantization group", default: "64" },
    device: {
      type: "string",
      help: "evaluate on cpu (float64 reference) or webgpu",
      default: "cpu",
    },
    only: { type: "string", help: "comma-separated run labels to keep (debugging)" },
    probe: {
      type: "boolean",
      help: "instead of the study: per-expert loss sensitivity vs Λ/frequency/proxy (Spearman)",
    },
    "probe-bytes": { type: "string", help: "evaluation bytes of --probe", default: "4096" },
    "probe-bits": { type: "string", help: "width of --probe", default: "2" },
    jobs: { type: "string", help: "parallel evaluation workers", default: "2" },
    json: { type: "boolean", help: "print JSON instead of markdown" },
    quiet: { type: "boolean", help: "no per-run log on stderr" },
  },
};

/** One compiled-and-evaluated variant. */
export interface StudyRow {
  label: string;
  allocator: string;
  quantizer: string;
  /** Target average expert bits (null: float experts). */
  targetBits: number | null;
  avgExpertBits: number;
  denseBits: string;
  bytes: number;
  bitsPerByte: number;
  /** bits/byte minus the f32 model's. */
  delta: number;
  /** For aggregated random rows: sample standard deviation over seeds. */
  sd?: number;
  seeds?: number;
}

interface Run {
  label: string;
  opts: Omit<CompileOptions, "onProgress">;
}

const F32: { kind: "float"; storage: "f32" } = { kind: "float", storage: "f32" };
const bits = (average: number): ExpertStorage => ({ kind: "bits", average });
const denseAt = (b: QuantBits): DenseStorage => ({ kind: "bits", bits: b });

function runsFor(
  bitsList: number[],
  quantizer: QuantMethod,
  denseStorage: DenseStorage,
  extraQuantizers: QuantMethod[],
  seeds: number,
  hasInit: boolean,
): Run[] {
  const runs: Run[] = [{ label: "f32", opts: { expertStorage: F32, denseStorage: F32 } }];
  const q = (
    average: number,
    allocator: AllocatorName,
    extra: Partial<CompileOptions> = {},
  ) => ({
    expertStorage: bits(average),
    denseStorage,
    allocator,
    quantizer,
    ...extra,
  });
  for (const b of [2, 3, 4]) runs.push({ label: `uniform-${b}`, opts: q(b, "uniform") });
  for (const target of bitsList) {
    runs.push({ label: `paper@${target}`, opts: q(target, "paper") });
    if (hasInit) {
      runs.push({
        label: `paper-noinit@${target}`,
        opts: { ...q(target, "paper"), init: undefined },
      });
    }
    runs.push({ label: `reverse-paper@${target}`, opts: q(target, "reverse-paper") });
    for (let s = 0; s < seeds; s++) {
      runs.push({ label: `random#${s}@${target}`, opts: q(target, "random", { seed: s }) });
    }
    runs.push({ label: `frequency@${target}`, opts: q(target, "frequency") });
    runs.push({ label: `budget@${target}`, opts: q(target, "budget") });
    // Data-free budget (no calibration), each weight-only cost variant (compiler/data_free.ts).
    for (const v of DATA_FREE_COSTS) {
      runs.push({
        label: `budget-free-${v}@${target}`,
        opts: q(target, "budget", { budgetCost: "weight", dataFreeCost: v }),
      });
    }
  }
  // MoQE's contrast: the same low width on experts only vs on the dense (attention...) part only.
  for (const b of [2, 3] as const) {
    runs.push({
      label: `experts-only-${b}`,
      opts: { expertStorage: bits(b), denseStorage: F32, allocator: "uniform", quantizer },
    });
    runs.push({
      label: `dense-only-${b}`,
      opts: { expertStorage: F32, denseStorage: denseAt(b), denseQuantizer: quantizer },
    });
  }
  for (const m of extraQuantizers) {
    runs.push({ label: `uniform-3/${m}`, opts: q(3, "uniform", { quantizer: m }) });
    runs.push({ label: `uniform-2/${m}`, opts: q(2, "uniform", { quantizer: m }) });
    for (const target of bitsList) {
      runs.push({ label: `budget@${target}/${m}`, opts: q(target, "budget", { quantizer: m }) });
    }
  }
  return runs;
}

function allocatorOf(label: string): string {
  return label.split(/[@#/]/)[0].replace(/-\d$/, "");
}

/** Aggregates random seeds into mean ± sd rows; other rows pass through. */
export function aggregate(rows: StudyRow[]): StudyRow[] {
  const out: StudyRow[] = [];
  const groups = new Map<string, StudyRow[]>();
  for (const r of rows) {
    const m = r.label.match(/^random#\d+@(.+)$/);
    if (!m) {
      out.push(r);
      continue;
    }
    const key = `random@${m[1]}`;
    if (!groups.has(key)) {
      groups.set(key, []);
      out.push({ ...r, label: key });
    }
    groups.get(key)!.push(r);
  }
  return out.map((r) => {
    const g = groups.get(r.label);
    if (!g) return r;
    const mean = (f: (x: StudyRow) => number) => g.reduce((s, x) => s + f(x), 0) / g.length;
    const bpb = mean((x) => x.bitsPerByte);
    const sd = g.length > 1
      ? Math.sqrt(g.reduce((s, x) => s + (x.bitsPerByte - bpb) ** 2, 0) / (g.length - 1))
      : 0;
    return {
      ...r,
      bitsPerByte: bpb,
      delta: mean((x) => x.delta),
      bytes: Math.round(mean((x) => x.bytes)),
      avgExpertBits: mean((x) => x.avgExpertBits),
      sd,
      seeds: g.length,
    };
  });
}

/** The study's markdown table. */
export function studyTable(rows: StudyRow[]): string {
  const lines = [
    "| run | allocator | quantizer | avg expert bits | dense | artifact bytes | bits/byte | Δ vs f32 |",
    "| --- | --- | --- | ---: | --- | ---: | ---: | ---: |",
  ];
  for (const r of rows) {
    const bpb = r.sd !== undefined
      ? `${r.bitsPerByte.toFixed(4)} ± ${r.sd.toFixed(4)} (${r.seeds} seeds)`
      : r.bitsPerByte.toFixed(4);
    lines.push(
      `| ${r.label} | ${r.allocator} | ${r.quantizer} | ${
        r.avgExpertBits.toFixed(3)
      } | ${r.denseBits} | ${r.bytes} | ${bpb} | ${r.delta >= 0 ? "+" : ""}${r.delta.toFixed(4)} |`,
    );
  }
  return lines.join("\n");
}

/** A fixed set of evaluation Workers, each taking one artifact at a time. */
class EvalPool {
  #workers: Worker[] = [];
  #idle: Worker[] = [];
  #queue: { req: EvalRequest; resolve: (v: number) => void; reject: (e: Error) => void }[] = [];
  #waiting = new Map<number, { resolve: (v: number) => void; reject: (e: Error) => void }>();
  #next = 0;
  #readyWaiters: (() => void)[] = [];

  constructor(size: number) {
    for (let i = 0; i < size; i++) {
      const w = new Worker(new URL("./study_worker.ts", import.meta.url).href, { type: "module" });
      w.onmessage = (ev: MessageEvent<EvalReply>) => {
        const p = this.#waiting.get(ev.data.id)!;
        this.#waiting.delete(ev.data.id);
        if (ev.data.error !== undefined) p.reject(new Error(`evaluation: ${ev.data.error}`));
        else p.resolve(ev.data.bitsPerToken!);
        this.#idle.push(w);
        this.#pump();
      };
      this.#workers.push(w);
      this.#idle.push(w);
    }
  }

  /** Evaluates an artifact in the next free worker; the file is deleted afterwards. */
  evaluate(
    path: string,
    ids: number[],
    context: number,
    device: DeviceKind,
    spans?: Span[],
  ): Promise<number> {
    return new Promise<number>((resolve, reject) => {
      const done = (f: () => void) => () => Deno.remove(path).catch(() => {}).finally(f);
      this.#queue.push({
        req: { id: this.#next++, path, ids, context, device, spans },
        resolve: (v) => done(() => resolve(v))(),
        reject: (e) => done(() => reject(e))(),
      });
      this.#pump();
    });
  }

  /** Resolves once fewer than `max` evaluations are queued or running. */
  async ready(max: number): Promise<void> {
    while (this.#queue.length + this.#waiting.size >= max) {
      await new Promise<void>((resolve) => this.#readyWaiters.push(resolve));
    }
  }

  #pump(): void {
    while (this.#idle.length && this.#queue.length) {
      const job = this.#queue.shift()!;
      const w = this.#idle.shift()!;
      this.#waiting.set(job.req.id, job);
      w.postMessage(job.req);
    }
    for (const r of this.#readyWaiters.splice(0)) r();
  }

  close(): void {
    for (const w of this.#workers) w.terminate();
  }
}

/** Runs `study`. */
export async function run(args: Args): Promise<void> {
  const ir: ModelIR = await loadCheckpoint(args.positionals[0]);
  if (ir.spec.encoder) return await runSeq2Seq(args, ir);
  const text = args.string("text");
  if (!text) throw new UsageError("study: --text FILE is required");
  const initDir = args.string("init");
  const init = initDir ? await loadCheckpoint(initDir) : undefined;
  const spec = ir.spec;
  if (ir.tokenizer.tokenizerJson !== null) {
    throw new UsageError(
      `study: only byte-level models (no tokenizer.json) are supported for now; ${
        args.positionals[0]
      } has a tokenizer.json`,
    );
  }
  const bitsList = args.numberList("bits", [2.25, 2.5, 3]);
  const maxBytes = args.int("max-bytes", 16384, 2);
  const calibBytes = args.int("calibration-bytes", 4096, 2);
  const context = args.int("context", spec.maxPositions, 2, spec.maxPositions);
  const quantizer = args.choice("quantizer", QUANT_METHODS, "rtn") as QuantMethod;
  const extra = (args.string("quantizers", "hqq,gptq")).split(",").filter((s) => s !== "").map(
    (s) => {
      if (!(QUANT_METHODS as readonly string[]).includes(s)) {
        throw new UsageError(`--quantizers: unknown quantizer "${s}"`);
      }
      return s as QuantMethod;
    },
  ).filter((m) => m !== quantizer);
  const denseStorage = parseDenseStorage(args.string("dense-bits", "f32"));
  const device = args.choice<DeviceKind>("device", ["cpu", "webgpu"], "cpu");
  const jobs = args.int("jobs", 2, 1, 64);
  const seeds = args.int("seeds", 10, 0, 1000);
  const groupSize = args.int("group-size", 64, 1);
  const only = args.string("only")?.split(",");
  const log = args.flag("quiet") ? () => {} : (s: string) => console.error(s);

  const evalIds = await readTextIds(text, null, { maxBytes });
  const calibIds = await readTextIds(text, null, { offset: maxBytes, maxBytes: calibBytes });
  // Byte-level: every byte is a token id, so the text must stay inside the vocabulary.
  for (const [ids, offset] of [[evalIds, 0], [calibIds, maxBytes]] as const) {
    const i = ids.findIndex((b) => b >= spec.vocabSize);
    if (i >= 0) {
      throw new UsageError(
        `study: ${text}: byte ${ids[i]} at offset ${offset + i} is not a token of ${
          args.positionals[0]
        } (byte-level, vocab ${spec.vocabSize})`,
      );
    }
  }
  let runs = runsFor(bitsList, quantizer, denseStorage, extra, seeds, init !== undefined);
  if (only) runs = runs.filter((r) => only.includes(r.label) || r.label === "f32");

  const t0 = performance.now();
  log(
    `calibrating on ${calibIds.length} tokens (bytes ${maxBytes}..${maxBytes + calibIds.length})`,
  );
  const calibration: CalibrationData = await calibrate(await prepareReference(ir), calibIds, {
    context,
  });
  if (args.flag("probe")) {
    const probeIds = evalIds.slice(0, args.int("probe-bytes", 4096, 2));
    const bits = args.int("probe-bits", 2, 2, 8);
    if (!isQuantBits(bits)) throw new UsageError(`--probe-bits: ${bits} is not 2, 3, 4 or 8`);
    const result = await probe(ir, await prepareReference(ir), calibration, probeIds, {
      context,
      bits,
      groupSize,
      method: quantizer,
      init,
      log,
    });
    console.log(args.flag("json") ? JSON.stringify(result) : probeTables(result));
    return;
  }
  const rows = await studyRuns(runs, ir, {
    init,
    calibration,
    groupSize,
    quantizer,
    denseStorage,
    jobs,
    log,
    evaluate: (pool, path) => pool.evaluate(path, evalIds, context, device),
  });
  const f32 = rows.find((r) => r.label === "f32")?.bitsPerByte ?? NaN;
  for (const r of rows) r.delta = r.bitsPerByte - f32;
  const table = aggregate(rows);
  const seconds = (performance.now() - t0) / 1000;
  if (args.flag("json")) {
    console.log(JSON.stringify({
      model: args.positionals[0],
      eval_bytes: evalIds.length,
      calibration_bytes: calibIds.length,
      context,
      device,
      seconds,
      rows: table,
      runs: rows,
    }));
  } else {
    console.log(studyTable(table));
    console.log(
      `\n${evalIds.length} held-out bytes, context ${context}, calibration ${calibIds.length} bytes after them; ${device}; ${
        seconds.toFixed(0)
      } s`,
    );
  }
}

/** What {@link studyRuns} needs besides the runs. */
interface StudyContext {
  init?: ModelIR;
  calibration: CalibrationData;
  groupSize: number;
  quantizer: QuantMethod;
  denseStorage: DenseStorage;
  jobs: number;
  log: (s: string) => void;
  /** Queues the evaluation of the artifact at `path` (deleted afterwards). */
  evaluate: (pool: EvalPool, path: string) => Promise<number>;
}

/** Compiles every run and evaluates it (identical weights once); rows in run order. */
async function studyRuns(runs: Run[], ir: ModelIR, o: StudyContext): Promise<StudyRow[]> {
  const dir = await Deno.makeTempDir({ prefix: "moeq-study-" });
  const pool = new EvalPool(o.jobs);
  const rows: StudyRow[] = [];
  // Runs whose artifacts hold identical weights (same allocation, quantizer, dense storage) are
  // evaluated once: e.g. paper with and without init when Λ orders agree.
  const byKey = new Map<string, Promise<number>>();
  const pending: Promise<void>[] = [];
  try {
    for (const [i, r] of runs.entries()) {
      const path = `${dir}/run-${i}.moeq`;
      const tc = performance.now();
      const compiled = await compileModel(ir, path, {
        groupSize: o.groupSize,
        init: o.init,
        calibration: o.calibration,
        ...r.opts,
      });
      const art = await openArtifact(path);
      const avg = art.summary.avgExpertBits;
      art.close();
      const compileS = (performance.now() - tc) / 1000;
      const method = String(r.opts.quantizer ?? o.quantizer);
      const experts = r.opts.expertStorage;
      const dense = r.opts.denseStorage ?? o.denseStorage;
      const key = JSON.stringify([
        storageJson(dense),
        r.opts.denseQuantizer ?? "rtn",
        experts.kind === "bits" ? method : experts.storage,
        compiled.experts.map((e) => e.bits),
      ]);
      let evaluation = byKey.get(key);
      const reused = evaluation !== undefined;
      if (!evaluation) {
        evaluation = o.evaluate(pool, path);
        byKey.set(key, evaluation);
      } else await Deno.remove(path);
      const row: StudyRow = {
        label: r.label,
        allocator: experts.kind === "bits" ? allocatorOf(r.label) : "-",
        quantizer: experts.kind === "bits"
          ? (compiled.experts.length ? method : "-")
          : (dense.kind === "bits" ? String(r.opts.denseQuantizer ?? "rtn") : "-"),
        targetBits: experts.kind === "bits" ? experts.average : null,
        avgExpertBits: avg,
        denseBits: String(storageJson(dense)),
        bytes: compiled.bytes,
        bitsPerByte: NaN,
        delta: NaN,
      };
      rows.push(row);
      pending.push(evaluation.then((bpb) => {
        row.bitsPerByte = bpb;
        o.log(
          `[${i + 1}/${runs.length}] ${r.label.padEnd(22)} bpb ${bpb.toFixed(4)}  avg bits ${
            avg.toFixed(3)
          }  compile ${compileS.toFixed(1)} s${reused ? "  (same weights as an earlier run)" : ""}`,
        );
      }));
      // Keep at most a few compiled artifacts waiting on disk.
      await pool.ready(o.jobs + 1);
    }
    await Promise.all(pending);
  } finally {
    pool.close();
    await Deno.remove(dir, { recursive: true });
  }
  return rows;
}

/** `study` of an encoder–decoder model on a span set (see the module doc). */
async function runSeq2Seq(args: Args, ir: ModelIR): Promise<void> {
  const file = args.string("spans");
  if (!file) throw new UsageError("study: an encoder–decoder model is studied with --spans FILE");
  if (args.flag("probe")) throw new UsageError("study: --probe needs a decoder-only model");
  const initDir = args.string("init");
  const init = initDir ? await loadCheckpoint(initDir) : undefined;
  const all = parseSpans(await Deno.readTextFile(file), file, ir.spec.vocabSize);
  const count = args.int("examples", 128, 1);
  const calibCount = args.int("calibration-examples", 64, 1);
  const evalSpans = all.slice(0, count);
  const calibSpans = all.slice(count, count + calibCount);
  if (calibSpans.length === 0) {
    throw new UsageError(`study: ${file} has no examples left after the ${count} evaluated`);
  }
  const quantizer = args.choice("quantizer", QUANT_METHODS, "rtn") as QuantMethod;
  const extra = args.string("quantizers", "hqq,gptq").split(",").filter((m) => m !== "")
    .map((m) => {
      if (!(QUANT_METHODS as readonly string[]).includes(m)) {
        throw new UsageError(`--quantizers: unknown quantizer "${m}"`);
      }
      return m as QuantMethod;
    }).filter((m) => m !== quantizer);
  const denseStorage = parseDenseStorage(args.string("dense-bits", "f32"));
  const jobs = args.int("jobs", 2, 1, 64);
  const only = args.string("only")?.split(",");
  const log = args.flag("quiet") ? () => {} : (s: string) => console.error(s);
  let runs = runsFor(
    args.numberList("bits", [2.25, 2.5, 3]),
    quantizer,
    denseStorage,
    extra,
    args.int("seeds", 10, 0, 1000),
    init !== undefined,
  );
  if (only) runs = runs.filter((r) => only.includes(r.label) || r.label === "f32");
  const t0 = performance.now();
  log(`calibrating on examples ${count}..${count + calibSpans.length} of ${file}`);
  const calibration = await calibrateSpans(await prepareReference(ir), calibSpans);
  const rows = await studyRuns(runs, ir, {
    init,
    calibration,
    groupSize: args.int("group-size", 64, 1),
    quantizer,
    denseStorage,
    jobs,
    log,
    evaluate: (pool, path) => pool.evaluate(path, [], 0, "cpu", evalSpans),
  });
  const f32 = rows.find((r) => r.label === "f32")?.bitsPerByte ?? NaN;
  for (const r of rows) r.delta = r.bitsPerByte - f32;
  const table = aggregate(rows);
  const seconds = (performance.now() - t0) / 1000;
  const tokens = evalSpans.reduce((n, s) => n + s.labels.length, 0);
  if (args.flag("json")) {
    console.log(JSON.stringify({
      model: args.positionals[0],
      examples: evalSpans.length,
      tokens,
      calibration_examples: calibSpans.length,
      device: "cpu",
      seconds,
      rows: table,
      runs: rows,
    }));
  } else {
    console.log(studyTable(table).replace("| bits/byte |", "| bits/token |"));
    console.log(
      `\n${evalSpans.length} held-out examples (${tokens} target tokens), calibration on the ${calibSpans.length} after them; cpu; ${
        seconds.toFixed(0)
      } s`,
    );
  }
}
