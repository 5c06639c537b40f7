/**
 * The compiler's intermediate representation: a model description (schemas/model.ts) plus every
 * tensor it implies (schemas/tensors.ts), each a lazy reference into the checkpoint (or artifact).
 * Nothing is read until a pass asks for it, so the IR of a 100 GB model costs kilobytes.
 *
 * @module
 */

import {
  type ActivationSpec,
  type MatrixName,
  mlpMatrices,
  type ModelSpec,
  type MoeFfnSpec,
  type StackName,
} from "../schemas/model.ts";
import { keyString, type TensorKey } from "../schemas/tensors.ts";
import type { QuantizedTensor } from "../schemas/packing.ts";

export type { ModelSpec, StackName, TensorKey };

/**
 * Raw little-endian bytes of a run of a tensor's elements as stored at the source, with what
 * decoding them needs (`compiler/checkpoint/raw.ts` `decodeRaw`): a block can be read on one
 * thread and decoded and checked on another.
 */
export interface RawElements {
  /** The bytes, in a buffer of their own (offset 0, transferable). */
  bytes: Uint8Array;
  /** Source dtype: "F32" | "F16" | "BF16" | "F64". */
  dtype: string;
  /** Checkpoint tensor name, for messages. */
  name: string;
  /** File holding it, for messages. */
  file: string;
  /** Flat index of the first element in the tensor. */
  start: number;
  /** Read NaN/±Inf as 0 instead of failing (the checkpoint's read option). */
  allowNonFinite: boolean;
}

/**
 * Where raw rows lie in a checkpoint file (see {@link TensorRef.locateRawRows}): a thread with
 * read access reads `length` bytes at `offset` of `path` itself; they are then what
 * `readRawRows` returns, as {@link RawElements} with the same fields.
 */
export interface RawLocation {
  /** The file (RawElements.file). */
  path: string;
  /** Absolute byte offset of the first element. */
  offset: number;
  /** Bytes. */
  length: number;
  dtype: string;
  name: string;
  start: number;
  allowNonFinite: boolean;
}

/** A lazy 2-D (or 1-D) tensor: `read()` returns its values row-major as f32 (dequantized if needed). */
export interface TensorRef {
  /** Where it comes from, for messages (checkpoint tensor name, with a slice when packed). */
  readonly name: string;
  /** [rows, cols] for matrices (out × in, like torch Linear), [n] for vectors. */
  readonly shape: readonly number[];
  /** Storage type at the source: "F32" | "F16" | "BF16" | "Q2" | "Q3" | "Q4" | "Q8". */
  readonly dtype: string;
  /** Reads the values; each call reads again (callers cache what they need). */
  read(): Promise<Float32Array>;
  /** Reads rows [start, start + count) of a matrix (row-major f32), when the source can. */
  readRows?(start: number, count: number): Promise<Float32Array>;
  /** The same rows as raw source bytes, to be decoded elsewhere (checkpoint refs only). */
  readRawRows?(start: number, count: number): Promise<RawElements>;
  /** Where the bytes `readRawRows` would read lie, without reading them (checkpoint refs only). */
  locateRawRows?(start: number, count: number): RawLocation;
  /**
   * The matrix as released in MXFP4 (codes and e8m0 scales verbatim, schemas/packing.ts), when
   * the checkpoint stores it so: an MXFP4 encoding then writes these bytes, with no error.
   */
  readMxfp4?(): Promise<QuantizedTensor>;
}

/** A tensor with its place in the model. */
export interface PlacedTensor extends TensorKey {
  ref: TensorRef;
}

/** Tokenizer material carried through to the artifact. */
export interface TokenizerData {
  /** tokenizer.json bytes, or null for byte-level models (token = byte). */
  tokenizerJson: Uint8Array | null;
  /** tokenizer_config.json `chat_template`, if any. */
  chatTemplate: string | null;
}

/** A whole model: its description and its tensors. */
export interface ModelIR {
  spec: ModelSpec;
  /** Every tensor `expectedTensors(spec)` lists, in that order, each once. */
  tensors: PlacedTensor[];
  tokenizer: TokenizerData;
  /** The directory or file it was read from. */
  source: string;
}

/** One matrix of an MLP, with its bias when the MLP has biases. */
export interface NamedMatrix {
  name: MatrixName;
  weight: TensorRef;
  bias?: TensorRef;
}

/** A routed expert: a list of named matrices (input side first) and its activation. */
export interface ExpertIR {
  stack: StackName;
  layer: number;
  index: number;
  activation: ActivationSpec;
  matrices: NamedMatrix[];
}

/** A MoE block of one layer: its description, router rows [E, H] and experts. */
export interface MoeLayerIR {
  stack: StackName;
  layer: number;
  spec: MoeFfnSpec;
  router: TensorRef;
  experts: ExpertIR[];
}

/** Looks tensors up by key; `need` throws a plain Error (an IR is complete by construction). */
export class TensorIndex {
  readonly #byKey = new Map<string, TensorRef>();

  constructor(tensors: readonly PlacedTensor[]) {
    for (const t of tensors) this.#byKey.set(keyString(t), t.ref);
  }

  /** The tensor at `key`, if the model has it. */
  find(key: TensorKey): TensorRef | undefined {
    return this.#byKey.get(keyString(key));
  }

  /** The tensor at `key`. */
  need(key: TensorKey): TensorRef {
    const ref = this.find(key);
    if (!ref) throw new Error(`IR has no tensor ${keyString(key)}`);
    return ref;
  }
}

/**
 * Every MoE block of the model in stack order (encoder first), with its router and experts.
 * The allocator's "MoE layer index" is the position in this list.
 */
export function moeLayers(ir: ModelIR): MoeLayerIR[] {
  const index = new TensorIndex(ir.tensors);
  const out: MoeLayerIR[] = [];
  const stacks: [StackName, ModelSpec["decoder"] | null][] = [
    ["encoder", ir.spec.encoder],
    ["decoder", ir.spec.decoder],
  ];
  for (const [stack, s] of stacks) {
    s?.layers.forEach((layer, l) => {
      for (const block of layer.blocks) {
        if (block.kind !== "ffn" || block.ffn.kind !== "moe") continue;
        const spec = block.ffn;
        const key = (role: string, expert = -1): TensorKey => ({ stack, layer: l, expert, role });
        const experts: ExpertIR[] = [];
        for (let e = 0; e < spec.numExperts; e++) {
          experts.push({
            stack,
            layer: l,
            index: e,
            activation: spec.expert.activation,
            matrices: mlpMatrices(spec.expert.activation).map((name) => ({
              name,
              weight: index.need(key(`expert_${name}`, e)),
              bias: spec.expert.bias ? index.need(key(`expert_${name}_bias`, e)) : undefined,
            })),
          });
        }
        out.push({ stack, layer: l, spec, router: index.need(key("router")), experts });
      }
    });
  }
  return out;
}
