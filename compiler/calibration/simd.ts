/**
 * A float32 matrix product C = A · Bᵀ in WebAssembly SIMD, for the calibration pass's hot loops
 * (expert forwards, the head). The module is assembled here, byte by byte, from a few lines of
 * instruction builders (no toolchain, no binary in the repository) and instantiated once per
 * thread.
 *
 * The kernel walks 4 rows of B (the weights, kept in L1) against every pair of rows of A, with
 * 2 × 4 accumulators of 4 float32 lanes over the shared dimension k: each lane sums every 4th
 * product in order, and the four lanes are added at the end ((l0 + l1) + (l2 + l3)). So the
 * result is float32 arithmetic with a fixed summation order: deterministic on every machine,
 * within ≈ k · 2⁻²⁴ · Σ|a·b| of the exact sum.
 *
 * Operands live in the module's own memory; {@link matmulF32} copies them in (padding k to a
 * multiple of 4 with zeros, and n, m to multiples of 2 and 4) and the result out, which costs
 * O(n·k + m·k + n·m) next to the O(n·m·k) product. Callers that keep operands there (an expert
 * resident for its whole job, resident.ts) reserve regions of that memory as a stack
 * ({@link kernelAlloc}, {@link kernelMark}, {@link kernelRelease}) and call the kernels on byte
 * addresses ({@link gemmAt}, {@link minmaxAt}, {@link rtnAt}, {@link rtnFastAt}, {@link bf16At}).
 *
 * @module
 */

import { UsageError } from "../../schemas/errors.ts";

// --- A minimal WebAssembly binary writer --------------------------------------------------------

/** Unsigned LEB128. */
function uleb(v: number): number[] {
  const out: number[] = [];
  do {
    let byte = v & 0x7f;
    v >>>= 7;
    if (v !== 0) byte |= 0x80;
    out.push(byte);
  } while (v !== 0);
  return out;
}

/** Signed LEB128 (32-bit values). */
function sleb(v: number): number[] {
  const out: number[] = [];
  while (true) {
    const byte = v & 0x7f;
    v >>= 7;
    const done = (v === 0 && (byte & 0x40) === 0) || (v === -1 && (byte & 0x40) !== 0);
    out.push(done ? byte : byte | 0x80);
    if (done) return out;
  }
}

/** A length-prefixed vector of already-encoded items. */
function vec(items: number[][]): number[] {
  return [...uleb(items.length), ...items.flat()];
}

/** A section: id, byte size, contents. */
function section(id: number, body: number[]): number[] {
  return [id, ...uleb(body.length), ...body];
}

/** A UTF-8 name. */
function name(s: string): number[] {
  const b = [...new TextEncoder().encode(s)];
  return [...uleb(b.length), ...b];
}

const I32 = 0x7f;
const F64 = 0x7c;
const V128 = 0x7b;
const SIMD = 0xfd;

/** Instruction builders (the few this kernel uses). */
const op = {
  get: (i: number) => [0x20, ...uleb(i)],
  set: (i: number) => [0x21, ...uleb(i)],
  tee: (i: number) => [0x22, ...uleb(i)],
  i32: (v: number) => [0x41, ...sleb(v)],
  add: [0x6a],
  mul: [0x6c],
  ltU: [0x49],
  geU: [0x4f],
  gtU: [0x4b],
  block: [0x02, 0x40],
  loop: [0x03, 0x40],
  end: [0x0b],
  br: (d: number) => [0x0c, ...uleb(d)],
  brIf: (d: number) => [0x0d, ...uleb(d)],
  f32Add: [0x92],
  /** f32.store with alignment 2^2 and a constant offset. */
  f32Store: (offset: number) => [0x38, 2, ...uleb(offset)],
  /** v128.load with alignment 2^4. */
  vLoad: [SIMD, 0x00, 4, 0],
  /** v128.load with alignment 2^4 and a constant offset. */
  vLoadAt: (offset: number) => [SIMD, 0x00, 4, ...uleb(offset)],
  vZero: [SIMD, 0x0c, ...new Array(16).fill(0)],
  extract: (lane: number) => [SIMD, 0x1f, lane],
  vAdd: [SIMD, ...uleb(228)], // f32x4.add
  vMul: [SIMD, ...uleb(230)], // f32x4.mul
  sub: [0x6b],
  f32Min: [0x96],
  f32Max: [0x97],
  /** f64.load with alignment 2^3 and a constant offset. */
  f64Load: (offset: number) => [0x2b, 3, ...uleb(offset)],
  f64: (v: number) => [0x44, ...new Uint8Array(new Float64Array([v]).buffer)],
  demote: [0xb6], // f32.demote_f64
  i32ToF64: [0xb7], // f64.convert_i32_s
  /** v128.store with alignment 2^4. */
  vStore: [SIMD, 0x0b, 4, 0],
  /** v128.store with alignment 2^4 and a constant offset. */
  vStoreAt: (offset: number) => [SIMD, 0x0b, 4, ...uleb(offset)],
  shuffle: (lanes: number[]) => [SIMD, 0x0d, ...lanes],
  f32Splat: [SIMD, 0x13],
  i32Splat: [SIMD, 0x11],
  f64Splat: [SIMD, 0x14],
  vAnd: [SIMD, ...uleb(78)],
  f32x4Min: [SIMD, ...uleb(232)],
  f32x4Max: [SIMD, ...uleb(233)],
  /** f32x4.pmin(a, b) = b < a ? b : a (one instruction; no NaN or ±0 rules). */
  f32x4Pmin: [SIMD, ...uleb(234)],
  /** f32x4.pmax(a, b) = a < b ? b : a. */
  f32x4Pmax: [SIMD, ...uleb(235)],
  f32x4Ne: [SIMD, ...uleb(66)],
  f64x2Eq: [SIMD, ...uleb(71)],
  f64x2Add: [SIMD, ...uleb(240)],
  f64x2Sub: [SIMD, ...uleb(241)],
  f64x2Mul: [SIMD, ...uleb(242)],
  f64x2Min: [SIMD, ...uleb(244)],
  f64x2Max: [SIMD, ...uleb(245)],
  f64x2Nearest: [SIMD, ...uleb(148)],
  f32Load: (offset: number) => [0x2a, 2, ...uleb(offset)],
  i32Store: (offset: number) => [0x36, 2, ...uleb(offset)],
  vOr: [SIMD, ...uleb(80)],
  anyTrue: [SIMD, ...uleb(83)],
  f32x4Ge: [SIMD, ...uleb(70)],
  f32x4Nearest: [SIMD, ...uleb(106)],
  f32x4Abs: [SIMD, ...uleb(224)],
  vSub: [SIMD, ...uleb(229)], // f32x4.sub
  i16Splat: [SIMD, ...uleb(16)],
  i16x8Eq: [SIMD, ...uleb(45)],
  extendLowU: [SIMD, ...uleb(169)], // i32x4.extend_low_i16x8_u
  extendHighU: [SIMD, ...uleb(170)], // i32x4.extend_high_i16x8_u
  i32x4Shl: [SIMD, ...uleb(171)],
  demoteZero: [SIMD, ...uleb(94)], // f32x4.demote_f64x2_zero
  promoteLow: [SIMD, ...uleb(95)], // f64x2.promote_low_f32x4
  // Scalar float and integer steps of the `params` kernel.
  i32And: [0x71],
  i32Or: [0x72],
  eqz: [0x45],
  select: [0x1b],
  f32Sub: [0x93],
  f64Add: [0xa0],
  f64Sub: [0xa1],
  f64Mul: [0xa2],
  f64Div: [0xa3],
  f64Neg: [0x9a],
  f64Abs: [0x99],
  f64Max: [0xa5],
  f64Gt: [0x64],
  promote: [0xbb], // f64.promote_f32
  i32FromF32: [0xbc], // i32.reinterpret_f32
  f32FromI32: [0xbe], // f32.reinterpret_i32
  /** f64.store with alignment 2^3 and a constant offset. */
  f64Store: (offset: number) => [0x39, 3, ...uleb(offset)],
};

