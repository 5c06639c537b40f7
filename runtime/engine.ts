/**
 * The WebGPU engine: uploads an artifact's tensors once, then runs batched prefill and a
 * GPU-resident decode loop.
 *
 * Storage on the GPU: f32, f16 and bf16 matrices stay in their format (f16/bf16 as packed u16
 * pairs, unpacked in the shaders, so bf16 is exact and no shader-f16 is needed); quantized
 * matrices keep the packed codes/scales/zeros of schemas/packing.ts and are dequantized inside
 * the matmul kernels. Norm weights and biases are converted to f32. Activations are f32.
 *
 * Routed experts of a layer are grouped per projection by storage format ("precision group"),
 * each group one weight set (split so no binding exceeds 128 MiB, the WebGPU default); one
 * dispatch per group per projection whose workgroups exit early when their expert was not
 * selected.
 *
 * Decode: the sampled id is written by the GPU sampler into the token buffer that the next
 * step's embedding lookup reads; one submission per step; ids are read back every
 * `readbackEvery` steps only.
 *
 * @module
 */

import type { Engine, GenerateOptions } from "./api.ts";
import { type Artifact, floatBytesToF32, type TensorRecord } from "./artifact.ts";
import { describeAdapter, requestGpu } from "./device.ts";
import { DeviceError, InputError, LimitError, UnsupportedError, UsageError } from "./errors.ts";
import type { ModelConfig } from "../schemas/model.ts";
import {
  bindKernel,
  type Dispatch,
  encodeDispatches,
  getKernel,
  mapStaging,
  STEP_BYTES,
  storageBuffer,
} from "./kernels/kernel.ts";
import {
  formatName,
  type HostMatrix,
  matmulGroups,
  type MatmulKey,
  matmulSource,
  matrixBytes,
  uploadWeightSet,
  weightBindings,
  type WeightFormat,
  type WeightSet,
} from "./kernels/matmul.ts";
import {
  attentionSource,
  combineSource,
  embedSource,
  EW,
  rmsNormSource,
  ropeStoreSource,
  routerSource,
  swigluSource,
} from "./kernels/ops.ts";
import { createSampler, type Sampler } from "./kernels/sample.ts";

/** Options of {@link createWebGpuEngine}. */
export interface WebGpuEngineOptions {
  /** Use shader-f16 when available (default true); false forces the f32-only path. */
  f16?: boolean;
  /** Use this device instead of requesting one. */
  device?: GPUDevice;
  /** KV-cache length in tokens (default min(config.maxPositions, 4096)). */
  maxContext?: number;
  /** Tokens per prefill batch (default 64). */
  prefillChunk?: number;
  /** Tokens per workgroup in prefill matmuls (default 4). */
  prefillTile?: number;
  /** Most threads per matrix row in matmuls (default: 64 on GPUs, 16 on CPU adapters). */
  threadsPerRow?: number;
}

/** Largest weight-set binding the engine creates for grouped experts (the WebGPU default). */
const EXPERT_SET_BYTES = 128 * 1024 * 1024;

/** A weight set bound with the global expert ids of its matrices. */
interface ExpertSet {
  set: WeightSet;
  gex: GPUBuffer;
}

interface LayerWeights {
  inputNorm: GPUBuffer;
  postNorm: GPUBuffer;
  q: WeightSet;
  k: WeightSet;
  v: WeightSet;
  o: WeightSet;
  qBias?: GPUBuffer;
  kBias?: GPUBuffer;
  vBias?: GPUBuffer;
  qNorm?: GPUBuffer;
  kNorm?: GPUBuffer;
  kind: "moe" | "dense";
  router?: WeightSet;
  experts?: { gate: ExpertSet[]; up: ExpertSet[]; down: ExpertSet[] };
  /** Shared expert (MoE) or the dense MLP. */
  mlp?: { gate: WeightSet; up: WeightSet; down: WeightSet };
  sharedGate?: WeightSet;
  kCache: GPUBuffer;
  vCache: GPUBuffer;
}

/** What the logits stage of a plan computes. */
type LogitsMode = "none" | "last" | "all";

