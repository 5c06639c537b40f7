/**
 * Weight upload: the artifact's tensor records, found by (stack, layer, expert, role) key, become
 * GPU weight sets grouped per block as the plan reads them.
 *
 * Storage on the GPU: f32, f16 and bf16 matrices stay in their format (f16/bf16 as packed u16
 * pairs, decoded in the shaders, so bf16 is exact and no shader-f16 is needed); quantized
 * matrices keep the packed codes/scales/zeros of schemas/packing.ts and are decoded inside the
 * matmul kernels (kernels/weights.ts). Norm weights and biases are converted to f32.
 *
 * Binding limit: no buffer the engine binds may exceed the device's maxStorageBufferBindingSize
 * and maxBufferSize (or the smaller `maxBinding` the caller forces). A matrix larger than that is
 * split into row blocks, each its own weight set (a {@link Matrix} of {@link MatrixBlock}s); the
 * plan runs one matmul per block, each writing its slice of the output row, and one embedding
 * gather per block. This holds in every storage format: a row block of a quantized matrix is a
 * contiguous run of its codes and of its scales and zeros.
 *
 * Routed experts of a block are grouped per matrix by storage format ("precision group"), each
 * group split into weight sets of as many experts as fit a binding (at most 128 MiB); an expert
 * larger than a binding is split into row blocks too. The plan runs one dispatch per set.
 *
 * Fusions made here for the tiled kernel style: q/k/v stacked into one projection when there is
 * no q/k norm, and gate/up stacked (of routed experts, shared experts and dense MLPs) for the
 * fused gate/up + SwiGLU kernel — each when the parts share a storage format. A stacked gate/up
 * split into row blocks stacks the same rows of gate and up in each block.
 *
 * @module
 */

import { type Artifact, floatBytesToF32, type TensorRecord } from "../../schemas/artifact.ts";
import { InputError, LimitError } from "../../schemas/errors.ts";
import type {
  DenseFfnSpec,
  GqaAttentionSpec,
  MlpSpec,
  ModelSpec,
  MoeFfnSpec,
  NormSpec,
} from "../../schemas/model.ts";
import type { QuantizedTensor } from "../../schemas/packing.ts";
import { describeKey, keyString, matrixShape, type TensorKey } from "../../schemas/tensors.ts";
import { storageBuffer } from "../kernels/kernel.ts";
import {
  formatName,
  type HostMatrix,
  matrixBytes,
  rowBlockUniform,
  rowsPerBinding,
  sliceRows,
  type StackedRows,
  uploadWeightSet,
  type WeightFormat,
  type WeightSet,
  weightSetFits,
} from "../kernels/weights.ts";
import { loadMla, type MlaWeights } from "./mla.ts";

/** What the engine reads from an opened artifact. */
export type EngineArtifact = Pick<
  Artifact,
  "path" | "model" | "tensors" | "read" | "readQuantized"
>;

/** Largest weight-set binding the engine creates for grouped experts (the WebGPU default). */
export const EXPERT_SET_BYTES = 128 * 1024 * 1024;

/** Weight bytes uploaded between waits for the staging memory to be freed (see WeightLoader). */
const STAGING_FLUSH_BYTES = 64 * 1024 * 1024;

/** One row block of a {@link Matrix}: rows row0 .. row0 + set.rows − 1 (of gate and of up). */
export interface MatrixBlock {
  row0: number;
  /** The block's rows ([gate rows; up rows] of the block for a stacked gate/up). */
  set: WeightSet;
  /** The kernels' `rowBlock` uniform (row0, rows) when the matrix has several blocks. */
  rowBlock?: GPUBuffer;
}

/**
 * A weight matrix on the GPU as row blocks that each fit a binding (one block when it fits
 * whole). `rows` counts output rows: for a stacked [gate; up] matrix, the rows of gate.
 */