/** A function body from its locals ([count, type] runs) and code. */
function body(locals: [number, number][], code: number[]): number[] {
  const b = [...vec(locals.map(([n, t]) => [...uleb(n), t])), ...code, ...op.end];
  return [...uleb(b.length), ...b];
}

/**
 * minmax(w, out, groups, gbytes): for each of `groups` consecutive groups of gbytes bytes
 * (a multiple of 16) of f32 values at w, out gets [min, max] as two f32 (NaN when the group has
 * one). The running min and max are pmin / pmax (one instruction each, where f32x4.min and max
 * cost several for their NaN and ±0 rules); NaN lanes are tracked apart and OR-ed in (all ones
 * is a NaN) before the lanes are reduced with f32.min / f32.max, which propagate it. Which zero a
 * group of ±0 reports may differ from f32x4.min's; the RTN parameters do not depend on it.
 */
function minmaxBody(): number[] {
  const [W, OUT, GROUPS, GB] = [0, 1, 2, 3];
  const [G, END] = [4, 5];
  const [LO, HI, V, NAN] = [6, 7, 8, 9];
  const code: number[] = [];
  const emit = (...parts: number[][]) => parts.forEach((p) => code.push(...p));
  emit(op.i32(0), op.set(G));
  emit(op.block, op.loop);
  emit(op.get(G), op.get(GROUPS), op.geU, op.brIf(1));
  emit(op.get(W), op.get(GB), op.add, op.set(END));
  emit(op.get(W), op.vLoad, op.tee(LO), op.tee(HI), op.get(HI), op.f32x4Ne, op.set(NAN));
  emit(op.get(W), op.i32(16), op.add, op.set(W));
  emit(op.block, op.loop);
  emit(op.get(W), op.get(END), op.geU, op.brIf(1));
  emit(op.get(W), op.vLoad, op.set(V));
  emit(op.get(LO), op.get(V), op.f32x4Pmin, op.set(LO));
  emit(op.get(HI), op.get(V), op.f32x4Pmax, op.set(HI));
  emit(op.get(NAN), op.get(V), op.get(V), op.f32x4Ne, op.vOr, op.set(NAN));
  emit(op.get(W), op.i32(16), op.add, op.set(W), op.br(0));
  emit(op.end, op.end);
  emit(op.get(LO), op.get(NAN), op.vOr, op.set(LO));
  emit(op.get(HI), op.get(NAN), op.vOr, op.set(HI));
  for (const [acc, f, offset] of [[LO, op.f32Min, 0], [HI, op.f32Max, 4]] as const) {
    emit(op.get(OUT));
    emit(op.get(acc), op.extract(0), op.get(acc), op.extract(1), f);
    emit(op.get(acc), op.extract(2), op.get(acc), op.extract(3), f, f);
    emit(op.f32Store(offset));
  }
  emit(op.get(OUT), op.i32(8), op.add, op.set(OUT));
  emit(op.get(G), op.i32(1), op.add, op.set(G), op.br(0));
  emit(op.end, op.end);
  return body([[2, I32], [4, V128]], code);
}

/**
 * rtn(w, out, params, groups, gbytes, qmax): asymmetric RTN of each group, decoded. params holds
 * per group [1/scale, zero, scale] as f64; per value, in float64 as compiler/quantize/rtn.ts:
 * v = w · (1/scale) + zero, q = round-half-up(v) clamped to [0, qmax]; then out = f32(f32(q −
 * zero) · scale), the runtime's decode.
 */
