/**
 * A FlatBuffers verifier for the artifact header: before any accessor touches the header, every
 * table, vtable, string, vector and struct it can reach is checked to lie inside the buffer, be
 * aligned, and have in-range field offsets. A corrupt or hostile header therefore becomes a
 * one-line InputError instead of an out-of-bounds read or a hang.
 *
 * The verifier is driven by {@link HEADER_SCHEMA}, a transcription of `schemas/artifact.fbs`
 * (table name → field types in field-id order); `header_verify_test.ts` checks it against the
 * .fbs so the two cannot drift.
 *
 * @module
 */

import { InputError } from "./errors.ts";

/** Scalar type sizes in bytes (FlatBuffers schema names). */
const SCALAR_SIZE: Record<string, number> = {
  bool: 1,
  byte: 1,
  ubyte: 1,
  short: 2,
  ushort: 2,
  int: 4,
  uint: 4,
  float: 4,
  long: 8,
  ulong: 8,
  double: 8,
};

/** Struct sizes and alignments. */
const STRUCTS: Record<string, { size: number; align: number }> = {
  Segment: { size: 24, align: 8 },
};

/**
 * The header schema: per table, the field types by field id, spelled as in the .fbs
 * (`string`, a scalar, a struct or table name, or `[T]` for a vector of T).
 */
export const HEADER_SCHEMA: Record<string, readonly string[]> = {
  Routing: ["string", "uint", "uint", "bool"],
  Config: [
    "string",
    "uint",
    "uint",
    "uint",
    "uint",
    "uint",
    "uint",
    "uint",
    "uint",
    "uint",
    "bool",
    "double",
    "double",
    "uint",
    "bool",
    "bool",
    "string",
    "string",
    "Routing",
    "[string]",
    "long",
    "[long]",
  ],
  Quant: ["ubyte", "uint", "string", "string", "Segment", "Segment", "Segment"],
  Tensor: ["string", "string", "int", "int", "[ulong]", "string", "Segment", "Quant", "string"],
  Score: ["string", "double"],
  ExpertReport: ["int", "int", "double", "ulong", "int", "double", "[Score]", "string"],
  Tokenizer: ["Segment", "string"],
  Summary: ["uint", "ulong", "ulong", "ulong", "double", "double"],
  Header: [
    "string",
    "Config",
    "[Tensor]",
    "[ExpertReport]",
    "Tokenizer",
    "string",
    "Summary",
    "string",
  ],
};

/** The root table type and the 4-byte file identifier of the header buffer. */
export const HEADER_ROOT = "Header";
/** `file_identifier` of artifact.fbs. */
export const HEADER_IDENTIFIER = "MQH1";

/** Maximum table nesting depth the verifier follows. */
const MAX_DEPTH = 16;

class Verifier {
  readonly view: DataView;
  readonly size: number;
  /** Tables already verified (by position and type): shared subtrees are checked once. */
  readonly seen = new Set<string>();

  constructor(readonly bytes: Uint8Array, readonly file: string) {
    this.view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    this.size = bytes.byteLength;
  }

  fail(what: string): never {
    throw new InputError(`corrupt artifact header: ${what}`, this.file);
  }

  /** [pos, pos + len) lies inside the buffer and pos is a multiple of align. */
  check(pos: number, len: number, align: number, what: string): void {
    if (!(pos >= 0 && len >= 0 && pos + len <= this.size)) {
      this.fail(`${what} at ${pos} (+${len}) is outside the ${this.size}-byte header`);
    }
    if (pos % align !== 0) this.fail(`${what} at ${pos} is not ${align}-byte aligned`);
  }

  /** Follows the u32 offset stored at `pos`. */
  deref(pos: number, what: string): number {
    this.check(pos, 4, 4, `${what} offset`);
    const off = this.view.getUint32(pos, true);
    if (off === 0) this.fail(`${what} offset at ${pos} is zero`);
    return pos + off;
  }

  string(pos: number, what: string): void {
    this.check(pos, 4, 4, `${what} string length`);
    const len = this.view.getUint32(pos, true);
    this.check(pos + 4, len + 1, 1, `${what} string`);
    if (this.bytes[pos + 4 + len] !== 0) this.fail(`${what} string at ${pos} lacks its terminator`);
  }

