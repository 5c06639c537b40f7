/**
 * The report `moeq inspect` prints: what an artifact holds — the model description (compactly:
 * per stack, runs of identical layers with their blocks), sizes, per-layer and per-expert bits,
 * bytes, allocator scores and reconstruction errors — as text or JSON.
 *
 * @module
 */

import { describeKvCache, kvCacheCost } from "../schemas/kv_cache.ts";
import { type DeviceBytes, plannedDeviceBytes } from "../runtime/engine/context.ts";
import {
  type Artifact,
  isRoutedExpertMatrix,
  openArtifact,
  segmentsOf,
  storageBits,
  type TensorRecord,
} from "../schemas/artifact.ts";
import type {
  ActivationSpec,
  BlockSpec,
  FfnSpec,
  GqaAttentionSpec,
  LayerSpec,
  MlpSpec,
  ModelSpec,
  NormSpec,
  RopeSpec,
  RouterSpec,
  StackName,
} from "../schemas/model.ts";

/** Options of {@link inspectArtifact}. */
export interface InspectOptions {
  /** Machine-readable JSON instead of text tables. */
  json?: boolean;
  /** Text mode: also list every tensor (default false; JSON always lists them). */
  tensors?: boolean;
}

/** One routed expert as inspect reports it. */
export interface InspectExpertRow {
  stack: StackName;
  layer: number;
  expert: number;
  /** Parameter-weighted mean code bits over its matrices (MXFP4 counts 4.25). */
  bits: number;
  /** Its matrices' storage formats, distinct, joined by "+": "q3", "mxfp4", "q2+q4", "f16". */
  format: string;
  /** Bytes of its segments (codes + scales + zeros). */
  bytes: number;
  /** Allocator scores from the compiler report ({} when none). */
  scores: Record<string, number>;
  /** Importance rank within the layer, −1 when not ranked. */
  rank: number;
  /** Relative reconstruction error, −1 when not measured. */
  rel_error: number;
}

/** A tensor's storage format in a word: "q3", "mxfp4" (e8m0 scales), "f16"... */
function formatOf(t: TensorRecord): string {
  if (!t.quant) return t.storage;
  return t.quant.scaleType === "e8m0" ? "mxfp4" : `q${t.quant.bits}`;
}

function bytesOf(t: TensorRecord): number {
  return segmentsOf(t).reduce((a, s) => a + s.length, 0);
}

/** Per-expert rows: bits/bytes from the tensors, scores/rank/rel_error from the report. */
export function expertRows(a: Artifact): InspectExpertRow[] {
  const rows = new Map<
    string,
    InspectExpertRow & { params: number; bitSum: number; formats: Set<string> }
  >();
  for (const t of a.tensors) {
    if (!isRoutedExpertMatrix(t)) continue;
    const key = `${t.stack}/${t.layer}/${t.expert}`;
    let r = rows.get(key);
    if (!r) {
      r = {
        stack: t.stack,
        layer: t.layer,
        expert: t.expert,
        bits: 0,
        format: "",
        bytes: 0,
        scores: {},
        rank: -1,
        rel_error: -1,
        params: 0,
        bitSum: 0,
        formats: new Set(),
      };
      rows.set(key, r);
    }
    const n = t.shape.reduce((x, y) => x * y, 1);
    r.params += n;
    r.bitSum += n * storageBits(t);
    r.bytes += bytesOf(t);
    r.formats.add(formatOf(t));
  }
  for (const e of a.experts) {
    const r = rows.get(`${e.stack}/${e.layer}/${e.expert}`);
    if (r) Object.assign(r, { scores: e.scores, rank: e.rank, rel_error: e.relError });
  }
  // Tensors come in expectedTensors order (encoder first, layers and experts ascending).
  return [...rows.values()].map(({ params, bitSum, formats, ...r }) => ({
    ...r,
    bits: params ? bitSum / params : 0,
    format: [...formats].join("+"),
  }));
}

// ---------------------------------------------------------------------------------------------
// The model description, compactly

/** A number for people: 1e6, 10000 → 1e4, 0.08838834 → 0.08839, 2.5. */
function num(x: number): string {
  if (Number.isInteger(x) && Math.abs(x) >= 1e4) return x.toExponential().replace("e+", "e");
  return String(Number(x.toPrecision(4)));
}