function rtnBody(): number[] {
  const [W, OUT, PRM, GROUPS, GB, QMAX] = [0, 1, 2, 3, 4, 5];
  const [G, END] = [6, 7];
  const [INV, ZERO, SCALE, X, LO2, HI2, T, V, HALF, ONE, Z0, QM] = [
    8,
    9,
    10,
    11,
    12,
    13,
    14,
    15,
    16,
    17,
    18,
    19,
  ];
  const code: number[] = [];
  const emit = (...parts: number[][]) => parts.forEach((p) => code.push(...p));
  emit(op.f64(0.5), op.f64Splat, op.set(HALF));
  emit(op.f64(1), op.f64Splat, op.set(ONE));
  emit(op.f64(0), op.f64Splat, op.set(Z0));
  emit(op.get(QMAX), op.i32ToF64, op.f64Splat, op.set(QM));
  emit(op.i32(0), op.set(G));
  emit(op.block, op.loop);
  emit(op.get(G), op.get(GROUPS), op.geU, op.brIf(1));
  emit(op.get(PRM), op.f64Load(0), op.f64Splat, op.set(INV));
  emit(op.get(PRM), op.f64Load(8), op.f64Splat, op.set(ZERO));
  emit(op.get(PRM), op.f64Load(16), op.demote, op.f32Splat, op.set(SCALE));
  emit(op.get(W), op.get(GB), op.add, op.set(END));
  emit(op.block, op.loop);
  emit(op.get(W), op.get(END), op.geU, op.brIf(1));
  emit(op.get(W), op.vLoad, op.tee(X), op.promoteLow, op.set(LO2));
  const high = [8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7];
  emit(op.get(X), op.get(X), op.shuffle(high), op.promoteLow, op.set(HI2));
  for (const half of [LO2, HI2]) {
    // v = x · inv + zero; t = nearest(v) + (v − t == 0.5); clamp; q − zero.
    emit(op.get(half), op.get(INV), op.f64x2Mul, op.get(ZERO), op.f64x2Add, op.tee(V));
    emit(op.f64x2Nearest, op.set(T));
    emit(op.get(T), op.get(V), op.get(T), op.f64x2Sub, op.get(HALF), op.f64x2Eq);
    emit(op.get(ONE), op.vAnd, op.f64x2Add);
    emit(op.get(Z0), op.f64x2Max, op.get(QM), op.f64x2Min);
    emit(op.get(ZERO), op.f64x2Sub, op.demoteZero, op.set(half));
  }
  emit(op.get(OUT), op.get(LO2), op.get(HI2));
  emit(op.shuffle([0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23]));
  emit(op.get(SCALE), op.vMul, op.vStore);
  emit(op.get(W), op.i32(16), op.add, op.set(W));
  emit(op.get(OUT), op.i32(16), op.add, op.set(OUT), op.br(0));
  emit(op.end, op.end);
  emit(op.get(PRM), op.i32(24), op.add, op.set(PRM));
  emit(op.get(G), op.i32(1), op.add, op.set(G), op.br(0));
  emit(op.end, op.end);
  return body([[2, I32], [12, V128]], code);
}

/**
 * rtn32(w, out, params, groups, gbytes, qmax, flags): {@link rtnBody}'s RTN in float32 lanes, for
 * speed. params holds per group [1/scale, zero, scale, limit] as f32. Per value v = w · (1/scale)
 * + zero, t = nearest(v), out = f32((clamp(t, 0, qmax) − zero) · scale); and flags[g] (an i32)
 * is 1 when some value of the group had |v − t| ≥ limit, i.e. lay so near a half-integer that the
 * float32 v might round differently from the float64 one (the caller redoes those groups on the
 * float64 kernel), else 0.
 */
function rtn32Body(): number[] {
  const [W, OUT, PRM, GROUPS, GB, QMAX, FLAGS] = [0, 1, 2, 3, 4, 5, 6];
  const [G, END] = [7, 8];
  const [INV, ZERO, SCALE, LIMIT, QM, Z0, V, T, NEAR] = [9, 10, 11, 12, 13, 14, 15, 16, 17];
  const code: number[] = [];
  const emit = (...parts: number[][]) => parts.forEach((p) => code.push(...p));
  emit(op.get(QMAX), op.i32ToF64, op.demote, op.f32Splat, op.set(QM));
  emit(op.vZero, op.set(Z0));
  emit(op.i32(0), op.set(G));
  emit(op.block, op.loop);
  emit(op.get(G), op.get(GROUPS), op.geU, op.brIf(1));
  emit(op.get(PRM), op.f32Load(0), op.f32Splat, op.set(INV));
  emit(op.get(PRM), op.f32Load(4), op.f32Splat, op.set(ZERO));
  emit(op.get(PRM), op.f32Load(8), op.f32Splat, op.set(SCALE));
  emit(op.get(PRM), op.f32Load(12), op.f32Splat, op.set(LIMIT));
  emit(op.vZero, op.set(NEAR));
  emit(op.get(W), op.get(GB), op.add, op.set(END));
  emit(op.block, op.loop);
  emit(op.get(W), op.get(END), op.geU, op.brIf(1));
  emit(op.get(W), op.vLoad, op.get(INV), op.vMul, op.get(ZERO), op.vAdd, op.tee(V));
  emit(op.f32x4Nearest, op.set(T));
  emit(op.get(NEAR), op.get(V), op.get(T), op.vSub, op.f32x4Abs, op.get(LIMIT), op.f32x4Ge);
  emit(op.vOr, op.set(NEAR));
  emit(op.get(OUT));
  // clamp as pmax(0, t), pmin(qmax, ·): max(t, 0) and min(·, qmax) for the finite t here.
  emit(op.get(Z0), op.get(T), op.f32x4Pmax, op.get(QM), op.f32x4Pmin);
  emit(op.get(ZERO), op.vSub, op.get(SCALE), op.vMul, op.vStore);
  emit(op.get(W), op.i32(16), op.add, op.set(W));
  emit(op.get(OUT), op.i32(16), op.add, op.set(OUT), op.br(0));
  emit(op.end, op.end);
  emit(op.get(FLAGS), op.get(NEAR), op.anyTrue, op.i32Store(0));
  emit(op.get(FLAGS), op.i32(4), op.add, op.set(FLAGS));
  emit(op.get(PRM), op.i32(16), op.add, op.set(PRM));
  emit(op.get(G), op.i32(1), op.add, op.set(G), op.br(0));
  emit(op.end, op.end);
  return body([[2, I32], [9, V128]], code);
}

