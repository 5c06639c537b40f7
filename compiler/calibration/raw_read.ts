/**
 * Reading a {@link RawLocation} on the thread that uses it: an expert job reads its matrices'
 * checkpoint bytes straight into the SIMD kernels' memory (resident.ts), instead of the calibration
 * pass reading them into a buffer of their own on the main thread and moving it over.
 *
 * @module
 */

import { InputError } from "../../schemas/errors.ts";
import { osError } from "../checkpoint/safetensors.ts";
import type { RawElements, RawLocation } from "../ir.ts";

/** Reads the `loc.length` bytes of `loc` into `into[0, loc.length)`; InputError if the file ends early. */
export function readLocationInto(loc: RawLocation, into: Uint8Array): void {
  if (into.length < loc.length) {
    throw new RangeError(`${loc.length} bytes of "${loc.name}" into ${into.length}`);
  }
  let file: Deno.FsFile;
  try {
    file = Deno.openSync(loc.path, { read: true });
  } catch (err) {
    throw osError(err, loc.path, "open");
  }
  try {
    file.seekSync(loc.offset, Deno.SeekMode.Start);
    let got = 0;
    while (got < loc.length) {
      const n = file.readSync(into.subarray(got, loc.length));
      if (n === null || n === 0) {
        throw new InputError(
          `unexpected end of file at byte ${loc.offset + got} ` +
            `(wanted ${loc.length} bytes at ${loc.offset})`,
          loc.path,
        );
      }
      got += n;
    }
  } catch (err) {
    if (err instanceof InputError || err instanceof RangeError) throw err;
    throw osError(err, loc.path, "read");
  } finally {
    file.close();
  }
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
