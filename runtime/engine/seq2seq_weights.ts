/**
 * Weight upload for encoder–decoder models (runtime/engine/seq2seq.ts): both stacks' blocks —
 * self-attention (with the owner layer's T5 relative-bias table kept on the host for expansion),
 * cross-attention, dense ReLU MLPs and capacity-routed MoE blocks of ReLU experts — read by
 * (stack, layer, expert, role) key as the decoder-only loader (engine/weights.ts) does, in the
 * same GPU formats (kernels/weights.ts): matrices stay in their storage format, vectors become
 * f32, routed experts are grouped per storage format and split under EXPERT_SET_BYTES. For the
 * tiled kernel style (`fuse`), a self-attention block's q, k and v are also stacked into one
 * [q; k; v] projection when they share a storage format.
 *
 * @module
 */

import type { TensorRecord } from "../../schemas/artifact.ts";
import type {
  DenseFfnSpec,
  GqaAttentionSpec,
  MoeFfnSpec,
  NormSpec,
  RelativeBiasSpec,
  StackName,
  StackSpec,
} from "../../schemas/model.ts";
import { describeKey, matrixShape, type TensorKey } from "../../schemas/tensors.ts";
import { storageBuffer } from "../kernels/kernel.ts";
import {
  formatName,
  type HostMatrix,
  matrixBytes,
  uploadWeightSet,
  type WeightSet,
} from "../kernels/weights.ts";
import {
  ArtifactTensors,
  type EngineArtifact,
  EXPERT_SET_BYTES,
  type ExpertSet,
  formatOf,
} from "./weights.ts";

/** A relative bias: its description and the owner layer's table [buckets, numHeads]. */
export interface HostRelativeBias {
  spec: RelativeBiasSpec;
  /** `${stack}/${ownerLayer}`: blocks sharing a table share this key. */
  key: string;
  table: Float32Array;
}

/** A self- or cross-attention block's weights. */
export interface Seq2SeqAttentionWeights {
  kind: "attention" | "cross_attention";
  norm: NormSpec;
  normWeight: GPUBuffer;
  spec: GqaAttentionSpec;
  q: WeightSet;
  k: WeightSet;
  v: WeightSet;
  o: WeightSet;
  /** q, k and v stacked row-wise (self-attention, `fuse`, one storage format), else absent. */
  qkv?: WeightSet;
  relativeBias: HostRelativeBias | null;
}

/** A dense ReLU MLP block: down(relu(up · x)). */
export interface Seq2SeqDenseWeights {
  kind: "dense";
  norm: NormSpec;
  normWeight: GPUBuffer;
  spec: DenseFfnSpec;
  up: WeightSet;
  down: WeightSet;
}

/** A capacity-routed MoE block of ReLU experts. */
export interface Seq2SeqMoeWeights {
  kind: "moe";
  norm: NormSpec;
  normWeight: GPUBuffer;
  spec: MoeFfnSpec;
  /** Tokens an expert accepts per forward call. */
  capacity: number;
  router: WeightSet;
  up: ExpertSet[];
  down: ExpertSet[];
}

/** One block's weights. */
export type Seq2SeqBlockWeights = Seq2SeqAttentionWeights | Seq2SeqDenseWeights | Seq2SeqMoeWeights;

/** One stack's weights. */
export interface Seq2SeqStackWeights {
  layers: { blocks: Seq2SeqBlockWeights[]; residualScale: number }[];
  finalNorm: GPUBuffer;
}

/** Every weight of an encoder–decoder model on the GPU. */
export interface Seq2SeqWeights {
  embed: WeightSet;
  head: WeightSet;
  encoder: Seq2SeqStackWeights;
  decoder: Seq2SeqStackWeights;
  bytes: number;
}

/** Uploads every weight of an encoder–decoder artifact (checked by support.ts). */
export async function uploadSeq2SeqWeights(
  device: GPUDevice,
  artifact: EngineArtifact,
  opts: { fuse: boolean },
): Promise<Seq2SeqWeights> {
  const loader = new Loader(device, artifact, opts.fuse);
  const spec = artifact.model;
  const H = spec.hiddenSize, V = spec.vocabSize;
  const top = (role: string): TensorKey => ({ stack: "decoder", layer: -1, expert: -1, role });
  const embed = await loader.matrix(top("embed"), [V, H]);
  const head = spec.head.tied ? embed : await loader.matrix(top("lm_head"), [V, H]);
  const encoder = await loader.stack("encoder", spec.encoder!);
  const decoder = await loader.stack("decoder", spec.decoder);
  return { embed, head, encoder, decoder, bytes: loader.bytes };
}

class Loader extends ArtifactTensors {
  bytes = 0;
  readonly #biases = new Map<string, Float32Array>();

  constructor(
    readonly device: GPUDevice,
    artifact: EngineArtifact,
    readonly fuse: boolean,
  ) {
    super(artifact);
  }

  async matrix(key: TensorKey, shape: number[]): Promise<WeightSet> {
    const t = this.need(key, shape);
    const set = uploadWeightSet(this.device, formatOf(t), shape[0], shape[1], [
      await this.host(t),
    ], t.name);
    this.bytes += set.bytes;
    return set;
  }

  buffer(data: Float32Array | Uint32Array, label: string): GPUBuffer {
    this.bytes += data.byteLength;
    return storageBuffer(this.device, data.byteLength, label, data);
  }

  async vector(key: TensorKey, n: number): Promise<GPUBuffer> {
    return this.buffer(await this.floats(this.need(key, [n])), describeKey(key));
  }