/**
 * params(mm, prm, prm32, flags, groups, qmax) → i32: the RTN parameters of fake_quant.ts
 * `rtnGroupParams` (f16 scales) per group, the same operations in the same order on IEEE floats:
 * from [lo, hi] (two f32 at mm), scale = r16((hi − lo) / qmax), zero = r16(−lo / scale), then
 * prm (f64) [1/scale, zero, scale] and prm32 (f32) [1/scale, zero, scale, limit] with
 * limit = (0.5 − e) − 2⁻²⁴, e = 2⁻²³ · (3.01 · max(|lo|, |hi|) · (1/scale) + |zero|). r16 is
 * schemas/half.ts `roundF16`: to f32 (round to nearest even), then to the f16 grid (the same) by
 * adding and subtracting c = 2^(max(E, −14) + 13) for the f32's exponent E, whose sum's last bit
 * is then the f16's last bit (a carry into the next binade included; 2⁻²⁴ steps below 2⁻¹⁴);
 * the sign is put back. A group outside the common case (not hi > lo, a scale not > 0, a value
 * that rounds to f16 infinity, NaN) gets flags[g] = 1 and nothing else: the caller redoes it in
 * `minMaxParams`, which also raises its errors; the others get 0. Returns how many were flagged.
 */
function paramsBody(): number[] {
  const [MM, PRM, PRM32, FLAGS, GROUPS, QMAX] = [0, 1, 2, 3, 4, 5];
  const [G, BAD, B, A, C, FLAGGED] = [6, 7, 8, 9, 10, 11];
  const [LO, HI, S, Z, INV, E, QM] = [12, 13, 14, 15, 16, 17, 18];
  const code: number[] = [];
  const emit = (...parts: number[][]) => parts.forEach((p) => code.push(...p));
  /** f64 on the stack → its roundF16, as f64; BAD |= it rounds to ±Infinity or is NaN. */
  const r16 = () => {
    emit(op.demote, op.i32FromF32, op.tee(B), op.i32(0x7fffffff), op.i32And, op.tee(A));
    emit(op.i32(0x477ff000), op.geU, op.get(BAD), op.i32Or, op.set(BAD)); // |x| ≥ 65520
    emit(op.get(A), op.i32(0x7f800000), op.i32And, op.tee(C), op.i32(113 << 23));
    emit(op.get(C), op.i32(113 << 23), op.gtU, op.select, op.i32(13 << 23), op.add, op.set(C));
    emit(op.get(A), op.f32FromI32, op.get(C), op.f32FromI32, op.f32Add);
    emit(op.get(C), op.f32FromI32, op.f32Sub, op.i32FromF32);
    emit(op.get(B), op.i32(-0x80000000), op.i32And, op.i32Or, op.f32FromI32, op.promote);
  };
  emit(op.get(QMAX), op.i32ToF64, op.set(QM));
  emit(op.i32(0), op.set(G), op.i32(0), op.set(FLAGGED));
  emit(op.block, op.loop);
  emit(op.get(G), op.get(GROUPS), op.geU, op.brIf(1));
  emit(op.i32(0), op.set(BAD));
  emit(op.get(MM), op.f32Load(0), op.promote, op.set(LO));
  emit(op.get(MM), op.f32Load(4), op.promote, op.set(HI));
  emit(op.block); // done
  emit(op.block); // flag
  emit(op.get(HI), op.get(LO), op.f64Gt, op.eqz, op.brIf(0));
  emit(op.get(HI), op.get(LO), op.f64Sub, op.get(QM), op.f64Div);
  r16();
  emit(op.tee(S), op.f64(0), op.f64Gt, op.eqz, op.get(BAD), op.i32Or, op.brIf(0));
  emit(op.get(LO), op.f64Neg, op.get(S), op.f64Div);
  r16();
  emit(op.set(Z), op.get(BAD), op.brIf(0));
  emit(op.f64(1), op.get(S), op.f64Div, op.set(INV));
  emit(op.get(PRM), op.get(INV), op.f64Store(0));
  emit(op.get(PRM), op.get(Z), op.f64Store(8));
  emit(op.get(PRM), op.get(S), op.f64Store(16));
  emit(op.f64(2 * 2 ** -24), op.f64(3.01), op.get(LO), op.f64Abs, op.get(HI), op.f64Abs);
  emit(op.f64Max, op.f64Mul, op.get(INV), op.f64Mul, op.get(Z), op.f64Abs, op.f64Add);
  emit(op.f64Mul, op.set(E));
  emit(op.get(PRM32), op.get(INV), op.demote, op.f32Store(0));
  emit(op.get(PRM32), op.get(Z), op.demote, op.f32Store(4));
  emit(op.get(PRM32), op.get(S), op.demote, op.f32Store(8));
  emit(op.get(PRM32), op.f64(0.5), op.get(E), op.f64Sub, op.f64(2 ** -24), op.f64Sub);
  emit(op.demote, op.f32Store(12));
  emit(op.get(FLAGS), op.i32(0), op.i32Store(0), op.br(1));
  emit(op.end); // flag
  emit(op.get(FLAGS), op.i32(1), op.i32Store(0));
  emit(op.get(FLAGGED), op.i32(1), op.add, op.set(FLAGGED));
  emit(op.end); // done
  emit(op.get(MM), op.i32(8), op.add, op.set(MM));
  emit(op.get(PRM), op.i32(24), op.add, op.set(PRM));
  emit(op.get(PRM32), op.i32(16), op.add, op.set(PRM32));
  emit(op.get(FLAGS), op.i32(4), op.add, op.set(FLAGS));
  emit(op.get(G), op.i32(1), op.add, op.set(G), op.br(0));
  emit(op.end, op.end);
  emit(op.get(FLAGGED));
  return body([[6, I32], [7, F64]], code);
}

/**
 * bf16(src, dst, n8) → i32: widens 8·n8 bf16 values at src to float32 at dst (each a 16-bit
 * shift); returns 1 when one of them is non-finite (exponent bits all ones), else 0.
 */