/** The WebGPU engine; see the module docs. */
export interface WebGpuEngine extends Engine {
  /** The device in use. */
  readonly device: GPUDevice;
  /** Whether shader-f16 is enabled. */
  readonly f16: boolean;
  /** KV-cache capacity in tokens. */
  readonly maxContext: number;
  /** Bytes of weights resident on the GPU. */
  readonly weightBytes: number;
  /**
   * Diagnostics: runs each dispatch of the decode plan (T = 1) or of the prefill plan (T tokens)
   * alone, `repeats` times, and returns the mean milliseconds per kernel label (summed over
   * layers). Includes the per-submission cost; uses onSubmittedWorkDone, not readbacks.
   */
  profileKernels(T: number, repeats?: number): Promise<Map<string, number>>;
}

/** The storage format of a matrix record. */
function formatOf(t: TensorRecord): WeightFormat {
  if (t.storage === "q") {
    const q = t.quant!;
    return { kind: "q", bits: q.bits, groupSize: q.groupSize, scaleType: q.scaleType };
  }
  return { kind: t.storage };
}

/**
 * Creates a WebGPU engine for an opened artifact: checks the model, acquires a device with the
 * limits it needs, uploads every tensor and compiles the kernels.
 */
export async function createWebGpuEngine(
  artifact: Artifact,
  opts: WebGpuEngineOptions = {},
): Promise<WebGpuEngine> {
  const cfg = artifact.config;
  const file = artifact.path;
  if (cfg.activation !== "silu") throw new UnsupportedError(`activation ${cfg.activation}`);
  if (cfg.routing.scoring !== "softmax") {
    throw new UnsupportedError(`router scoring ${cfg.routing.scoring}`);
  }
  if (cfg.headDim % 2 !== 0) throw new UnsupportedError(`odd head_dim ${cfg.headDim}`);
  const maxContext = opts.maxContext ?? Math.min(cfg.maxPositions || 4096, 4096);
  const chunk = Math.max(1, Math.min(opts.prefillChunk ?? 64, maxContext));
  const tile = opts.prefillTile ?? 4;

  // Index the tensors.
  const byKey = new Map<string, TensorRecord>();
  for (const t of artifact.tensors) byKey.set(`${t.role}/${t.layer}/${t.expert}`, t);
  const find = (role: string, layer = -1, expert = -1) => byKey.get(`${role}/${layer}/${expert}`);
  const need = (role: string, layer = -1, expert = -1, shape?: number[]): TensorRecord => {
    const t = find(role, layer, expert);
    const where = `${role}${layer >= 0 ? ` layer ${layer}` : ""}${
      expert >= 0 ? ` expert ${expert}` : ""
    }`;
    if (!t) throw new InputError(`missing tensor ${where}`, file);
    if (shape && (t.shape.length !== shape.length || t.shape.some((d, i) => d !== shape[i]))) {
      throw new InputError(
        `tensor ${t.name} (${where}) has shape [${t.shape}], expected [${shape}]`,
        file,
      );
    }
    return t;
  };

  // Largest dense binding: decides the device limits we ask for.
  let maxBinding = 0;
  for (const t of artifact.tensors) {
    if (t.shape.length !== 2) continue;
    const b = matrixBytes(formatOf(t), t.shape[0], t.shape[1]);
    if (!t.role.startsWith("expert_")) maxBinding = Math.max(maxBinding, b);
  }
  const H = cfg.hiddenSize, V = cfg.vocabSize, nh = cfg.numHeads, nkv = cfg.numKvHeads;
  const hd = cfg.headDim, E = cfg.routing.numExperts, K = cfg.routing.topK;
  const I = cfg.expertIntermediateSize;
  const wideI = Math.max(K * I, cfg.sharedIntermediateSize, cfg.denseIntermediateSize);
  maxBinding = Math.max(maxBinding, chunk * V * 4, chunk * wideI * 4, maxContext * nkv * hd * 4);

  let device: GPUDevice, f16: boolean, cpu: boolean;
  if (opts.device) {
    device = opts.device;
    cpu = describeAdapter((device as { adapterInfo?: GPUAdapterInfo }).adapterInfo).cpu;
    f16 = (opts.f16 ?? true) && device.features.has("shader-f16");
    if (device.limits.maxStorageBufferBindingSize < maxBinding) {
      throw new LimitError(
        `the model needs maxStorageBufferBindingSize = ${maxBinding} but the device offers ${device.limits.maxStorageBufferBindingSize}`,
      );
    }
  } else {
    const ctx = await requestGpu({
      f16: opts.f16,
      needs: {
        maxBufferSize: maxBinding,
        maxStorageBufferBindingSize: Math.max(maxBinding, EXPERT_SET_BYTES),
        maxStorageBuffersPerShaderStage: 7,
      },
    });
    device = ctx.device;
    f16 = ctx.f16;
    cpu = ctx.cpu;
  }
  const tpr = opts.threadsPerRow ?? (cpu ? 16 : 64);
  device.pushErrorScope("validation");
  device.pushErrorScope("out-of-memory");

  // ---- uploads
  let weightBytes = 0;
  const readFloat = async (t: TensorRecord) => {
    if (!t.data) throw new InputError(`tensor ${t.name} has no data segment`, file);
    return await artifact.read(t.data, t.name);
  };
  const readHost = async (t: TensorRecord): Promise<HostMatrix> =>
    t.storage === "q" ? await artifact.readQuantized(t) : { raw: await readFloat(t) };
  const matrix = async (t: TensorRecord): Promise<WeightSet> => {
    const set = uploadWeightSet(
      device,
      formatOf(t),
      t.shape[0],
      t.shape[1],
      [await readHost(t)],
      t.name,
    );
    weightBytes += set.bytes;
    return set;
  };
  const vector = async (t: TensorRecord): Promise<GPUBuffer> => {
    if (t.storage === "q") throw new InputError(`vector ${t.name} cannot be quantized`, file);
    const v = floatBytesToF32(await readFloat(t), t.storage);
    weightBytes += v.byteLength;
    return storageBuffer(device, v.byteLength, t.name, v);
  };
  const expertSets = async (role: string, layer: number, shape: number[]): Promise<ExpertSet[]> => {
    const groups = new Map<string, TensorRecord[]>();
    for (let e = 0; e < E; e++) {
      const t = need(role, layer, e, shape);
      const key = formatName(formatOf(t));
      if (!groups.has(key)) groups.set(key, []);
      groups.get(key)!.push(t);
    }
    const out: ExpertSet[] = [];
    for (const members of groups.values()) {
      const fmt = formatOf(members[0]);
      const per = matrixBytes(fmt, shape[0], shape[1]);
      const n = Math.max(1, Math.floor(EXPERT_SET_BYTES / per));
      for (let i = 0; i < members.length; i += n) {
        const part = members.slice(i, i + n);
        const mats = [];
        for (const t of part) mats.push(await readHost(t));
        const set = uploadWeightSet(device, fmt, shape[0], shape[1], mats, `${role}.${layer}`);
        weightBytes += set.bytes;
        const ids = new Uint32Array(part.map((t) => t.expert));
        out.push({ set, gex: storageBuffer(device, ids.byteLength, "gex", ids) });
      }
    }
    return out;
  };

  const embedT = need("embed", -1, -1, [V, H]);
  const embed = await matrix(embedT);
  const lmHead = cfg.tieWordEmbeddings ? embed : await matrix(need("lm_head", -1, -1, [V, H]));
  const finalNorm = await vector(need("final_norm", -1, -1, [H]));
  const cacheBytes = maxContext * nkv * hd * 4;
  const layers: LayerWeights[] = [];
  for (let l = 0; l < cfg.numLayers; l++) {
    const qn = cfg.qkNorm === "head" ? [hd] : [nh * hd];
    const kn = cfg.qkNorm === "head" ? [hd] : [nkv * hd];
    const L: LayerWeights = {
      inputNorm: await vector(need("input_norm", l, -1, [H])),
      postNorm: await vector(need("post_attention_norm", l, -1, [H])),
      q: await matrix(need("attn_q", l, -1, [nh * hd, H])),
      k: await matrix(need("attn_k", l, -1, [nkv * hd, H])),
      v: await matrix(need("attn_v", l, -1, [nkv * hd, H])),
      o: await matrix(need("attn_o", l, -1, [H, nh * hd])),
      qBias: cfg.qkvBias ? await vector(need("attn_q_bias", l, -1, [nh * hd])) : undefined,
      kBias: cfg.qkvBias ? await vector(need("attn_k_bias", l, -1, [nkv * hd])) : undefined,
      vBias: cfg.qkvBias ? await vector(need("attn_v_bias", l, -1, [nkv * hd])) : undefined,
      qNorm: cfg.qkNorm !== "none" ? await vector(need("attn_q_norm", l, -1, qn)) : undefined,
      kNorm: cfg.qkNorm !== "none" ? await vector(need("attn_k_norm", l, -1, kn)) : undefined,
      kind: cfg.layerKinds[l] ?? "moe",
      kCache: storageBuffer(device, cacheBytes, `kcache.${l}`),
      vCache: storageBuffer(device, cacheBytes, `vcache.${l}`),
    };
    if (L.kind === "moe") {
      L.router = await matrix(need("router", l, -1, [E, H]));
      L.experts = {
        gate: await expertSets("expert_gate", l, [I, H]),
        up: await expertSets("expert_up", l, [I, H]),
        down: await expertSets("expert_down", l, [H, I]),
      };
      const S = cfg.sharedIntermediateSize;
      if (S > 0) {
        L.mlp = {
          gate: await matrix(need("shared_gate", l, -1, [S, H])),
          up: await matrix(need("shared_up", l, -1, [S, H])),
          down: await matrix(need("shared_down", l, -1, [H, S])),
        };
        if (cfg.sharedExpertGated) {
          L.sharedGate = await matrix(need("shared_expert_gate", l, -1, [1, H]));
        }
      }
    } else {
      const D = cfg.denseIntermediateSize;
      L.mlp = {
        gate: await matrix(need("dense_gate", l, -1, [D, H])),
        up: await matrix(need("dense_up", l, -1, [D, H])),
        down: await matrix(need("dense_down", l, -1, [H, D])),
      };
    }
    layers.push(L);
  }

  // ---- activations and state
  const act = (floats: number, label: string) => storageBuffer(device, floats * 4, label);
  const buf = {
    x: act(chunk * H, "x"),
    xn: act(chunk * H, "xn"),
    q: act(chunk * nh * hd, "q"),
    k: act(chunk * nkv * hd, "k"),
    v: act(chunk * nkv * hd, "v"),
    att: act(chunk * nh * hd, "att"),
    rlog: act(chunk * E, "router_logits"),
    ids: act(chunk * K, "expert_ids"),
    wts: act(chunk * K, "expert_weights"),
    hg: act(chunk * wideI, "hidden_gate"),
    hu: act(chunk * wideI, "hidden_up"),
    ye: act(chunk * K * H, "expert_out"),
    ys: act(chunk * H, "shared_out"),
    sg: act(chunk, "shared_gate"),
    logits: act(chunk * V, "logits"),
    tok: storageBuffer(device, (maxContext + 1) * 4, "tokens"),
    cs: ropeTable(device, hd, cfg.ropeTheta, maxContext),
  };
  const step = device.createBuffer({
    label: "step",
    size: STEP_BYTES,
    usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST,
  });
  const samplerState = storageBuffer(device, 8, "sampler.state");
  const sampler: Sampler = createSampler(device, V);

  // ---- plans
  const dispatch = (
    src: ReturnType<typeof embedSource>,
    bufs: Record<string, GPUBuffer>,
    groups: (T: number) => [number, number, number],
  ): Dispatch => {
    const kernel = getKernel(device, src);
    return { kernel, bindGroup: bindKernel(device, kernel, { step, ...bufs }), groups };
  };
  const weightBufs = (set: WeightSet): Record<string, GPUBuffer> =>
    Object.fromEntries(weightBindings(set.format).map((n, i) => [n, set.buffers[i]]));
  const ew =
    (width: number, rows: (T: number) => number) => (T: number): [number, number, number] => [
      Math.ceil(width / EW),
      rows(T),
      1,
    ];

  function buildPlan(tt: number, logits: LogitsMode): Dispatch[] {
    const list: Dispatch[] = [];
    const mm = (
      set: WeightSet,
      x: GPUBuffer,
      y: GPUBuffer,
      extra: Partial<MatmulKey> = {},
      bias?: GPUBuffer,
    ) => {
      const key: MatmulKey = {
        format: set.format,
        rows: set.rows,
        cols: set.cols,
        tokenTile: extra.fixedT ? 1 : tt,
        mode: "dense",
        bias: bias !== undefined,
        maxThreadsPerRow: tpr,
        ...extra,
      };
      const bufs: Record<string, GPUBuffer> = { x, y, ...weightBufs(set) };
      if (bias) bufs.B = bias;
      list.push(dispatch(matmulSource(key), bufs, (T) => matmulGroups(key, T)));
    };
    const mmExperts = (sets: ExpertSet[], x: GPUBuffer, y: GPUBuffer, xRows: "token" | "slot") => {
      for (const { set, gex } of sets) {
        const key: MatmulKey = {
          format: set.format,
          rows: set.rows,
          cols: set.cols,
          tokenTile: tt,
          mode: "expert",
          xRows,
          topK: K,
          maxThreadsPerRow: tpr,
        };
        list.push(
          dispatch(
            matmulSource(key),
            { x, y, ids: buf.ids, gex, ...weightBufs(set) },
            (T) => matmulGroups(key, T, set.count),
          ),
        );
      }
    };
    const norm = (
      x: GPUBuffer,
      w: GPUBuffer,
      out: GPUBuffer | null,
      width: number,
      per: number,
    ) => {
      const src = rmsNormSource({ width, rowsPerToken: per, eps: cfg.rmsNormEps, inPlace: !out });
      list.push(dispatch(src, out ? { x, w, out } : { x, w }, (T) => [T * per, 1, 1]));
    };
    const tokens = (T: number) => T;

    list.push(
      dispatch(
        embedSource(embed.format, H),
        { tok: buf.tok, ...weightBufs(embed), out: buf.x },
        ew(H, tokens),
      ),
    );
    for (const L of layers) {
      norm(buf.x, L.inputNorm, buf.xn, H, 1);
      mm(L.q, buf.xn, buf.q, {}, L.qBias);
      mm(L.k, buf.xn, buf.k, {}, L.kBias);
      mm(L.v, buf.xn, buf.v, {}, L.vBias);
      if (cfg.qkNorm === "head") {
        norm(buf.q, L.qNorm!, null, hd, nh);
        norm(buf.k, L.kNorm!, null, hd, nkv);
      } else if (cfg.qkNorm === "full") {
        norm(buf.q, L.qNorm!, null, nh * hd, 1);
        norm(buf.k, L.kNorm!, null, nkv * hd, 1);
      }
      list.push(
        dispatch(
          ropeStoreSource(nh, nkv, hd),
          { q: buf.q, k: buf.k, v: buf.v, cs: buf.cs, kc: L.kCache, vc: L.vCache },
          ew(nh * hd / 2 + nkv * hd / 2 + nkv * hd, tokens),
        ),
      );
      list.push(
        dispatch(
          attentionSource(nh, nkv, hd),
          { q: buf.q, kc: L.kCache, vc: L.vCache, out: buf.att },
          (T) => [nh, T, 1],
        ),
      );
      mm(L.o, buf.att, buf.x, { accumulate: true });
      norm(buf.x, L.postNorm, buf.xn, H, 1);
      if (L.kind === "moe") {
        mm(L.router!, buf.xn, buf.rlog);
        list.push(
          dispatch(
            routerSource(E, K, cfg.routing.normTopK),
            { logits: buf.rlog, ids: buf.ids, wts: buf.wts },
            (T) => [Math.ceil(T / EW), 1, 1],
          ),
        );
        mmExperts(L.experts!.gate, buf.xn, buf.hg, "token");
        mmExperts(L.experts!.up, buf.xn, buf.hu, "token");
        list.push(dispatch(swigluSource(I, K), { g: buf.hg, up: buf.hu }, ew(I, (T) => T * K)));
        mmExperts(L.experts!.down, buf.hg, buf.ye, "slot");
        let shared: "none" | "plain" | "gated" = "none";
        const extra: Record<string, GPUBuffer> = {};
        if (L.mlp) {
          const S = cfg.sharedIntermediateSize;
          mm(L.mlp.gate, buf.xn, buf.hg);
          mm(L.mlp.up, buf.xn, buf.hu);
          list.push(dispatch(swigluSource(S, 1), { g: buf.hg, up: buf.hu }, ew(S, tokens)));
          mm(L.mlp.down, buf.hg, buf.ys);
          shared = "plain";
          extra.ys = buf.ys;
          if (L.sharedGate) {
            mm(L.sharedGate, buf.xn, buf.sg);
            shared = "gated";
            extra.sg = buf.sg;
          }
        }
        list.push(
          dispatch(
            combineSource(H, K, shared),
            { x: buf.x, ye: buf.ye, wts: buf.wts, ...extra },
            ew(H, tokens),
          ),
        );
      } else {
        const D = cfg.denseIntermediateSize;
        mm(L.mlp!.gate, buf.xn, buf.hg);
        mm(L.mlp!.up, buf.xn, buf.hu);
        list.push(dispatch(swigluSource(D, 1), { g: buf.hg, up: buf.hu }, ew(D, tokens)));
        mm(L.mlp!.down, buf.hg, buf.x, { accumulate: true });
      }
    }
    if (logits === "all") {
      norm(buf.x, finalNorm, buf.xn, H, 1);
      mm(lmHead, buf.xn, buf.logits);
    } else if (logits === "last") {
      const src = rmsNormSource({
        width: H,
        rowsPerToken: 1,
        eps: cfg.rmsNormEps,
        inPlace: false,
        lastOnly: true,
      });
      list.push(dispatch(src, { x: buf.x, w: finalNorm, out: buf.xn }, () => [1, 1, 1]));
      mm(lmHead, buf.xn, buf.logits, { fixedT: 1 });
    }
    return list;
  }

  const plans = new Map<string, Dispatch[]>();
  const plan = (tt: number, mode: LogitsMode) => {
    const key = `${tt}/${mode}`;
    if (!plans.has(key)) plans.set(key, buildPlan(tt, mode));
    return plans.get(key)!;
  };
  // Compile everything now so errors surface at load time.
  plan(tile, "all");
  plan(tile, "none");
  plan(tile, "last");
  plan(1, "last");
  await sampler.ready;
  const oom = await device.popErrorScope();
  const invalid = await device.popErrorScope();
  if (oom) throw new LimitError(`GPU out of memory while loading ${file}: ${oom.message}`);
  if (invalid) {
    throw new DeviceError(`WebGPU validation failed while loading ${file}: ${invalid.message}`);
  }

  // ---- running
  const stepData = new Uint32Array(4);
  /** Encodes one forward of T tokens at position pos0 (optionally sampling) and submits it. */
  function submitForward(
    T: number,
    pos0: number,
    dispatches: Dispatch[],
    after?: (enc: GPUCommandEncoder) => void,
  ): void {
    stepData[0] = T;
    stepData[1] = pos0;
    device.queue.writeBuffer(step, 0, stepData);
    const enc = device.createCommandEncoder();
    const pass = enc.beginComputePass();
    encodeDispatches(pass, dispatches, T);
    pass.end();
    after?.(enc);
    device.queue.submit([enc.finish()]);
  }

  let busy = false;
  let disposed = false;
  const enter = () => {
    if (disposed) throw new UsageError("the engine was disposed");
    if (busy) throw new UsageError("the engine is busy with another request");
    busy = true;
  };
  const checkIds = (ids: number[], what: string) => {
    if (ids.length === 0) throw new UsageError(`${what}: no input ids`);
    for (const id of ids) {
      if (!Number.isInteger(id) || id < 0 || id >= V) {
        throw new UsageError(`${what}: token id ${id} is outside the vocabulary [0, ${V})`);
      }
    }
    if (ids.length > maxContext) {
      throw new LimitError(`${what}: ${ids.length} tokens exceed the context of ${maxContext}`);
    }
  };

  async function logits(ids: number[]): Promise<Float32Array[]> {
    checkIds(ids, "logits");
    enter();
    try {
      const n = ids.length;
      device.queue.writeBuffer(buf.tok, 0, new Uint32Array(ids));
      const staging = device.createBuffer({
        size: n * V * 4,
        usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
      });
      for (let s = 0; s < n; s += chunk) {
        const T = Math.min(chunk, n - s);
        submitForward(T, s, plan(tile, "all"), (enc) => {
          enc.copyBufferToBuffer(buf.logits, 0, staging, s * V * 4, T * V * 4);
        });
      }
      const bytes = await mapStaging(staging, n * V * 4);
      staging.destroy();
      const all = new Float32Array(bytes.buffer, bytes.byteOffset, n * V);
      return Array.from({ length: n }, (_, i) => all.slice(i * V, (i + 1) * V));
    } finally {
      busy = false;
    }
  }

  async function* generate(
    promptIds: number[],
    options: GenerateOptions = {},
  ): AsyncGenerator<number> {
    checkIds(promptIds, "generate");
    const n = promptIds.length;
    const maxTokens = Math.min(options.maxTokens ?? 64, maxContext - n);
    const every = Math.max(1, Math.floor(options.readbackEvery ?? 8));
    const stop = new Set(options.stopIds ?? cfg.eosTokenIds);
    const params = {
      temperature: options.temperature ?? 0,
      topK: options.topK ?? 0,
      topP: options.topP ?? 1,
      seed: options.seed ?? 0,
    };
    if (maxTokens <= 0) return;
    enter();
    const staging = device.createBuffer({
      size: every * 4,
      usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
    });
    try {
      device.queue.writeBuffer(buf.tok, 0, new Uint32Array(promptIds));
      const sample = (pos: number, s: number) => (enc: GPUCommandEncoder) => {
        device.queue.writeBuffer(samplerState, 0, new Uint32Array([s, pos]));
        sampler.encode(enc, buf.logits, buf.tok, { buffer: samplerState, offset: 0 }, params);
      };
      // Prefill: all chunks but the last compute no logits; the last samples token n.
      for (let s = 0; s < n; s += chunk) {
        const T = Math.min(chunk, n - s);
        const last = s + T >= n;
        submitForward(T, s, plan(tile, last ? "last" : "none"), last ? sample(n, 0) : undefined);
      }
      let produced = 1; // tokens sampled so far (tok[n .. n + produced))
      let yielded = 0;
      const decode = plan(1, "last");
      while (yielded < maxTokens) {
        // Run decode steps until a readback is due.
        const target = Math.min(maxTokens, yielded + every);
        while (produced < target) {
          if (options.signal?.aborted) return;
          const pos = n + produced - 1; // position of the newest token, fed now
          submitForward(1, pos, decode, sample(pos + 1, produced));
          produced++;
        }
        const count = produced - yielded;
        const enc = device.createCommandEncoder();
        enc.copyBufferToBuffer(buf.tok, (n + yielded) * 4, staging, 0, count * 4);
        device.queue.submit([enc.finish()]);
        const bytes = await mapStaging(staging, count * 4);
        const got = new Uint32Array(bytes.buffer, bytes.byteOffset, count);
        for (const id of got) {
          if (options.signal?.aborted) return;
          yielded++;
          yield id;
          if (stop.has(id)) return;
        }
      }
    } finally {
      staging.destroy();
      busy = false;
    }
  }

  return {
    config: cfg,
    device,
    f16,
    maxContext,
    weightBytes,
    logits,
    generate,
    async profileKernels(T: number, repeats = 5) {
      if (T < 1 || T > chunk) throw new UsageError(`profileKernels: T must be in [1, ${chunk}]`);
      const out = new Map<string, number>();
      for (const d of T === 1 ? plan(1, "last") : plan(tile, "all")) {
        await device.queue.onSubmittedWorkDone();
        const t0 = performance.now();
        for (let r = 0; r < repeats; r++) submitForward(T, 0, [d]);
        await device.queue.onSubmittedWorkDone();
        const key = d.kernel.label.replace(/\.\d+x\d+/, "");
        out.set(key, (out.get(key) ?? 0) + (performance.now() - t0) / repeats);
      }
      return out;
    },
    dispose() {
      if (disposed) return;
      disposed = true;
      sampler.dispose();
      if (!opts.device) device.destroy();
    },
  };
}

/**
 * RoPE table: cs[pos, i] = (cos, sin)(pos · inv_freq[i]) with inv_freq[i] = 1 / θ^(2i/hd) rounded
 * to f32 as transformers computes it; angles and cos/sin in float64 on the host, stored as f32.
 */
function ropeTable(device: GPUDevice, hd: number, theta: number, n: number): GPUBuffer {
  const half = hd / 2;
  const data = new Float32Array(n * half * 2);
  const invFreq = Array.from(
    { length: half },
    (_, i) => Math.fround(1 / Math.fround(Math.pow(theta, Math.fround((2 * i) / hd)))),
  );
  for (let p = 0; p < n; p++) {
    for (let i = 0; i < half; i++) {
      const a = p * invFreq[i];
      data[(p * half + i) * 2] = Math.cos(a);
      data[(p * half + i) * 2 + 1] = Math.sin(a);
    }
  }
  return storageBuffer(device, data.byteLength, "rope", data);
}

/** Re-exported for callers that type configs next to the engine. */
export type { ModelConfig };