  async stack(stack: StackName, s: StackSpec): Promise<Seq2SeqStackWeights> {
    const H = this.spec.hiddenSize;
    const layers: Seq2SeqStackWeights["layers"] = [];
    for (const [l, layer] of s.layers.entries()) {
      const at = (role: string, expert = -1): TensorKey => ({ stack, layer: l, expert, role });
      const blocks: Seq2SeqBlockWeights[] = [];
      for (const block of layer.blocks) {
        if (block.kind === "attention" || block.kind === "cross_attention") {
          const a = block.attention;
          if (a.kind !== "gqa") throw new Error("MLA passed support.ts");
          const p = block.kind === "cross_attention" ? "cross" : "attn";
          const qRows = a.numHeads * a.headDim, kvRows = a.numKvHeads * a.headDim;
          blocks.push({
            kind: block.kind,
            norm: block.norm,
            normWeight: await this.vector(at(`${p}_norm`), H),
            spec: a,
            q: await this.matrix(at(`${p}_q`), [qRows, H]),
            k: await this.matrix(at(`${p}_k`), [kvRows, H]),
            v: await this.matrix(at(`${p}_v`), [kvRows, H]),
            o: await this.matrix(at(`${p}_o`), [H, qRows]),
            qkv: block.kind === "attention" && this.fuse
              ? await this.stacked([`${p}_q`, `${p}_k`, `${p}_v`].map((r) => at(r)))
              : undefined,
            relativeBias: await this.relativeBias(stack, p, a),
          });
          continue;
        }
        const f = block.ffn;
        const normWeight = await this.vector(at("ffn_norm"), H);
        if (f.kind === "dense") {
          const I = f.mlp.intermediate;
          blocks.push({
            kind: "dense",
            norm: block.norm,
            normWeight,
            spec: f,
            up: await this.matrix(at("dense_up"), matrixShape("up", I, H)),
            down: await this.matrix(at("dense_down"), matrixShape("down", I, H)),
          });
          continue;
        }
        if (f.router.kind !== "capacity") throw new Error("non-capacity router passed support.ts");
        const I = f.expert.intermediate, E = f.numExperts;
        const experts = (name: "up" | "down") =>
          this.expertSets(
            Array.from({ length: E }, (_, e) =>
              this.need(at(`expert_${name}`, e), matrixShape(name, I, H))),
            `${stack}.${l}.expert_${name}`,
          );
        blocks.push({
          kind: "moe",
          norm: block.norm,
          normWeight,
          spec: f,
          capacity: f.router.capacity,
          router: await this.matrix(at("router"), [E, H]),
          up: await experts("up"),
          down: await experts("down"),
        });
      }
      layers.push({ blocks, residualScale: layer.residualScale });
    }
    const finalNorm = await this.vector({ stack, layer: -1, expert: -1, role: "final_norm" }, H);
    return { layers, finalNorm };
  }

  /** The owner layer's bias table of a relative-bias attention block (read once per owner). */
  async relativeBias(
    stack: StackName,
    prefix: string,
    a: GqaAttentionSpec,
  ): Promise<HostRelativeBias | null> {
    const p = a.position;
    if (p.kind !== "relative_bias") return null;
    const key = `${stack}/${p.ownerLayer}`;
    let table = this.#biases.get(key);
    if (!table) {
      const bias = { stack, layer: p.ownerLayer, expert: -1, role: `${prefix}_relative_bias` };
      table = await this.floats(this.need(bias, [p.buckets, a.numHeads]));
      this.#biases.set(key, table);
    }
    return { spec: p, key, table };
  }

  /** Matrices stacked row-wise as one set, when they share a format and fit a binding. */
  async stacked(keys: TensorKey[]): Promise<WeightSet | undefined> {
    const ts = keys.map((k) => this.find(k)!);
    const format = formatOf(ts[0]);
    if (ts.some((t) => formatName(formatOf(t)) !== formatName(format))) return undefined;
    const rows = ts.reduce((a, t) => a + t.shape[0], 0), cols = ts[0].shape[1];
    const limit = this.device.limits.maxStorageBufferBindingSize;
    if (matrixBytes(format, rows, cols) > limit) return undefined;
    const hosts: HostMatrix[] = [];
    for (const t of ts) hosts.push(await this.host(t));
    const label = ts.map((t) => t.name).join("+");
    const set = uploadWeightSet(this.device, format, rows, cols, [hosts], label);
    this.bytes += set.bytes;
    return set;
  }

  /** One matrix per expert, grouped by storage format, split under EXPERT_SET_BYTES. */
  async expertSets(records: TensorRecord[], label: string): Promise<ExpertSet[]> {
    const groups = new Map<string, TensorRecord[]>();
    for (const t of records) {
      const name = formatName(formatOf(t));
      if (!groups.has(name)) groups.set(name, []);
      groups.get(name)!.push(t);
    }
    const [rows, cols] = records[0].shape;
    const out: ExpertSet[] = [];
    for (const members of groups.values()) {
      const format = formatOf(members[0]);
      const perSet = Math.max(1, Math.floor(EXPERT_SET_BYTES / matrixBytes(format, rows, cols)));
      for (let i = 0; i < members.length; i += perSet) {
        const part = members.slice(i, i + perSet);
        const mats: HostMatrix[] = [];
        for (const t of part) mats.push(await this.host(t));
        const set = uploadWeightSet(this.device, format, rows, cols, mats, label);
        this.bytes += set.bytes;
        const ids = new Uint32Array(part.map((t) => t.expert));
        out.push({ set, experts: this.buffer(ids, `${label}.experts`), row0: 0, outRows: rows });
      }
    }
    return out;
  }
}
