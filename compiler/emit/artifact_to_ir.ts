/**
 * Artifact → ModelIR: the header's model description and, for every tensor record, a lazy
 * reference that reads (and dequantizes) it from the opened artifact, so everything that consumes
 * ModelIR (the CPU reference forward, the passes) runs on compiled models too. The reader has
 * already checked that the records are exactly the tensors the description implies.
 *
 * @module
 */

import type { ModelIR, PlacedTensor, TensorRef } from "../ir.ts";
import type { Artifact, TensorRecord } from "../../schemas/artifact.ts";
import { expectedTensors } from "../../schemas/tensors.ts";

/** The TensorRef dtype string of a record ("F32", "F16", "BF16", "Q4", "MXFP4", ...). */
function dtypeOf(t: TensorRecord): string {
  if (t.quant?.scaleType === "e8m0") return "MXFP4";
  return t.quant ? `Q${t.quant.bits}` : t.storage.toUpperCase();
}

function refOf(a: Artifact, t: TensorRecord): TensorRef {
  return { name: t.name, shape: t.shape, dtype: dtypeOf(t), read: () => a.readF32(t) };
}

/**
 * Builds a ModelIR whose tensors read from `artifact`, in `expectedTensors` order. Reads the
 * tokenizer bytes, nothing else.
 */
export async function artifactToIR(artifact: Artifact): Promise<ModelIR> {
  const tensors: PlacedTensor[] = expectedTensors(artifact.model).map((e) => {
    const t = artifact.tensorAt(e)!; // present: openArtifact checked the records against the spec
    return {
      stack: t.stack,
      layer: t.layer,
      expert: t.expert,
      role: t.role,
      ref: refOf(artifact, t),
    };
  });
  return {
    spec: artifact.model,
    tensors,
    tokenizer: {
      tokenizerJson: await artifact.readTokenizerJson(),
      chatTemplate: artifact.tokenizer.chatTemplate,
    },
    source: artifact.path,
  };
}