export interface Matrix {
  format: WeightFormat;
  rows: number;
  cols: number;
  blocks: MatrixBlock[];
}

/** A weight set of routed experts, with the global expert id of each of its matrices. */
export interface ExpertSet {
  set: WeightSet;
  /** u32 expert ids, one per matrix of the set (the kernels' `setExperts`). */
  experts: GPUBuffer;
  /** First output row the set's matrices hold (0 unless the experts are split in row blocks). */
  row0: number;
  /** Output rows of a whole expert matrix (of gate for a stacked gate/up). */
  outRows: number;
  /** The kernels' `rowBlock` uniform (row0, rows) when the experts are split in row blocks. */
  rowBlock?: GPUBuffer;
}

/** An MLP's matrices: gate and up stacked ([gate; up], fused with SwiGLU) or separate. */
export type MlpWeights =
  | { kind: "stacked"; gateUp: Matrix; down: Matrix }
  | { kind: "split"; gate: Matrix; up: Matrix; down: Matrix };

/** Routed experts' matrices, in precision groups. */
export type ExpertWeights =
  | { kind: "stacked"; gateUp: ExpertSet[]; down: ExpertSet[] }
  | { kind: "split"; gate: ExpertSet[]; up: ExpertSet[]; down: ExpertSet[] };

/** q, k and v projections: one stacked [q; k; v] projection, or three. */
export type QkvWeights =
  | { kind: "stacked"; qkv: Matrix; bias?: GPUBuffer }
  | {
    kind: "split";
    q: Matrix;
    k: Matrix;
    v: Matrix;
    qBias?: GPUBuffer;
    kBias?: GPUBuffer;
    vBias?: GPUBuffer;
  };

/** An attention block's weights. */
export interface AttentionWeights {
  kind: "attention";
  norm: NormSpec;
  normWeight: GPUBuffer;
  /** LayerNorm's bias, when it has one. */
  normBias?: GPUBuffer;
  spec: GqaAttentionSpec;
  qkv: QkvWeights;
  qNorm?: GPUBuffer;
  kNorm?: GPUBuffer;
  o: Matrix;
  /** The output projection's bias × the layer's residual scale. */
  oBias?: GPUBuffer;
  /** [nh] sink logits (gpt-oss). */
  sinks?: GPUBuffer;
}

/** A MoE feed-forward block's weights. */
export interface MoeWeights {
  kind: "moe";
  norm: NormSpec;
  normWeight: GPUBuffer;
  /** LayerNorm's bias, when it has one. */
  normBias?: GPUBuffer;
  spec: MoeFfnSpec;
  router: Matrix;
  /** [E] router bias (gpt-oss). */
  routerBias?: GPUBuffer;
  /** [E] the router's selection-only bias (router_selection_bias), when it has one. */
  selectionBias?: GPUBuffer;
  experts: ExpertWeights;
  /** Routed experts' biases, each [E, rows of the matrix] (gpt-oss). */
  expertBiases?: Record<"gate" | "up" | "down", GPUBuffer>;
  shared?: MlpWeights;
  /** The shared expert's gate row [1, H] (when the shared expert is gated). */
  sharedGate?: Matrix;
}

/** A dense feed-forward block's weights. */
export interface DenseWeights {
  kind: "dense";
  norm: NormSpec;
  normWeight: GPUBuffer;
  /** LayerNorm's bias, when it has one. */
  normBias?: GPUBuffer;
  spec: DenseFfnSpec;
  mlp: MlpWeights;
}

/** One block's weights. */
export type BlockWeights = AttentionWeights | MlaWeights | MoeWeights | DenseWeights;

/** One layer: its blocks' weights in order. */
export interface LayerWeights {
  blocks: BlockWeights[];
  residualScale: number;
}

/** Every weight of a decoder-only model on the GPU. */
export interface ModelWeights {
  embed: Matrix;
  layers: LayerWeights[];
  finalNorm: GPUBuffer;
  finalNormBias?: GPUBuffer;
  /** The embedding when tied. */
  head: Matrix;
  headBias?: GPUBuffer;
  /** Bytes on the GPU. */
  bytes: number;
}