function bf16Body(): number[] {
  const [SRC, DST, N8] = [0, 1, 2];
  const [END] = [3];
  const [V, BAD, MASK] = [4, 5, 6];
  const code: number[] = [];
  const emit = (...parts: number[][]) => parts.forEach((p) => code.push(...p));
  emit(op.i32(0x7f80), op.i16Splat, op.set(MASK));
  emit(op.vZero, op.set(BAD));
  emit(op.get(SRC), op.get(N8), op.i32(16), op.mul, op.add, op.set(END));
  emit(op.block, op.loop);
  emit(op.get(SRC), op.get(END), op.geU, op.brIf(1));
  emit(op.get(SRC), op.vLoad, op.set(V));
  emit(op.get(BAD), op.get(V), op.get(MASK), op.vAnd, op.get(MASK), op.i16x8Eq, op.vOr);
  emit(op.set(BAD));
  emit(op.get(DST), op.get(V), op.extendLowU, op.i32(16), op.i32x4Shl, op.vStore);
  emit(op.get(DST), op.get(V), op.extendHighU, op.i32(16), op.i32x4Shl, op.vStoreAt(16));
  emit(op.get(SRC), op.i32(16), op.add, op.set(SRC));
  emit(op.get(DST), op.i32(32), op.add, op.set(DST), op.br(0));
  emit(op.end, op.end);
  emit(op.get(BAD), op.anyTrue);
  return body([[1, I32], [3, V128]], code);
}

/**
 * bf16mm(src, dst, n8, mm, g8) → i32: {@link bf16Body}'s widening, and per group of g8 blocks of
 * 8 values the group's [min, max] as two f32 at mm, as the `minmax` kernel finds them (the same
 * lanes in the same order, pmin / pmax from ±Infinity; no NaN rule: a non-finite value makes the
 * result 1 and the caller redoes the matrix). n8 is a multiple of g8.
 */
function bf16mmBody(): number[] {
  const [SRC, DST, N8, MM, G8] = [0, 1, 2, 3, 4];
  const [END, GEND] = [5, 6];
  const [V, BAD, MASK, LO, HI, A, B] = [7, 8, 9, 10, 11, 12, 13];
  const code: number[] = [];
  const emit = (...parts: number[][]) => parts.forEach((p) => code.push(...p));
  emit(op.i32(0x7f80), op.i16Splat, op.set(MASK));
  emit(op.vZero, op.set(BAD));
  emit(op.get(SRC), op.get(N8), op.i32(16), op.mul, op.add, op.set(END));
  emit(op.block, op.loop); // groups
  emit(op.get(SRC), op.get(END), op.geU, op.brIf(1));
  emit(op.get(SRC), op.get(G8), op.i32(16), op.mul, op.add, op.set(GEND));
  emit(op.i32(0x7f800000), op.i32Splat, op.set(LO)); // +Infinity
  emit(op.i32(-0x800000), op.i32Splat, op.set(HI)); // -Infinity
  emit(op.block, op.loop); // blocks of 8 values
  emit(op.get(SRC), op.get(GEND), op.geU, op.brIf(1));
  emit(op.get(SRC), op.vLoad, op.set(V));
  emit(op.get(BAD), op.get(V), op.get(MASK), op.vAnd, op.get(MASK), op.i16x8Eq, op.vOr);
  emit(op.set(BAD));
  emit(op.get(V), op.extendLowU, op.i32(16), op.i32x4Shl, op.set(A));
  emit(op.get(V), op.extendHighU, op.i32(16), op.i32x4Shl, op.set(B));
  emit(op.get(DST), op.get(A), op.vStore, op.get(DST), op.get(B), op.vStoreAt(16));
  emit(op.get(LO), op.get(A), op.f32x4Pmin, op.get(B), op.f32x4Pmin, op.set(LO));
  emit(op.get(HI), op.get(A), op.f32x4Pmax, op.get(B), op.f32x4Pmax, op.set(HI));
  emit(op.get(SRC), op.i32(16), op.add, op.set(SRC));
  emit(op.get(DST), op.i32(32), op.add, op.set(DST), op.br(0));
  emit(op.end, op.end);
  for (const [acc, f, offset] of [[LO, op.f32Min, 0], [HI, op.f32Max, 4]] as const) {
    emit(op.get(MM));
    emit(op.get(acc), op.extract(0), op.get(acc), op.extract(1), f);
    emit(op.get(acc), op.extract(2), op.get(acc), op.extract(3), f, f);
    emit(op.f32Store(offset));
  }
  emit(op.get(MM), op.i32(8), op.add, op.set(MM), op.br(0));
  emit(op.end, op.end);
  emit(op.get(BAD), op.anyTrue);
  return body([[2, I32], [7, V128]], code);
}

/**
 * gemm(a, b, c, n, m, k): c[i·m + j] = Σ_p a[i·k + p] · b[j·k + p] for byte addresses a, b, c,
 * with n even, m a multiple of 4, k a multiple of 4 (the caller pads).
 */
