/**
 * `moeq inspect`: what an artifact holds — architecture, sizes, per-layer and per-expert bits,
 * bytes, allocator scores and reconstruction errors — as a text report or JSON.
 *
 * @module
 */

import {
  type Artifact,
  isExpertTensorRole,
  openArtifact,
  segmentsOf,
  storageBits,
  type TensorRecord,
} from "../schemas/artifact.ts";

/** Options of {@link inspectArtifact}. */
export interface InspectOptions {
  /** Machine-readable JSON instead of text tables. */
  json?: boolean;
  /** Text mode: also list every tensor (default false; JSON always lists them). */
  tensors?: boolean;
}

/** One routed expert as inspect reports it. */
export interface InspectExpertRow {
  layer: number;
  expert: number;
  /** Parameter-weighted mean code bits over its matrices. */
  bits: number;
  /** Bytes of its segments (codes + scales + zeros). */
  bytes: number;
  /** Allocator scores from the compiler report ({} when none). */
  scores: Record<string, number>;
  /** Importance rank within the layer, -1 when not ranked. */
  rank: number;
  /** Relative reconstruction error, -1 when not measured. */
  rel_error: number;
}

function bytesOf(t: TensorRecord): number {
  return segmentsOf(t).reduce((a, s) => a + s.length, 0);
}

/** Per-expert rows: bits/bytes from the tensors, scores/rank/rel_error from the report. */
export function expertRows(a: Artifact): InspectExpertRow[] {
  const rows = new Map<string, InspectExpertRow & { params: number; bitSum: number }>();
  for (const t of a.tensors) {
    if (!isExpertTensorRole(t.role) || t.expert < 0) continue;
    const key = `${t.layer}/${t.expert}`;
    let r = rows.get(key);
    if (!r) {
      r = {
        layer: t.layer,
        expert: t.expert,
        bits: 0,
        bytes: 0,
        scores: {},
        rank: -1,
        rel_error: -1,
        params: 0,
        bitSum: 0,
      };
      rows.set(key, r);
    }
    const n = t.shape.reduce((x, y) => x * y, 1);
    r.params += n;
    r.bitSum += n * storageBits(t);
    r.bytes += bytesOf(t);
  }
  for (const e of a.experts) {
    const r = rows.get(`${e.layer}/${e.expert}`);
    if (r) Object.assign(r, { scores: e.scores, rank: e.rank, rel_error: e.relError });
  }
  return [...rows.values()]
    .sort((x, y) => x.layer - y.layer || x.expert - y.expert)
    .map(({ params, bitSum, ...r }) => ({ ...r, bits: params ? bitSum / params : 0 }));
}

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

/** The inspect report of an already opened artifact. */
export function describeArtifact(a: Artifact, opts: InspectOptions = {}): string {
  const c = a.config;
  const experts = expertRows(a);
  const tensorRows = a.tensors.map((t) => ({
    name: t.name,
    role: t.role,
    layer: t.layer,
    expert: t.expert,
    shape: t.shape,
    storage: t.storage,
    bits: storageBits(t),
    groupSize: t.quant?.groupSize ?? null,
    scaleType: t.quant?.scaleType ?? null,
    quantizer: t.quant?.quantizer ?? null,
    bytes: bytesOf(t),
  }));
  const layers = c.layerKinds.map((kind, l) => {
    const mine = experts.filter((e) => e.layer === l);
    const bytes = a.tensors.filter((t) => t.layer === l).reduce((s, t) => s + bytesOf(t), 0);
    const eb = mine.reduce((s, e) => s + e.bytes, 0);
    const bits = mine.length ? mine.reduce((s, e) => s + e.bits, 0) / mine.length : 0;
    return { layer: l, kind, bytes, expertBytes: eb, avgExpertBits: bits };
  });
  if (opts.json) {
    return JSON.stringify(
      {
        path: a.path,
        fileBytes: a.fileLength,
        formatVersion: a.version,
        generator: a.generator,
        config: c,
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
  const r = c.routing;
  const out: string[] = [
    `${a.path}: moeq artifact v${a.version} (${a.generator}), ${mib(a.fileLength)}`,
    `architecture: ${c.family}, ${c.numLayers} layers, hidden ${c.hiddenSize}, vocab ${c.vocabSize}, ` +
    `heads ${c.numHeads}/${c.numKvHeads} x ${c.headDim}, rope theta ${c.ropeTheta}`,
    `experts: ${r.numExperts} per MoE layer, top-${r.topK} ${r.scoring}` +
    `${r.normTopK ? " (renormalised)" : ""}, intermediate ${c.expertIntermediateSize}` +
    (c.sharedIntermediateSize ? `, shared expert ${c.sharedIntermediateSize}` : "") +
    (c.denseIntermediateSize ? `, dense MLP ${c.denseIntermediateSize}` : ""),
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
      ["layer", "kind", "bytes", "expert bytes", "avg expert bits"],
      layers.map((l) => [l.layer, l.kind, l.bytes, l.expertBytes, l.avgExpertBits.toFixed(3)]),
    ),
  ];
  if (experts.length) {
    const scoreNames = [...new Set(experts.flatMap((e) => Object.keys(e.scores)))];
    out.push(
      "",
      table(
        ["layer", "expert", "bits", "bytes", "rank", "rel_error", ...scoreNames],
        experts.map((e) => [
          e.layer,
          e.expert,
          e.bits.toFixed(2),
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
        ["name", "role", "layer", "expert", "shape", "storage", "group", "bytes"],
        tensorRows.map((t) => [
          t.name,
          t.role,
          t.layer,
          t.expert,
          t.shape.join("x"),
          t.storage === "q" ? `q${t.bits} ${t.quantizer}` : t.storage,
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
