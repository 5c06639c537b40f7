/**
 * Artifact → ModelIR: lazy tensor references backed by an opened artifact, so everything that
 * consumes ModelIR (the CPU reference forward, the passes) runs on compiled models too.
 *
 * @module
 */

import type {
  AttentionIR,
  ExpertIR,
  LayerIR,
  MlpIR,
  ModelIR,
  TensorRef,
  TensorRole,
} from "../ir_legacy.ts";
import type { Artifact, TensorRecord } from "../../schemas/artifact.ts";
import { InputError } from "../../schemas/errors.ts";

/** The TensorRef dtype string of a record ("F32", "F16", "BF16", "Q4", ...). */
function dtypeOf(t: TensorRecord): string {
  return t.quant ? `Q${t.quant.bits}` : t.storage.toUpperCase();
}

function refOf(a: Artifact, t: TensorRecord): TensorRef {
  return { name: t.name, shape: t.shape, dtype: dtypeOf(t), read: () => a.readF32(t) };
}

/**
 * Builds a ModelIR whose TensorRefs read (and dequantize) from `artifact`. Reads the tokenizer
 * bytes, nothing else. Missing or duplicated tensors are InputErrors naming the role and layer.
 */
export async function artifactToIR(artifact: Artifact): Promise<ModelIR> {
  const cfg = artifact.config;
  const byKey = new Map<string, TensorRecord>();
  for (const t of artifact.tensors) {
    const key = `${t.role}/${t.layer}/${t.expert}`;
    if (byKey.has(key)) {
      throw new InputError(
        `two tensors with role ${t.role}, layer ${t.layer}, expert ${t.expert}`,
        artifact.path,
      );
    }
    byKey.set(key, t);
  }
  const find = (role: TensorRole, layer = -1, expert = -1): TensorRef | undefined => {
    const t = byKey.get(`${role}/${layer}/${expert}`);
    return t && refOf(artifact, t);
  };
  const need = (role: TensorRole, layer = -1, expert = -1): TensorRef =>
    find(role, layer, expert) ??
      (() => {
        const where = layer < 0
          ? ""
          : ` in layer ${layer}` + (expert < 0 ? "" : ` expert ${expert}`);
        throw new InputError(`artifact has no ${role} tensor${where}`, artifact.path);
      })();
  const mlp = (prefix: "expert" | "shared" | "dense", layer: number, expert = -1): MlpIR => ({
    gate: need(`${prefix}_gate`, layer, expert),
    up: need(`${prefix}_up`, layer, expert),
    down: need(`${prefix}_down`, layer, expert),
  });

  const layers: LayerIR[] = [];
  for (let l = 0; l < cfg.numLayers; l++) {
    const attention: AttentionIR = {
      q: need("attn_q", l),
      k: need("attn_k", l),
      v: need("attn_v", l),
      o: need("attn_o", l),
      qBias: find("attn_q_bias", l),
      kBias: find("attn_k_bias", l),
      vBias: find("attn_v_bias", l),
      qNorm: find("attn_q_norm", l),
      kNorm: find("attn_k_norm", l),
    };
    let ffn: LayerIR["ffn"];
    if (cfg.layerKinds[l] === "moe") {
      const experts: ExpertIR[] = [];
      for (let e = 0; e < cfg.routing.numExperts; e++) {
        experts.push({ layer: l, index: e, ...mlp("expert", l, e) });
      }
      const hasShared = find("shared_gate", l) !== undefined;
      ffn = {
        kind: "moe",
        router: need("router", l),
        experts,
        shared: hasShared ? mlp("shared", l) : undefined,
        sharedGate: find("shared_expert_gate", l),
      };
    } else {
      ffn = { kind: "dense", mlp: mlp("dense", l) };
    }
    layers.push({
      index: l,
      inputNorm: need("input_norm", l),
      attention,
      postAttentionNorm: need("post_attention_norm", l),
      ffn,
    });
  }
  const embed = need("embed");
  return {
    config: cfg,
    embed,
    layers,
    finalNorm: need("final_norm"),
    lmHead: cfg.tieWordEmbeddings ? embed : need("lm_head"),
    tokenizer: {
      tokenizerJson: await artifact.readTokenizerJson(),
      chatTemplate: artifact.tokenizer.chatTemplate,
    },
    source: artifact.path,
  };
}