/** The storage format of a matrix record. */
export function formatOf(t: TensorRecord): WeightFormat {
  if (t.storage === "q") {
    const q = t.quant!;
    return { kind: "q", bits: q.bits, groupSize: q.groupSize, scaleType: q.scaleType };
  }
  return { kind: t.storage };
}

/** Bytes of the largest dense (non-expert) matrix, which the device's binding limit must hold. */
export function largestDenseMatrix(tensors: readonly TensorRecord[]): number {
  let largest = 0;
  for (const t of tensors) {
    if (t.shape.length !== 2 || t.expert >= 0) continue;
    largest = Math.max(largest, matrixBytes(formatOf(t), t.shape[0], t.shape[1]));
  }
  return largest;
}

/** Options of {@link uploadWeights}. */
export interface UploadOptions {
  /** Stack q/k/v and gate/up for the tiled kernels' fusions. */
  fuse: boolean;
  /**
   * Largest buffer the engine may bind, bytes (the device's binding and buffer limits, or less):
   * larger matrices are split into row blocks.
   */
  maxBinding: number;
}

/** Uploads every weight of `artifact` (decoder-only; see support.ts). */
export async function uploadWeights(
  device: GPUDevice,
  artifact: EngineArtifact,
  opts: UploadOptions,
): Promise<ModelWeights> {
  const loader = new WeightLoader(device, artifact, opts.maxBinding);
  const spec: ModelSpec = artifact.model;
  const H = spec.hiddenSize;
  const at = (layer: number, role: string): TensorKey => ({
    stack: "decoder",
    layer,
    expert: -1,
    role,
  });
  const embed = await loader.blocks(at(-1, "embed"), [spec.vocabSize, H]);
  const layers: LayerWeights[] = [];
  for (const [l, layer] of spec.decoder.layers.entries()) {
    const blocks: BlockWeights[] = [];
    for (const block of layer.blocks) {
      switch (block.kind) {
        case "attention":
          blocks.push(
            block.attention.kind === "mla"
              ? await loadMla(loader, l, block.norm, block.attention, H)
              : await loader.attention(l, block.norm, block.attention, opts, layer.residualScale),
          );
          break;
        case "ffn":
          blocks.push(
            block.ffn.kind === "moe"
              ? await loader.moe(l, block.norm, block.ffn, opts)
              : await loader.dense(l, block.norm, block.ffn, opts),
          );
          break;
        case "cross_attention":
          throw new Error("cross-attention passed support.ts");
      }
    }
    layers.push({ blocks, residualScale: layer.residualScale });
  }
  const finalNorm = await loader.vector(at(-1, "final_norm"), [H]);
  const finalNormBias = await loader.normBias(at(-1, "final_norm_bias"), spec.decoder.finalNorm);
  const head = spec.head.tied ? embed : await loader.blocks(at(-1, "lm_head"), [spec.vocabSize, H]);
  const headBias = spec.head.bias
    ? await loader.vector(at(-1, "lm_head_bias"), [spec.vocabSize])
    : undefined;
  return { embed, layers, finalNorm, finalNormBias, head, headBias, bytes: loader.bytes };
}

/** An artifact's tensor records by key: found, shape-checked and read to the host. */
export class ArtifactTensors {
  readonly #byKey = new Map<string, TensorRecord>();

  constructor(readonly artifact: EngineArtifact) {
    for (const t of artifact.tensors) this.#byKey.set(keyString(t), t);
  }

  /** The model the artifact holds. */
  get spec(): ModelSpec {
    return this.artifact.model;
  }

  /** The record at `key`, if there is one. */
  find(key: TensorKey): TensorRecord | undefined {
    return this.#byKey.get(keyString(key));
  }