function gemmBody(): number[] {
  // Params 0..5: a b c n m k. Locals: i32 6..21, v128 22..32.
  const [A, B, C, N, M, K] = [0, 1, 2, 3, 4, 5];
  const [I, J, P, ROW, PA0, PA1, PB0, PB1, PB2, PB3] = [6, 7, 8, 9, 10, 11, 12, 13, 14, 15];
  const X = [16, 17, 18, 19, 20, 21]; // this turn's addresses of PA0, PA1, PB0..PB3
  const ACC = [22, 23, 24, 25, 26, 27, 28, 29]; // acc[r·4 + q]: A row r, B row q
  const [VA0, VA1, VB] = [30, 31, 32];
  const code: number[] = [];
  const emit = (...parts: number[][]) => parts.forEach((p) => code.push(...p));
  // ROW = k · 4 bytes per row.
  emit(op.get(K), op.i32(4), op.mul, op.set(ROW));
  emit(op.i32(0), op.set(J));
  emit(op.block, op.loop); // j loop
  emit(op.get(J), op.get(M), op.geU, op.brIf(1));
  // PB0..3 = b + j·ROW + q·ROW
  emit(op.get(B), op.get(J), op.get(ROW), op.mul, op.add, op.tee(PB0));
  emit(op.get(ROW), op.add, op.tee(PB1), op.get(ROW), op.add, op.tee(PB2));
  emit(op.get(ROW), op.add, op.set(PB3));
  emit(op.i32(0), op.set(I));
  emit(op.block, op.loop); // i loop
  emit(op.get(I), op.get(N), op.geU, op.brIf(1));
  emit(op.get(A), op.get(I), op.get(ROW), op.mul, op.add, op.tee(PA0));
  emit(op.get(ROW), op.add, op.set(PA1));
  for (const acc of ACC) emit(op.vZero, op.set(acc));
  // One step of 4 values of the shared dimension at byte offset `at` from this turn's addresses;
  // a turn is 4 steps while they fit, then 1 (the same products in the same order either way).
  const step = (at: number) => {
    emit(op.get(X[0]), op.vLoadAt(at), op.set(VA0));
    emit(op.get(X[1]), op.vLoadAt(at), op.set(VA1));
    for (let q = 0; q < 4; q++) {
      emit(op.get(X[2 + q]), op.vLoadAt(at), op.set(VB));
      emit(op.get(ACC[q]), op.get(VA0), op.get(VB), op.vMul, op.vAdd, op.set(ACC[q]));
      emit(op.get(ACC[4 + q]), op.get(VA1), op.get(VB), op.vMul, op.vAdd, op.set(ACC[4 + q]));
    }
  };
  const turn = (steps: number) => {
    [PA0, PA1, PB0, PB1, PB2, PB3].forEach((ptr, x) => {
      emit(op.get(ptr), op.get(P), op.add, op.set(X[x]));
    });
    for (let u = 0; u < steps; u++) step(16 * u);
    emit(op.get(P), op.i32(16 * steps), op.add, op.set(P));
  };
  emit(op.i32(0), op.set(P));
  emit(op.block, op.loop); // p loop, 4 steps a turn
  emit(op.get(P), op.i32(64), op.add, op.get(ROW), op.gtU, op.brIf(1));
  turn(4);
  emit(op.br(0), op.end, op.end);
  emit(op.block, op.loop); // p loop, the last steps
  emit(op.get(P), op.get(ROW), op.geU, op.brIf(1));
  turn(1);
  emit(op.br(0), op.end, op.end);
  // Stores: c[(i + r)·m + j + q] = (l0 + l1) + (l2 + l3) of acc[r·4 + q].
  for (let r = 0; r < 2; r++) {
    for (let q = 0; q < 4; q++) {
      // address = c + ((i + r)·m + j)·4, offset q·4
      emit(op.get(C), op.get(I), op.i32(r), op.add, op.get(M), op.mul, op.get(J), op.add);
      emit(op.i32(4), op.mul, op.add);
      const acc = ACC[r * 4 + q];
      emit(op.get(acc), op.extract(0), op.get(acc), op.extract(1), op.f32Add);
      emit(op.get(acc), op.extract(2), op.get(acc), op.extract(3), op.f32Add, op.f32Add);
      emit(op.f32Store(q * 4));
    }
  }
  emit(op.get(I), op.i32(2), op.add, op.set(I), op.br(0));
  emit(op.end, op.end); // i loop, block
  emit(op.get(J), op.i32(4), op.add, op.set(J), op.br(0));
  emit(op.end, op.end); // j loop, block
  emit(op.end); // function
  const locals = vec([[...uleb(16), I32], [...uleb(11), V128]]);
  const body = [...locals, ...code];
  return [...uleb(body.length), ...body];
}

/**
 * The module's bytes: one memory (exported as "memory") and "gemm", "minmax", "rtn", "rtn32",
 * "bf16", "params", "bf16mm".
 */
export function gemmModuleBytes(): Uint8Array<ArrayBuffer> {
  const type = (params: number, results = 0) => [
    0x60,
    ...vec(new Array(params).fill([I32])),
    ...vec(new Array(results).fill([I32])),
  ];
  const bytes = [
    0x00,
    0x61,
    0x73,
    0x6d,
    0x01,
    0x00,
    0x00,
    0x00, // magic, version 1
    ...section(1, vec([type(6), type(4), type(7), type(3, 1), type(6, 1), type(5, 1)])),
    ...section(3, vec([uleb(0), uleb(1), uleb(0), uleb(2), uleb(3), uleb(4), uleb(5)])),
    ...section(5, vec([[0x00, ...uleb(1)]])), // memory: min 1 page, no max
    ...section(
      7,
      vec([
        [...name("memory"), 0x02, 0],
        [...name("gemm"), 0x00, 0],
        [...name("minmax"), 0x00, 1],
        [...name("rtn"), 0x00, 2],
        [...name("rtn32"), 0x00, 3],
        [...name("bf16"), 0x00, 4],
        [...name("params"), 0x00, 5],
        [...name("bf16mm"), 0x00, 6],
      ]),
    ),
    ...section(
      10,
      vec([
        gemmBody(),
        minmaxBody(),
        rtnBody(),
        rtn32Body(),
        bf16Body(),
        paramsBody(),
        bf16mmBody(),
      ]),
    ),
  ];
  return new Uint8Array(bytes);
}

// --- The per-thread instance ---------------------------------------------------------------------

interface Kernel {
  memory: WebAssembly.Memory;
  gemm: (a: number, b: number, c: number, n: number, m: number, k: number) => void;
  minmax: (w: number, out: number, groups: number, gbytes: number) => void;
  rtn: (w: number, out: number, prm: number, groups: number, gbytes: number, qmax: number) => void;
  rtn32: (
    w: number,
    out: number,
    prm: number,
    groups: number,
    gbytes: number,
    qmax: number,
    flags: number,
  ) => void;
  bf16: (src: number, dst: number, n8: number) => number;
  params: (
    mm: number,
    prm: number,
    prm32: number,
    flags: number,
    groups: number,
    qmax: number,
  ) => number;
  bf16mm: (src: number, dst: number, n8: number, mm: number, g8: number) => number;
}