function normName(n: NormSpec): string {
  return n.kind === "rms" ? "" : n.bias ? "ln+bias " : "ln ";
}

function ropeName(r: RopeSpec, headDim: number): string {
  let s = `rope θ${num(r.theta)}`;
  if (r.rotaryDim !== headDim) s += ` dims ${r.rotaryDim}`;
  if (r.pairing === "interleaved") s += " interleaved";
  if (r.scaling.kind !== "none") s += ` ${r.scaling.kind}×${num(r.scaling.factor)}`;
  return s;
}

function gqaName(a: GqaAttentionSpec): string {
  const parts = [`gqa ${a.numHeads}/${a.numKvHeads}×${a.headDim}`];
  const p = a.position;
  if (p.kind === "rope") parts.push(ropeName(p, a.headDim));
  else if (p.kind === "relative_bias") {
    parts.push(`relbias ${p.buckets}${p.bidirectional ? " bidir" : ""} from ${p.ownerLayer}`);
  }
  if (a.qkvBias) parts.push("qkv-bias");
  if (a.outBias) parts.push("o-bias");
  if (a.qkNorm !== "none") parts.push(`qk-norm ${a.qkNorm}`);
  if (a.clipQkv !== null) parts.push(`clip ${num(a.clipQkv)}`);
  if (a.sinks) parts.push("sinks");
  if (a.slidingWindow !== null) parts.push(`window ${a.slidingWindow}`);
  if (Math.abs(a.scale * Math.sqrt(a.headDim) - 1) > 1e-12) parts.push(`scale ${num(a.scale)}`);
  return parts.join(" ");
}

function activationName(a: ActivationSpec): string {
  return a.kind === "swiglu_clamped" ? `swiglu-clamped ${num(a.limit)}` : a.kind;
}

function mlpName(m: MlpSpec): string {
  return `${activationName(m.activation)} ${m.intermediate}${m.bias ? " bias" : ""}`;
}

function routerName(r: RouterSpec): string {
  if (r.kind === "sparsemixer") return "sparsemixer";
  if (r.kind === "capacity") return `capacity ${r.capacity}`;
  const parts = [r.softmaxAfterTopK ? "softmax-after-topk" : r.scoring];
  if (r.normTopK) parts.push("norm");
  if (r.groups) parts.push(`groups ${r.groups.keep}/${r.groups.count} ${r.groups.score}`);
  if (r.selectionBias) parts.push("sel-bias");
  if (r.bias) parts.push("bias");
  if (r.scale !== 1) parts.push(`×${num(r.scale)}`);
  return parts.join(" ");
}

function ffnName(f: FfnSpec): string {
  if (f.kind === "dense") return `mlp ${mlpName(f.mlp)}`;
  let s = `moe ${f.numExperts} top-${f.topK} ${routerName(f.router)} ${mlpName(f.expert)}`;
  if (f.shared) s += ` + shared ${mlpName(f.shared.mlp)}${f.shared.gated ? " gated" : ""}`;
  return s;
}

/** One block in a few words, e.g. `attn gqa 4/4×8 rope θ1e6` or `moe 4 top-2 softmax swiglu 48`. */
export function describeBlock(b: BlockSpec): string {
  const norm = normName(b.norm);
  if (b.kind === "ffn") return norm + ffnName(b.ffn);
  if (b.kind === "cross_attention") return `${norm}cross ${gqaName(b.attention)}`;
  const a = b.attention;
  if (a.kind === "gqa") return `${norm}attn ${gqaName(a)}`;
  const q = a.qLoraRank === null ? "q" : `q-lora ${a.qLoraRank}`;
  return `${norm}attn mla ${a.numHeads} ${q} kv-lora ${a.kvLoraRank} ` +
    `nope/rope/v ${a.qkNopeHeadDim}/${a.qkRopeHeadDim}/${a.vHeadDim} ` +
    ropeName(a.position, a.qkRopeHeadDim);
}

/** One layer: its blocks joined by " · ", and its residual multiplier when not 1. */
export function describeLayer(l: LayerSpec): string {
  const blocks = l.blocks.map(describeBlock).join(" · ");
  return l.residualScale === 1 ? blocks : `${blocks} (residual ×${num(l.residualScale)})`;
}

