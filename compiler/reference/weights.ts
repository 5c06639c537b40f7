/**
 * Reads an IR's tensors by key into float64, checking each against the shape the description
 * implies (schemas/tensors.ts), so a hand-built or artifact IR that does not match its
 * description fails with an InputError naming the tensor.
 *
 * @module
 */

import { InputError } from "../../schemas/errors.ts";
import type { StackName } from "../../schemas/model.ts";
import { describeKey, expectedTensors, keyString, type TensorKey } from "../../schemas/tensors.ts";
import type { ModelIR, TensorRef } from "../ir.ts";

/** The float64 weights of one stack layer (layer −1: the model- and stack-level tensors). */
export interface LayerWeights {
  /** The tensor with `role` (of routed expert `expert`), read and widened to float64. */
  read(role: string, expert?: number): Promise<Float64Array>;
  /** The same tensor as read, in float32 (no float64 copy; may be the IR's own storage: read only). */
  readF32?(role: string, expert?: number): Promise<Float32Array>;
}

/** Reads an IR's tensors by key, checking shapes against the description. */
export class WeightReader {
  readonly #refs = new Map<string, TensorRef>();
  readonly #shapes = new Map<string, number[]>();

  constructor(readonly ir: ModelIR) {
    for (const t of ir.tensors) this.#refs.set(keyString(t), t.ref);
    for (const t of expectedTensors(ir.spec)) this.#shapes.set(keyString(t), t.shape);
  }

  /** The weights of one layer of one stack. */
  layer(stack: StackName, layer: number): LayerWeights {
    return {
      read: (role, expert = -1) => this.read({ stack, layer, expert, role }),
      readF32: (role, expert = -1) => this.readF32({ stack, layer, expert, role }),
    };
  }

  /** One tensor in float64; InputError when it is absent, unexpected or misshapen. */
  async read(key: TensorKey): Promise<Float64Array> {
    return new Float64Array(await this.readF32(key));
  }

  /** One tensor as read (float32), checked as {@link read} checks it. */
  async readF32(key: TensorKey): Promise<Float32Array> {
    const id = keyString(key);
    const ref = this.#refs.get(id);
    const shape = this.#shapes.get(id);
    const source = this.ir.source;
    if (!ref) throw new InputError(`missing tensor ${describeKey(key)}`, source);
    if (!shape) {
      throw new InputError(`tensor ${ref.name} is not part of the description`, source);
    }
    const same = ref.shape.length === shape.length && ref.shape.every((d, i) => d === shape[i]);
    if (!same) {
      throw new InputError(
        `tensor ${ref.name} has shape [${ref.shape}], the description implies [${shape}]`,
        source,
      );
    }
    const values = await ref.read();
    const size = shape.reduce((a, b) => a * b, 1);
    if (values.length !== size) {
      throw new InputError(
        `tensor ${ref.name} read ${values.length} values, expected ${size}`,
        source,
      );
    }
    return values;
  }
}