let kernel: Kernel | null = null;

function instance(): Kernel {
  if (!kernel) {
    const inst = new WebAssembly.Instance(new WebAssembly.Module(gemmModuleBytes()), {});
    kernel = inst.exports as unknown as Kernel;
  }
  return kernel;
}

const PAGE = 1 << 16;

/** The module's memory as f32, grown to at least `bytes`. */
function heap(bytes: number): Float32Array {
  const { memory } = instance();
  if (memory.buffer.byteLength < bytes) {
    memory.grow(Math.ceil((bytes - memory.buffer.byteLength) / PAGE));
  }
  return new Float32Array(memory.buffer);
}

const up = (v: number, to: number) => Math.ceil(v / to) * to;

// --- A stack of regions in the kernel's memory --------------------------------------------------

/** First free byte of the kernel memory; regions below it belong to a caller. */
let top = 0;

/**
 * Reserves `floats` float32 values (16-byte aligned) in the kernel's memory, growing it as needed,
 * and returns their byte address. Release with {@link kernelRelease}(mark) where mark is
 * {@link kernelMark}() taken before: regions live until then.
 */
export function kernelAlloc(floats: number): number {
  const at = top;
  top = up(at + floats * 4, 16);
  heap(top);
  return at;
}

/** The current top of the region stack (see {@link kernelAlloc}). */
export function kernelMark(): number {
  return top;
}

/** Frees every region above `mark`. */
export function kernelRelease(mark: number): void {
  top = mark;
}

/** A float32 view of `floats` values at byte address `at` (a fresh view: memory may have grown). */
export function kernelF32(at: number, floats: number): Float32Array {
  return new Float32Array(instance().memory.buffer, at, floats);
}

/** A float64 view of `values` values at byte address `at` (8-byte aligned). */
export function kernelF64(at: number, values: number): Float64Array {
  return new Float64Array(instance().memory.buffer, at, values);
}

/**
 * Widens `n` bf16 values (raw little-endian bytes) to float32 at byte address `dst` of the kernel
 * memory. Returns false, with `dst` undefined, when one of them is non-finite.
 */
export function bf16At(bytes: Uint8Array, dst: number, n: number): boolean {
  return bf16Into((view) => view.set(bytes.subarray(0, 2 * n)), dst, n);
}

/**
 * {@link bf16At} with the `2n` raw bytes written by `fill` into a view of the kernel memory (a
 * file read straight there, raw_read.ts); what `fill` throws is thrown, with nothing reserved.
 */
export function bf16Into(fill: (view: Uint8Array) => void, dst: number, n: number): boolean {
  const mark = kernelMark();
  try {
    const n8 = Math.ceil(n / 8);
    const src = kernelAlloc(n8 * 4); // 8 bf16 = 4 floats' bytes
    fill(new Uint8Array(instance().memory.buffer, src, 2 * n));
    new Uint8Array(instance().memory.buffer, src, n8 * 16).fill(0, 2 * n);
    // The widened tail beyond n would overwrite what follows dst: widen whole groups of 8 only,
    // then the last few values one by one.
    const whole = Math.floor(n / 8);
    let bad = instance().bf16(src, dst, whole);
    if (whole < n8) {
      const tail = kernelAlloc(8);
      bad |= instance().bf16(src + whole * 16, tail, 1);
      kernelF32(dst + whole * 32, n - whole * 8).set(kernelF32(tail, n - whole * 8));
    }
    return bad === 0;
  } finally {
    kernelRelease(mark);
  }
}

/**
 * {@link bf16Into} that also finds each group's [min, max] of the widened values, as
 * {@link minmaxAt} does, into `mm` (groups of `groupSize` values, a multiple of 8 dividing n),
 * in the same pass. Returns false, with `dst` and `mm` undefined, on a non-finite value.
 */
export function bf16MinmaxInto(
  fill: (view: Uint8Array) => void,
  dst: number,
  n: number,
  mm: number,
  groupSize: number,
): boolean {
  if (groupSize % 8 !== 0 || n % groupSize !== 0) {
    throw new UsageError(`bf16MinmaxInto: ${n} values in groups of ${groupSize}`);
  }
  const mark = kernelMark();
  try {
    const src = kernelAlloc(n / 2); // n bf16 = n / 2 floats' bytes
    fill(new Uint8Array(instance().memory.buffer, src, 2 * n));
    return instance().bf16mm(src, dst, n / 8, mm, groupSize / 8) === 0;
  } finally {
    kernelRelease(mark);
  }
}

/**
 * The product kernel on operands already in the kernel memory (byte addresses): c [n, m] = a
 * [n, k] · b [m, k]ᵀ, with n even and m, k multiples of 4 (see the module doc for the order).
 */
export function gemmAt(a: number, b: number, c: number, n: number, m: number, k: number): void {
  if (n % 2 !== 0 || m % 4 !== 0 || k % 4 !== 0 || k < 4) {
    throw new UsageError(`gemmAt: [${n}, ${k}] · [${m}, ${k}]ᵀ is not padded`);
  }
  if (n === 0 || m === 0) return;
  // The kernel streams all of a for every 4 rows of b: in chunks of rows that stay in a core's
  // L2 cache (b, streamed once per chunk, is read in 4-row blocks that stay in L1). Each value
  // is computed as in one call.
  const chunk = Math.max(2, 2 * Math.floor(A_CHUNK_BYTES / (8 * k)));
  const { gemm } = instance();
  for (let i = 0; i < n; i += chunk) {
    gemm(a + i * k * 4, b, c + i * m * 4, Math.min(chunk, n - i), m, k);
  }
}

/** Bytes of the a operand per call of the product kernel (see {@link gemmAt}). */
const A_CHUNK_BYTES = 192 << 10;

/**
 * Per group of `groupSize` values (a multiple of 4) of the `groups · groupSize` float32 at `w`:
 * its [min, max] as two float32 at `out` (NaN when the group holds one).
 */
