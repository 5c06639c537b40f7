/**
 * Reading a {@link RawLocation} on the thread that uses it: an expert job reads its matrices'
 * checkpoint bytes straight into the SIMD kernels' memory (resident.ts), instead of the calibration
 * pass reading them into a buffer of their own on the main thread and moving it over.
 *
 * @module
 */

import { readIntoSync } from "../checkpoint/safetensors.ts";
import type { RawElements, RawLocation } from "../ir.ts";

/** Reads the `loc.length` bytes of `loc` into `into[0, loc.length)`; InputError if the file ends early. */
export function readLocationInto(loc: RawLocation, into: Uint8Array): void {
  if (into.length < loc.length) {
    throw new RangeError(`${loc.length} bytes of "${loc.name}" into ${into.length}`);
  }
  readIntoSync(loc.path, loc.offset, into.subarray(0, loc.length));
}

/** The raw elements `loc` points at, read into a buffer of their own. */
export function readLocation(loc: RawLocation): RawElements {
  const bytes = new Uint8Array(loc.length);
  readLocationInto(loc, bytes);
  return rawAt(loc, bytes);
}

/** `loc`'s fields with its bytes, as `readRawRows` returns them. */
export function rawAt(loc: RawLocation, bytes: Uint8Array): RawElements {
  const { dtype, name, path: file, start, allowNonFinite } = loc;
  return { bytes, dtype, name, file, start, allowNonFinite };
}
