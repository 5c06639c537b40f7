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
 * O(n·k + m·k + n·m) next to the O(n·m·k) product.
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
  vZero: [SIMD, 0x0c, ...new Array(16).fill(0)],
  extract: (lane: number) => [SIMD, 0x1f, lane],
  vAdd: [SIMD, ...uleb(228)], // f32x4.add
  vMul: [SIMD, ...uleb(230)], // f32x4.mul
};

/**
 * gemm(a, b, c, n, m, k): c[i·m + j] = Σ_p a[i·k + p] · b[j·k + p] for byte addresses a, b, c,
 * with n even, m a multiple of 4, k a multiple of 4 (the caller pads).
 */
function gemmBody(): number[] {
  // Params 0..5: a b c n m k. Locals: i32 6..15, v128 16..26.
  const [A, B, C, N, M, K] = [0, 1, 2, 3, 4, 5];
  const [I, J, P, ROW, PA0, PA1, PB0, PB1, PB2, PB3] = [6, 7, 8, 9, 10, 11, 12, 13, 14, 15];
  const ACC = [16, 17, 18, 19, 20, 21, 22, 23]; // acc[r·4 + q]: A row r, B row q
  const [VA0, VA1, VB] = [24, 25, 26];
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
  emit(op.i32(0), op.set(P));
  emit(op.loop); // p loop (k ≥ 4 always)
  emit(op.get(PA0), op.get(P), op.add, op.vLoad, op.set(VA0));
  emit(op.get(PA1), op.get(P), op.add, op.vLoad, op.set(VA1));
  [PB0, PB1, PB2, PB3].forEach((pb, q) => {
    emit(op.get(pb), op.get(P), op.add, op.vLoad, op.set(VB));
    emit(op.get(ACC[q]), op.get(VA0), op.get(VB), op.vMul, op.vAdd, op.set(ACC[q]));
    emit(op.get(ACC[4 + q]), op.get(VA1), op.get(VB), op.vMul, op.vAdd, op.set(ACC[4 + q]));
  });
  emit(op.get(P), op.i32(16), op.add, op.tee(P), op.get(ROW), op.ltU, op.brIf(0));
  emit(op.end);
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
  const locals = vec([[...uleb(10), I32], [...uleb(11), V128]]);
  const body = [...locals, ...code];
  return [...uleb(body.length), ...body];
}

/** The module's bytes: one memory (exported as "memory") and the function "gemm". */
export function gemmModuleBytes(): Uint8Array<ArrayBuffer> {
  const type = [0x60, ...vec(new Array(6).fill([I32])), ...vec([])];
  const bytes = [
    0x00,
    0x61,
    0x73,
    0x6d,
    0x01,
    0x00,
    0x00,
    0x00, // magic, version 1
    ...section(1, vec([type])),
    ...section(3, vec([uleb(0)])),
    ...section(5, vec([[0x00, ...uleb(1)]])), // memory: min 1 page, no max
    ...section(7, vec([[...name("memory"), 0x02, 0], [...name("gemm"), 0x00, 0]])),
    ...section(10, vec([gemmBody()])),
  ];
  return new Uint8Array(bytes);
}

// --- The per-thread instance ---------------------------------------------------------------------

interface Kernel {
  memory: WebAssembly.Memory;
  gemm: (a: number, b: number, c: number, n: number, m: number, k: number) => void;
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
  const aAt = 0, bAt = np * kp, cAt = bAt + mp * kp;
  let mem = heap((cAt + np * mp) * 4);
  place(mem, aAt, a, n, k, kp);
  place(mem, bAt, b, m, k, kp);
  // Padding rows are read but their results are dropped: give them zeros, not stale values.
  if (np > n) mem.fill(0, aAt + n * kp, aAt + np * kp);
  if (mp > m) mem.fill(0, bAt + m * kp, bAt + mp * kp);
  instance().gemm(aAt * 4, bAt * 4, cAt * 4, np, mp, kp);
  mem = new Float32Array(instance().memory.buffer);
  if (mp === m) {
    out.set(mem.subarray(cAt, cAt + n * m));
    return;
  }
  for (let i = 0; i < n; i++) out.set(mem.subarray(cAt + i * mp, cAt + i * mp + m), i * m);
}