export function minmaxAt(w: number, out: number, groups: number, groupSize: number): void {
  instance().minmax(w, out, groups, groupSize * 4);
}

/**
 * The `params` kernel: RTN parameters (f16 scales) of `groups` groups from their [min, max] at
 * `mm` into `prm` (3 f64 each) and `prm32` (4 f32 each); `flags` (one i32 each) marks the groups
 * it leaves to the caller (see the kernel). Returns how many.
 */
export function paramsAt(
  mm: number,
  prm: number,
  prm32: number,
  flags: number,
  groups: number,
  qmax: number,
): number {
  return instance().params(mm, prm, prm32, flags, groups, qmax);
}

/**
 * The `rtn` kernel (see {@link rtnDecodedSimd}) on values at `w` into `out`, per-group parameters
 * [1/scale, zero, scale] as float64 at `prm`.
 */
export function rtnAt(
  w: number,
  out: number,
  prm: number,
  groups: number,
  groupSize: number,
  qmax: number,
): void {
  instance().rtn(w, out, prm, groups, groupSize * 4, qmax);
}

/** Copies rows [rows, k] into `mem` at float index `at`, rows padded to `kp` with zeros. */
function place(
  mem: Float32Array,
  at: number,
  src: Float32Array,
  rows: number,
  k: number,
  kp: number,
) {
  if (k === kp) {
    mem.set(src.subarray(0, rows * k), at);
    return;
  }
  for (let r = 0; r < rows; r++) {
    mem.set(src.subarray(r * k, (r + 1) * k), at + r * kp);
    mem.fill(0, at + r * kp + k, at + (r + 1) * kp);
  }
}

/**
 * out [n, m] = a [n, k] · bᵀ (b [m, k], a Linear layer's weights), float32 (see the module doc).
 */
export function matmulF32(
  out: Float32Array,
  a: Float32Array,
  b: Float32Array,
  n: number,
  m: number,
  k: number,
): void {
  if (a.length < n * k || b.length < m * k || out.length < n * m || k < 1) {
    throw new UsageError(`matmulF32: operands too short for [${n}, ${k}] · [${m}, ${k}]ᵀ`);
  }
  if (n === 0 || m === 0) return;
  const kp = up(k, 4), np = up(n, 2), mp = up(m, 4);
  const mark = kernelMark();
  const base = kernelAlloc(np * kp + mp * kp + np * mp) / 4;
  const aAt = base, bAt = aAt + np * kp, cAt = bAt + mp * kp;
  let mem = new Float32Array(instance().memory.buffer);
  place(mem, aAt, a, n, k, kp);
  place(mem, bAt, b, m, k, kp);
  // Padding rows are read but their results are dropped: give them zeros, not stale values.
  if (np > n) mem.fill(0, aAt + n * kp, aAt + np * kp);
  if (mp > m) mem.fill(0, bAt + m * kp, bAt + mp * kp);
  gemmAt(aAt * 4, bAt * 4, cAt * 4, np, mp, kp);
  mem = new Float32Array(instance().memory.buffer);
  if (mp === m) out.set(mem.subarray(cAt, cAt + n * m));
  else {
    for (let i = 0; i < n; i++) out.set(mem.subarray(cAt + i * mp, cAt + i * mp + m), i * m);
  }
  kernelRelease(mark);
}

/**
 * The RTN of {@link rtnAt} in float32 lanes where that is provably the same (see the `rtn32`
 * kernel): `prm32` holds per group [1/scale, zero, scale, limit] as f32, `prm` the float64
 * parameters of {@link rtnAt}, `flags` room for one i32 per group. Groups with a value too near a
 * rounding tie for float32 are redone by {@link rtnAt}; returns how many.
 */
export function rtnFastAt(
  w: number,
  out: number,
  prm32: number,
  prm: number,
  flags: number,
  groups: number,
  groupSize: number,
  qmax: number,
): number {
  const k = instance();
  const gbytes = groupSize * 4;
  k.rtn32(w, out, prm32, groups, gbytes, qmax, flags);
  const flagged = new Int32Array(k.memory.buffer, flags, groups);
  let redone = 0;
  for (let g = 0; g < groups; g++) {
    if (flagged[g] === 0) continue;
    k.rtn(w + g * gbytes, out + g * gbytes, prm + g * 24, 1, gbytes, qmax);
    redone++;
  }
  return redone;
}

/**
 * Asymmetric RTN of w in groups of `groupSize` consecutive values (a multiple of 4 dividing
 * w.length), decoded (see the `rtn` kernel): `params(lo, hi, out)` turns a group's min and max
 * (NaN or ±Infinity when the group has a non-finite value) into out = [1/scale, zero, scale].
 * Writes the values into `into` (default: a new array) and returns it.
 */
export function rtnDecodedSimd(
  w: Float32Array,
  groupSize: number,
  qmax: number,
  params: (lo: number, hi: number, out: Float64Array) => void,
  into: Float32Array = new Float32Array(w.length),
): Float32Array {
  const n = w.length;
  if (groupSize % 4 !== 0 || n % groupSize !== 0 || n === 0) {
    throw new UsageError(`rtnDecodedSimd: ${n} values in groups of ${groupSize}`);
  }
  const groups = n / groupSize;
  const mark = kernelMark();
  try {
    const wAt = kernelAlloc(n), outAt = kernelAlloc(n);
    const mmAt = kernelAlloc(2 * groups), prmAt = kernelAlloc(6 * groups);
    kernelF32(wAt, n).set(w);
    minmaxAt(wAt, mmAt, groups, groupSize);
    const mm = kernelF32(mmAt, 2 * groups);
    const prm = kernelF64(prmAt, 3 * groups);
    const one = new Float64Array(3);
    for (let g = 0; g < groups; g++) {
      params(mm[2 * g], mm[2 * g + 1], one); // throws on a non-finite group
      prm.set(one, 3 * g);
    }
    rtnAt(wAt, outAt, prmAt, groups, groupSize, qmax);
    into.set(kernelF32(outAt, n));
    return into;
  } finally {
    kernelRelease(mark);
  }
}