  /** Checks a vector header and returns [length, first element position]. */
  vector(pos: number, elemSize: number, elemAlign: number, what: string): [number, number] {
    this.check(pos, 4, 4, `${what} vector length`);
    const len = this.view.getUint32(pos, true);
    if (len * elemSize > this.size) this.fail(`${what} vector length ${len} is impossible`);
    this.check(pos + 4, len * elemSize, elemAlign, `${what} vector`);
    return [len, pos + 4];
  }

  field(pos: number, type: string, what: string, depth: number): void {
    if (type.startsWith("[")) {
      const elem = type.slice(1, -1);
      const vec = this.deref(pos, what);
      if (elem === "string" || HEADER_SCHEMA[elem]) {
        const [len, first] = this.vector(vec, 4, 4, what);
        for (let i = 0; i < len; i++) {
          const target = this.deref(first + 4 * i, `${what}[${i}]`);
          if (elem === "string") this.string(target, `${what}[${i}]`);
          else this.table(target, elem, depth + 1);
        }
      } else if (STRUCTS[elem]) {
        this.vector(vec, STRUCTS[elem].size, STRUCTS[elem].align, what);
      } else {
        const s = SCALAR_SIZE[elem];
        this.vector(vec, s, s, what);
      }
    } else if (type === "string") {
      this.string(this.deref(pos, what), what);
    } else if (HEADER_SCHEMA[type]) {
      this.table(this.deref(pos, what), type, depth + 1);
    }
    // Scalars and structs are inline: their extent was checked against the table already.
  }

  table(pos: number, type: string, depth: number): void {
    if (depth > MAX_DEPTH) this.fail(`tables nested deeper than ${MAX_DEPTH}`);
    const key = `${type}@${pos}`;
    if (this.seen.has(key)) return;
    this.seen.add(key);
    this.check(pos, 4, 4, `${type} table`);
    const vt = pos - this.view.getInt32(pos, true);
    this.check(vt, 4, 2, `${type} vtable`);
    const vtSize = this.view.getUint16(vt, true);
    const tableSize = this.view.getUint16(vt + 2, true);
    if (vtSize < 4 || vtSize % 2 !== 0) this.fail(`${type} vtable size ${vtSize} is invalid`);
    this.check(vt, vtSize, 2, `${type} vtable`);
    this.check(pos, tableSize, 4, `${type} table body`);
    if (tableSize < 4) this.fail(`${type} table size ${tableSize} is invalid`);
    const types = HEADER_SCHEMA[type];
    const nFields = (vtSize - 4) / 2;
    for (let id = 0; id < nFields; id++) {
      const off = this.view.getUint16(vt + 4 + 2 * id, true);
      if (off === 0) continue;
      const t = types[id];
      const size = t === undefined
        ? 1 // a field from a newer schema: only its presence inside the table is checked
        : t.startsWith("[") || t === "string" || HEADER_SCHEMA[t]
        ? 4
        : STRUCTS[t]
        ? STRUCTS[t].size
        : SCALAR_SIZE[t];
      const align = t === undefined ? 1 : STRUCTS[t] ? STRUCTS[t].align : size;
      if (off < 4 || off + size > tableSize) {
        this.fail(`${type} field ${id} offset ${off} is outside its ${tableSize}-byte table`);
      }
      this.check(pos + off, size, align, `${type} field ${id}`);
      if (t !== undefined) this.field(pos + off, t, `${type}.${id}`, depth);
    }
  }
}

/**
 * Verifies a header buffer (root offset, file identifier, and every object reachable from the
 * root). Throws InputError naming `file` on the first problem; returns normally when the
 * generated accessors can safely read every field.
 */
export function verifyHeaderBuffer(bytes: Uint8Array, file: string): void {
  const v = new Verifier(bytes, file);
  v.check(0, 8, 1, "root offset and identifier");
  const ident = String.fromCharCode(...bytes.subarray(4, 8));
  if (ident !== HEADER_IDENTIFIER) {
    v.fail(`file identifier is ${JSON.stringify(ident)}, expected "${HEADER_IDENTIFIER}"`);
  }
  v.table(v.deref(0, "root table"), HEADER_ROOT, 0);
}