  /** The record at `key`, checked against `shape`. */
  need(key: TensorKey, shape: number[]): TensorRecord {
    const t = this.find(key);
    const file = this.artifact.path;
    if (!t) throw new InputError(`missing tensor ${describeKey(key)}`, file);
    if (t.shape.length !== shape.length || t.shape.some((d, i) => d !== shape[i])) {
      throw new InputError(
        `tensor ${t.name} (${describeKey(key)}) has shape [${t.shape}], expected [${shape}]`,
        file,
      );
    }
    return t;
  }

  /** A float-stored tensor's values as float32. */
  async floats(t: TensorRecord): Promise<Float32Array> {
    if (t.storage === "q" || !t.data) {
      throw new InputError(`tensor ${t.name} must be stored as floats`, this.artifact.path);
    }
    return floatBytesToF32(await this.artifact.read(t.data, t.name), t.storage);
  }

  /** A matrix as read from the artifact: raw float bytes, or packed codes and scales. */
  async host(t: TensorRecord): Promise<HostMatrix> {
    if (t.storage === "q") return await this.artifact.readQuantized(t);
    if (!t.data) throw new InputError(`tensor ${t.name} has no data segment`, this.artifact.path);
    return { raw: await this.artifact.read(t.data, t.name) };
  }
}

/** Reads records by key and uploads them, counting the bytes. */
class WeightLoader extends ArtifactTensors {
  bytes = 0;
  readonly #device: GPUDevice;
  readonly #limit: number;

  constructor(device: GPUDevice, artifact: EngineArtifact, maxBinding: number) {
    super(artifact);
    this.#device = device;
    this.#limit = maxBinding;
  }

