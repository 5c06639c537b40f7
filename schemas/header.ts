/**
 * Encodes an artifact header (plain objects, schemas/artifact.ts ArtifactHeader) as the
 * FlatBuffers buffer described by schemas/artifact.fbs.
 *
 * Every scalar is written even when it equals its default (`forceDefaults`), so the encoded size
 * depends only on the header's structure (which tensors, strings, vectors and optional tables are
 * present), never on the values of offsets, lengths or checksums. The writer relies on this: it
 * sizes the header region from a placeholder header before any weight is written.
 *
 * @module
 */

import * as flatbuffers from "flatbuffers";
import * as fb from "./generated/artifact_generated.ts";
import type { ArtifactHeader, Segment, TensorRecord } from "./artifact.ts";
import type { ModelConfig } from "./model_legacy.ts";

type Builder = flatbuffers.Builder;

function segment(b: Builder, s: Segment): flatbuffers.Offset {
  return fb.Segment.createSegment(b, BigInt(s.offset), BigInt(s.length), s.crc32c);
}

function encodeConfig(b: Builder, c: ModelConfig): flatbuffers.Offset {
  const family = b.createString(c.family);
  const qkNorm = b.createString(c.qkNorm);
  const activation = b.createString(c.activation);
  const scoring = b.createString(c.routing.scoring);
  const routing = fb.Routing.createRouting(
    b,
    scoring,
    c.routing.numExperts,
    c.routing.topK,
    c.routing.normTopK,
  );
  const kinds = fb.Config.createLayerKindsVector(b, c.layerKinds.map((k) => b.createString(k)));
  const eos = fb.Config.createEosTokenIdsVector(b, c.eosTokenIds.map((id) => BigInt(id)));
  fb.Config.startConfig(b);
  fb.Config.addFamily(b, family);
  fb.Config.addVocabSize(b, c.vocabSize);
  fb.Config.addHiddenSize(b, c.hiddenSize);
  fb.Config.addNumLayers(b, c.numLayers);
  fb.Config.addNumHeads(b, c.numHeads);
  fb.Config.addNumKvHeads(b, c.numKvHeads);
  fb.Config.addHeadDim(b, c.headDim);
  fb.Config.addExpertIntermediateSize(b, c.expertIntermediateSize);
  fb.Config.addDenseIntermediateSize(b, c.denseIntermediateSize);
  fb.Config.addSharedIntermediateSize(b, c.sharedIntermediateSize);
  fb.Config.addSharedExpertGated(b, c.sharedExpertGated);
  fb.Config.addRopeTheta(b, c.ropeTheta);
  fb.Config.addRmsNormEps(b, c.rmsNormEps);
  fb.Config.addMaxPositions(b, c.maxPositions);
  fb.Config.addTieWordEmbeddings(b, c.tieWordEmbeddings);
  fb.Config.addQkvBias(b, c.qkvBias);
  fb.Config.addQkNorm(b, qkNorm);
  fb.Config.addActivation(b, activation);
  fb.Config.addRouting(b, routing);
  fb.Config.addLayerKinds(b, kinds);
  fb.Config.addBosTokenId(b, BigInt(c.bosTokenId ?? -1));
  fb.Config.addEosTokenIds(b, eos);
  return fb.Config.endConfig(b);
}

function encodeTensor(b: Builder, t: TensorRecord): flatbuffers.Offset {
  const name = b.createString(t.name);
  const role = b.createString(t.role);
  const storage = b.createString(t.storage);
  const shape = fb.Tensor.createShapeVector(b, t.shape.map((d) => BigInt(d)));
  let quant = 0;
  if (t.quant) {
    const q = t.quant;
    const scaleType = b.createString(q.scaleType);
    const quantizer = b.createString(q.quantizer);
    fb.Quant.startQuant(b);
    fb.Quant.addBits(b, q.bits);
    fb.Quant.addGroupSize(b, q.groupSize);
    fb.Quant.addScaleType(b, scaleType);
    fb.Quant.addQuantizer(b, quantizer);
    fb.Quant.addCodes(b, segment(b, q.codes));
    fb.Quant.addScales(b, segment(b, q.scales));
    fb.Quant.addZeros(b, segment(b, q.zeros));
    quant = fb.Quant.endQuant(b);
  }
  fb.Tensor.startTensor(b);
  fb.Tensor.addName(b, name);
  fb.Tensor.addRole(b, role);
  fb.Tensor.addLayer(b, t.layer);
  fb.Tensor.addExpert(b, t.expert);
  fb.Tensor.addShape(b, shape);
  fb.Tensor.addStorage(b, storage);
  if (t.data) fb.Tensor.addData(b, segment(b, t.data));
  if (quant) fb.Tensor.addQuant(b, quant);
  return fb.Tensor.endTensor(b);
}

/** Encodes a header; the result's size does not depend on segment offsets/lengths/CRCs. */
export function encodeHeader(h: ArtifactHeader): Uint8Array {
  const b = new flatbuffers.Builder(1024);
  b.forceDefaults(true);
  const generator = b.createString(h.generator);
  const config = encodeConfig(b, h.config);
  const tensors = fb.Header.createTensorsVector(b, h.tensors.map((t) => encodeTensor(b, t)));
  const experts = fb.Header.createExpertsVector(
    b,
    h.experts.map((e) => {
      const scores = fb.ExpertReport.createScoresVector(
        b,
        Object.entries(e.scores).map(([k, v]) => fb.Score.createScore(b, b.createString(k), v)),
      );
      return fb.ExpertReport.createExpertReport(
        b,
        e.layer,
        e.expert,
        e.bits,
        BigInt(e.bytes),
        e.rank,
        e.relError,
        scores,
      );
    }),
  );
  const template = h.tokenizer.chatTemplate === null ? 0 : b.createString(h.tokenizer.chatTemplate);
  fb.Tokenizer.startTokenizer(b);
  if (h.tokenizer.json) fb.Tokenizer.addJson(b, segment(b, h.tokenizer.json));
  if (template) fb.Tokenizer.addChatTemplate(b, template);
  const tokenizer = fb.Tokenizer.endTokenizer(b);
  const options = b.createString(h.optionsJson);
  const s = h.summary;
  const summary = fb.Summary.createSummary(
    b,
    s.numTensors,
    BigInt(s.totalBytes),
    BigInt(s.expertBytes),
    BigInt(s.expertParams),
    s.avgExpertBits,
    s.expertBitsPerWeight,
  );
  fb.Header.startHeader(b);
  fb.Header.addGenerator(b, generator);
  fb.Header.addConfig(b, config);
  fb.Header.addTensors(b, tensors);
  fb.Header.addExperts(b, experts);
  fb.Header.addTokenizer(b, tokenizer);
  fb.Header.addOptionsJson(b, options);
  fb.Header.addSummary(b, summary);
  fb.Header.finishHeaderBuffer(b, fb.Header.endHeader(b));
  return b.asUint8Array().slice();
}