/**
 * The description in a few lines: the model line, then per stack its layer count and runs of
 * identical consecutive layers, e.g. `  0-1  attn gqa 4/4×8 rope θ1e6 · moe 4 top-2 softmax
 * swiglu 48`.
 */
export function describeModel(m: ModelSpec): string[] {
  const head = [m.head.tied ? "tied head" : "untied head"];
  if (m.head.bias) head.push("+ bias");
  if (m.head.scale !== 1) head.push(`×${num(m.head.scale)}`);
  const tokens = [
    `bos ${m.bosTokenId ?? "none"}`,
    `eos ${m.eosTokenIds.join(",") || "none"}`,
    ...(m.decoderStartTokenId === null ? [] : [`decoder start ${m.decoderStartTokenId}`]),
  ];
  const out = [
    `model: ${m.family}, vocab ${m.vocabSize}, hidden ${m.hiddenSize}, ` +
    `max positions ${m.maxPositions}, ${head.join(" ")}` +
    `${m.embedScale === 1 ? "" : `, embedding ×${num(m.embedScale)}`}; ${tokens.join(", ")}`,
  ];
  for (const [name, s] of [["encoder", m.encoder], ["decoder", m.decoder]] as const) {
    if (!s) continue;
    out.push(
      `${name}: ${s.layers.length} layer${s.layers.length === 1 ? "" : "s"}` +
        `${s.finalNorm.kind === "layer" ? ", final LayerNorm" : ""}`,
    );
    const lines = s.layers.map(describeLayer);
    for (let start = 0; start < lines.length;) {
      let end = start;
      while (end + 1 < lines.length && lines[end + 1] === lines[start]) end++;
      const range = end === start ? `${start}` : `${start}-${end}`;
      out.push(`  ${range.padEnd(6)}${lines[start]}`);
      start = end + 1;
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// The report

function mib(n: number): string {
  return n >= 1 << 20 ? `${(n / 2 ** 20).toFixed(2)} MiB` : `${(n / 1024).toFixed(1)} KiB`;
}

/** Formats rows as a left/right-aligned text table. */
function table(head: string[], rows: (string | number)[][]): string {
  const cells = rows.map((r) => r.map(String));
  const width = head.map((h, i) => Math.max(h.length, ...cells.map((r) => r[i].length)));
  const numeric = head.map((_, i) => cells.every((r) => r[i] === "-" || !isNaN(Number(r[i]))));
  const line = (r: string[]) =>
    r.map((c, i) => (numeric[i] ? c.padStart(width[i]) : c.padEnd(width[i]))).join("  ").trimEnd();
  return [line(head), line(width.map((w) => "-".repeat(w))), ...cells.map(line)].join("\n");
}

/** Per (stack, layer): its feed-forward kind, bytes, routed-expert bytes and mean expert bits. */
function layerRows(a: Artifact, experts: InspectExpertRow[]) {
  const m = a.model;
  const stacks = [["encoder", m.encoder], ["decoder", m.decoder]] as const;
  return stacks.flatMap(([stack, s]) =>
    (s?.layers ?? []).map((layer, l) => {
      const ffn = layer.blocks.flatMap((b) => (b.kind === "ffn" ? [b.ffn.kind] : []));
      const mine = experts.filter((e) => e.stack === stack && e.layer === l);
      const tensors = a.tensors.filter((t) => t.stack === stack && t.layer === l);
      return {
        stack,
        layer: l,
        ffn: ffn.join("+") || "none",
        bytes: tensors.reduce((n, t) => n + bytesOf(t), 0),
        expertBytes: mine.reduce((n, e) => n + e.bytes, 0),
        avgExpertBits: mine.length ? mine.reduce((n, e) => n + e.bits, 0) / mine.length : 0,
      };
    })
  );
}

/** One line: what the WebGPU engine's device holds at the model's full context. */
export function describeDeviceBytes(d: DeviceBytes & { chunk: number }): string {
  return `device memory (WebGPU) at ${d.context} tokens: weights ${mib(d.weights)} + ` +
    `activations ${mib(d.activations)} (chunk ${d.chunk}) + KV cache ${d.kvPerToken} bytes/token ` +
    `× ${d.context} = ${mib(d.kv)} + RoPE tables and token buffers ${mib(d.other)} = ${
      mib(d.total)
    }`;
}

/** The inspect report of an already opened artifact. */
export function describeArtifact(a: Artifact, opts: InspectOptions = {}): string {
  const experts = expertRows(a);
  const tensorRows = a.tensors.map((t) => ({
    name: t.name,
    stack: t.stack,
    role: t.role,
    layer: t.layer,
    expert: t.expert,
    shape: t.shape,
    storage: t.storage,
    format: formatOf(t),
    bits: storageBits(t),
    groupSize: t.quant?.groupSize ?? null,
    scaleType: t.quant?.scaleType ?? null,
    quantizer: t.quant?.quantizer ?? null,
    bytes: bytesOf(t),
  }));
  const layers = layerRows(a, experts);
  if (opts.json) {
    return JSON.stringify(
      {
        path: a.path,
        fileBytes: a.fileLength,
        formatVersion: a.version,
        generator: a.generator,
        model: a.model,
        kvCache: kvCacheCost(a.model),
        deviceBytes: plannedDeviceBytes(a.model, a.tensors),
        summary: a.summary,
        options: a.options,
        tokenizer: {
          tokenizerJsonBytes: a.tokenizer.json?.length ?? null,
          chatTemplate: a.tokenizer.chatTemplate,
        },
        layers,
        experts,
        tensors: tensorRows,
      },
      null,
      2,
    );
  }
  const s = a.summary;
  const twoStacks = a.model.encoder !== null;
  const where = (r: { stack: string; layer: number }) => twoStacks ? [r.stack, r.layer] : [r.layer];
  const whereHead = twoStacks ? ["stack", "layer"] : ["layer"];
  const out: string[] = [
    `${a.path}: moeq artifact v${a.version} (${a.generator}), ${mib(a.fileLength)}`,
    ...describeModel(a.model),
    describeKvCache(a.model),
    describeDeviceBytes(plannedDeviceBytes(a.model, a.tensors)),
    `tensors: ${s.numTensors}, weights ${mib(s.totalBytes)}; routed experts ${mib(s.expertBytes)}` +
    ` at ${s.avgExpertBits.toFixed(3)} avg bits (${
      s.expertBitsPerWeight.toFixed(3)
    } bits/weight with scales)`,
    `tokenizer: ${
      a.tokenizer.json ? `tokenizer.json (${a.tokenizer.json.length} bytes)` : "byte-level"
    }${a.tokenizer.chatTemplate ? ", chat template" : ""}`,
    `options: ${a.optionsJson}`,
    "",
    table(
      [...whereHead, "ffn", "bytes", "expert bytes", "avg expert bits"],
      layers.map((l) => [
        ...where(l),
        l.ffn,
        l.bytes,
        l.expertBytes,
        l.avgExpertBits.toFixed(3),
      ]),
    ),
  ];
  if (experts.length) {
    const scoreNames = [...new Set(experts.flatMap((e) => Object.keys(e.scores)))];
    out.push(
      "",
      table(
        [...whereHead, "expert", "bits", "format", "bytes", "rank", "rel_error", ...scoreNames],
        experts.map((e) => [
          ...where(e),
          e.expert,
          e.bits.toFixed(2),
          e.format,
          e.bytes,
          e.rank,
          e.rel_error < 0 ? "-" : e.rel_error.toFixed(4),
          ...scoreNames.map((n) => (n in e.scores ? e.scores[n].toPrecision(4) : "-")),
        ]),
      ),
    );
  }
  if (opts.tensors) {
    out.push(
      "",
      table(
        ["name", "stack", "role", "layer", "expert", "shape", "storage", "group", "bytes"],
        tensorRows.map((t) => [
          t.name,
          t.stack,
          t.role,
          t.layer,
          t.expert,
          t.shape.join("x"),
          t.storage === "q" ? `${t.format} ${t.quantizer}` : t.storage,
          t.groupSize ?? "-",
          t.bytes,
        ]),
      ),
    );
  }
  return out.join("\n");
}

/** Opens `path` (validating it) and returns its inspect report. */
export async function inspectArtifact(path: string, opts: InspectOptions = {}): Promise<string> {
  const a = await openArtifact(path);
  try {
    return describeArtifact(a, opts);
  } finally {
    a.close();
  }
}