  async #upload(
    format: WeightFormat,
    rows: number,
    cols: number,
    mats: readonly StackedRows[],
    label: string,
  ): Promise<WeightSet> {
    const set = uploadWeightSet(this.#device, format, rows, cols, mats, label);
    this.bytes += set.bytes;
    await this.#releaseStaging(set.bytes);
    return set;
  }

  #unflushed = 0;

  /**
   * Bounds host memory while loading: a buffer created mapped is filled through staging memory
   * that wgpu frees only once a submission carrying its copy has completed, so without this the
   * whole model would sit in staging until the first forward (on CPU adapters, twice the
   * weights in RSS). Every STAGING_FLUSH_BYTES, submit and wait.
   */
  async #releaseStaging(bytes: number): Promise<void> {
    this.#unflushed += bytes;
    if (this.#unflushed < STAGING_FLUSH_BYTES) return;
    this.#unflushed = 0;
    this.#device.queue.submit([]);
    await this.#device.queue.onSubmittedWorkDone();
  }

  #rowBlock(row0: number, rows: number): GPUBuffer {
    this.bytes += 16;
    return rowBlockUniform(this.#device, row0, rows);
  }

  #buffer(data: Float32Array | Uint32Array, label: string): GPUBuffer {
    this.bytes += data.byteLength;
    return storageBuffer(this.#device, data.byteLength, label, data);
  }

  /**
   * One matrix as a single weight set (MLA's matrices, which the kernels read whole); a
   * {@link LimitError} when it exceeds the binding limit.
   */
  async matrix(key: TensorKey, shape: number[]): Promise<WeightSet> {
    const t = this.need(key, shape);
    const format = formatOf(t);
    if (!weightSetFits(format, shape[0], shape[1], 1, this.#limit)) {
      throw new LimitError(
        `tensor ${t.name} (${matrixBytes(format, shape[0], shape[1])} bytes) exceeds the ` +
          `${this.#limit}-byte binding limit and cannot be split`,
      );
    }
    return this.#upload(format, shape[0], shape[1], [await this.host(t)], t.name);
  }

  /** One matrix, in row blocks when it exceeds the binding limit. */
  async blocks(key: TensorKey, shape: number[]): Promise<Matrix> {
    const t = this.need(key, shape);
    return this.#split([t], [await this.host(t)], false);
  }

  /**
   * Matrices of one format and width as row blocks that each fit a binding: stacked row-wise
   * (`gateUp` false: [q; k; v], or one matrix), or as [gate; up] pairs of the same rows in each
   * block (`gateUp` true, two parts of equal rows).
   */
  async #split(ts: TensorRecord[], hosts: HostMatrix[], gateUp: boolean): Promise<Matrix> {
    const format = formatOf(ts[0]);
    const cols = ts[0].shape[1];
    const label = ts.map((t) => t.name).join("+");
    const rows = gateUp ? ts[0].shape[0] : ts.reduce((a, t) => a + t.shape[0], 0);
    const blocks: MatrixBlock[] = [];
    const ranges = rowBlocks(format, rows, cols, gateUp ? 2 : 1, this.#limit, label);
    // Row blocks of a row-wise stack cut across its parts: those are sliced from one copy.
    const whole = ranges.length > 1 && !gateUp && hosts.length > 1 ? stackRows(hosts) : null;
    for (const [r0, r1] of ranges) {
      const part: StackedRows = gateUp
        ? hosts.map((h) => sliceRows(h, format, cols, r0, r1))
        : r0 === 0 && r1 === rows
        ? hosts
        : sliceRows(whole ?? hosts[0], format, cols, r0, r1);
      const setRows = (r1 - r0) * (gateUp ? 2 : 1);
      const name = r0 === 0 && r1 === rows ? label : `${label}[${r0}:${r1}]`;
      const set = await this.#upload(format, setRows, cols, [part], name);
      const rowBlock = ranges.length > 1 ? this.#rowBlock(r0, r1 - r0) : undefined;
      blocks.push({ row0: r0, set, rowBlock });
    }
    return { format, rows, cols, blocks };
  }

  /** A vector (norm weight, bias) as f32, times `scale`. */
  async vector(key: TensorKey, shape: number[], scale = 1): Promise<GPUBuffer> {
    const t = this.need(key, shape);
    const v = await this.floats(t);
    if (scale !== 1) { for (let i = 0; i < v.length; i++) v[i] *= scale; }
    return this.#buffer(v, t.name);
  }

  /** A norm's bias vector at `key`, when the norm has one. */
  async normBias(key: TensorKey, norm: NormSpec): Promise<GPUBuffer | undefined> {
    return norm.bias ? await this.vector(key, [this.spec.hiddenSize]) : undefined;
  }

  /** Several vectors concatenated (the bias of a stacked projection). */
  async concatenated(parts: [TensorKey, number][]): Promise<GPUBuffer> {
    const all = new Float32Array(parts.reduce((a, [, n]) => a + n, 0));
    let at = 0;
    for (const [key, n] of parts) {
      all.set(await this.floats(this.need(key, [n])), at);
      at += n;
    }
    return this.#buffer(all, parts.map(([k]) => describeKey(k)).join("+"));
  }

  /** Whether these records share a storage format, so they can be stacked row-wise. */
  stackable(ts: TensorRecord[]): boolean {
    const name = formatName(formatOf(ts[0]));
    return ts.every((t) => formatName(formatOf(t)) === name);
  }

  /**
   * Same-format matrices stacked row-wise ([q; k; v]), or `gateUp`: [gate; up] paired per row
   * block; in row blocks when they exceed the binding limit.
   */
  async stacked(ts: TensorRecord[], gateUp = false): Promise<Matrix> {
    const hosts = [];
    for (const t of ts) hosts.push(await this.host(t));
    return this.#split(ts, hosts, gateUp);
  }

  async attention(
    layer: number,
    norm: NormSpec,
    a: GqaAttentionSpec,
    opts: UploadOptions,
    residualScale = 1,
  ): Promise<AttentionWeights> {
    const H = this.spec.hiddenSize;
    const key = (role: string): TensorKey => ({ stack: "decoder", layer, expert: -1, role });
    const qRows = a.numHeads * a.headDim, kvRows = a.numKvHeads * a.headDim;
    const q = this.need(key("attn_q"), [qRows, H]);
    const k = this.need(key("attn_k"), [kvRows, H]);
    const v = this.need(key("attn_v"), [kvRows, H]);
    let qkv: QkvWeights;
    if (opts.fuse && a.qkNorm === "none" && this.stackable([q, k, v])) {
      const bias = a.qkvBias
        ? await this.concatenated([
          [key("attn_q_bias"), qRows],
          [key("attn_k_bias"), kvRows],
          [key("attn_v_bias"), kvRows],
        ])
        : undefined;
      qkv = { kind: "stacked", qkv: await this.stacked([q, k, v]), bias };
    } else {
      qkv = {
        kind: "split",
        q: await this.blocks(key("attn_q"), [qRows, H]),
        k: await this.blocks(key("attn_k"), [kvRows, H]),
        v: await this.blocks(key("attn_v"), [kvRows, H]),
      };
      if (a.qkvBias) {
        qkv.qBias = await this.vector(key("attn_q_bias"), [qRows]);
        qkv.kBias = await this.vector(key("attn_k_bias"), [kvRows]);
        qkv.vBias = await this.vector(key("attn_v_bias"), [kvRows]);
      }
    }
    const qNormWidth = a.qkNorm === "head" ? a.headDim : qRows;
    const kNormWidth = a.qkNorm === "head" ? a.headDim : kvRows;
    return {
      kind: "attention",
      norm,
      normWeight: await this.vector(key("attn_norm"), [H]),
      normBias: await this.normBias(key("attn_norm_bias"), norm),
      spec: a,
      qkv,
      qNorm: a.qkNorm !== "none" ? await this.vector(key("attn_q_norm"), [qNormWidth]) : undefined,
      kNorm: a.qkNorm !== "none" ? await this.vector(key("attn_k_norm"), [kNormWidth]) : undefined,
      o: await this.blocks(key("attn_o"), [H, qRows]),
      oBias: a.outBias ? await this.vector(key("attn_o_bias"), [H], residualScale) : undefined,
      sinks: a.sinks ? await this.vector(key("attn_sinks"), [a.numHeads]) : undefined,
    };
  }

  async dense(
    layer: number,
    norm: NormSpec,
    f: DenseFfnSpec,
    opts: UploadOptions,
  ): Promise<DenseWeights> {
    const key: TensorKey = { stack: "decoder", layer, expert: -1, role: "ffn_norm" };
    const normWeight = await this.vector(key, [this.spec.hiddenSize]);
    return {
      kind: "dense",
      norm,
      normWeight,
      normBias: await this.normBias({ ...key, role: "ffn_norm_bias" }, norm),
      spec: f,
      mlp: await this.mlp(layer, "dense", f.mlp, opts),
    };
  }

  /** A dense MLP or shared expert (`owner` "dense" or "shared"). */
  async mlp(
    layer: number,
    owner: "dense" | "shared",
    m: MlpSpec,
    opts: UploadOptions,
  ): Promise<MlpWeights> {
    const H = this.spec.hiddenSize, I = m.intermediate;
    const key = (name: string): TensorKey => ({
      stack: "decoder",
      layer,
      expert: -1,
      role: `${owner}_${name}`,
    });
    const gate = this.need(key("gate"), [I, H]);
    const up = this.need(key("up"), [I, H]);
    const down = await this.blocks(key("down"), matrixShape("down", I, H));
    if (opts.fuse && this.stackable([gate, up])) {
      return { kind: "stacked", gateUp: await this.stacked([gate, up], true), down };
    }
    return {
      kind: "split",
      gate: await this.blocks(key("gate"), [I, H]),
      up: await this.blocks(key("up"), [I, H]),
      down,
    };
  }

  async moe(
    layer: number,
    norm: NormSpec,
    f: MoeFfnSpec,
    opts: UploadOptions,
  ): Promise<MoeWeights> {
    const H = this.spec.hiddenSize, I = f.expert.intermediate, E = f.numExperts;
    const key = (role: string, expert = -1): TensorKey => ({
      stack: "decoder",
      layer,
      expert,
      role,
    });
    const matrices = (name: "gate" | "up" | "down") =>
      Array.from(
        { length: E },
        (_, e) => this.need(key(`expert_${name}`, e), matrixShape(name, I, H)),
      );
    const gate = matrices("gate"), up = matrices("up"), down = matrices("down");
    const fuse = opts.fuse && f.expert.activation.kind === "swiglu" && !f.expert.bias &&
      gate.every((g, e) => formatName(formatOf(g)) === formatName(formatOf(up[e])));
    const experts: ExpertWeights = fuse
      ? {
        kind: "stacked",
        gateUp: await this.expertSets(gate.map((g, e) => [g, up[e]]), layer),
        down: await this.expertSets(down.map((d) => [d]), layer),
      }
      : {
        kind: "split",
        gate: await this.expertSets(gate.map((g) => [g]), layer),
        up: await this.expertSets(up.map((u) => [u]), layer),
        down: await this.expertSets(down.map((d) => [d]), layer),
      };
    return {
      kind: "moe",
      norm,
      normWeight: await this.vector(key("ffn_norm"), [H]),
      normBias: await this.normBias(key("ffn_norm_bias"), norm),
      spec: f,
      router: await this.blocks(key("router"), [E, H]),
      routerBias: f.router.kind === "topk" && f.router.bias
        ? await this.vector(key("router_bias"), [E])
        : undefined,
      selectionBias: f.router.kind === "topk" && f.router.selectionBias
        ? await this.vector(key("router_selection_bias"), [E])
        : undefined,
      experts,
      expertBiases: f.expert.bias ? await this.expertBiases(layer, f) : undefined,
      shared: f.shared ? await this.mlp(layer, "shared", f.shared.mlp, opts) : undefined,
      sharedGate: f.shared?.gated
        ? await this.blocks(key("shared_expert_gate"), [1, H])
        : undefined,
    };
  }

  /** The routed experts' biases, each role's E vectors concatenated into one [E, n] buffer. */
  async expertBiases(
    layer: number,
    f: MoeFfnSpec,
  ): Promise<Record<"gate" | "up" | "down", GPUBuffer>> {
    const I = f.expert.intermediate, H = this.spec.hiddenSize;
    const all = (name: string, n: number) =>
      this.concatenated(
        Array.from({ length: f.numExperts }, (_, e): [TensorKey, number] => [
          { stack: "decoder", layer, expert: e, role: `expert_${name}_bias` },
          n,
        ]),
      );
    return { gate: await all("gate", I), up: await all("up", I), down: await all("down", H) };
  }

  /**
   * Uploads routed experts' matrices (per expert one record, or [gate, up] stacked per row block)
   * grouped by storage format, each group split into sets of as many experts as fit a binding
   * (at most EXPERT_SET_BYTES); an expert matrix larger than a binding is split into row blocks,
   * each block's rows of every expert of the group forming sets of their own.
   */
  async expertSets(perExpert: TensorRecord[][], layer: number): Promise<ExpertSet[]> {
    const groups = new Map<string, TensorRecord[][]>();
    for (const ts of perExpert) {
      const name = formatName(formatOf(ts[0]));
      if (!groups.has(name)) groups.set(name, []);
      groups.get(name)!.push(ts);
    }
    const gateUp = perExpert[0].length === 2;
    const [rows, cols] = perExpert[0][0].shape;
    const label = `${perExpert[0].map((t) => t.role).join("+")}.${layer}`;
    const limit = Math.min(this.#limit, EXPERT_SET_BYTES);
    const out: ExpertSet[] = [];
    for (const members of groups.values()) {
      const format = formatOf(members[0][0]);
      const what = `${members[0].map((t) => t.name).join("+")} (expert matrices of ${label})`;
      const ranges = rowBlocks(format, rows, cols, gateUp ? 2 : 1, limit, what);
      for (const [r0, r1] of ranges) {
        const rowBlock = ranges.length > 1 ? this.#rowBlock(r0, r1 - r0) : undefined;
        const setRows = (r1 - r0) * (gateUp ? 2 : 1);
        let perSet = Math.max(1, Math.floor(limit / matrixBytes(format, setRows, cols)));
        while (perSet > 1 && !weightSetFits(format, setRows, cols, perSet, limit)) perSet--;
        for (let i = 0; i < members.length; i += perSet) {
          const part = members.slice(i, i + perSet);
          const mats: StackedRows[] = [];
          for (const ts of part) {
            const hosts = [];
            for (const t of ts) hosts.push(sliceRows(await this.host(t), format, cols, r0, r1));
            mats.push(hosts);
          }
          const name = r1 - r0 === rows ? label : `${label}[${r0}:${r1}]`;
          const set = await this.#upload(format, setRows, cols, mats, name);
          const ids = new Uint32Array(part.map((ts) => ts[0].expert));
          const experts = this.#buffer(ids, `${name}.experts`);
          out.push({ set, experts, row0: r0, outRows: rows, rowBlock });
        }
      }
    }
    return out;
  }
}

/**
 * Row blocks [r0, r1) of a matrix of `rows` rows (each block `factor` × as many set rows: 2 for
 * [gate; up] pairs) that each fit a binding of `limit` bytes: as few as possible, of equal size
 * (a multiple of 8 rows when that costs no extra block). Throws a {@link LimitError} naming `what`
 * when not even one row fits.
 */
export function rowBlocks(
  format: WeightFormat,
  rows: number,
  cols: number,
  factor: number,
  limit: number,
  what: string,
): [number, number][] {
  const fit = Math.floor(rowsPerBinding(format, cols, limit) / factor);
  if (fit < 1) {
    throw new LimitError(
      `tensor ${what}: one row (${factor * matrixBytes(format, 1, cols)} bytes) exceeds the ` +
        `${limit}-byte binding limit`,
    );
  }
  if (fit >= rows) return [[0, rows]];
  const count = Math.ceil(rows / fit);
  let per = Math.ceil(rows / count);
  if (Math.ceil(per / 8) * 8 <= fit) per = Math.ceil(per / 8) * 8;
  const out: [number, number][] = [];
  for (let r0 = 0; r0 < rows; r0 += per) out.push([r0, Math.min(rows, r0 + per)]);
  return out;
}

/** Matrices of one format stacked row-wise ([gate; up] or [q; k; v]). */
export function stackRows(parts: HostMatrix[]): HostMatrix {
  if (parts.every((p) => "raw" in p)) {
    return { raw: concat(parts.map((p) => (p as { raw: Uint8Array }).raw)) };
  }
  const qs = parts as QuantizedTensor[];
  return {
    ...qs[0],
    rows: qs.reduce((a, q) => a + q.rows, 0),
    codes: concat(qs.map((q) => q.codes)),
    scales: concat(qs.map((q) => q.scales) as Uint16Array[]),
    zeros: concat(qs.map((q) => q.zeros) as Uint16Array[]),
  };
}

function concat<A extends Uint8Array | Uint16Array | Uint32Array | Float32Array>(arrays: A[]): A {
  const Ctor = arrays[0].constructor as { new (n: number): A };
  const out = new Ctor(arrays.reduce((a, r) => a + r.length, 0));
  let at = 0;
  for (const r of arrays) {
    out.set(r as never, at);
    at += r.length;
  }
  return out;
}
