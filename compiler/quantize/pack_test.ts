import assert from "node:assert/strict";
import { packCodesFast } from "./common.ts";
import { packCodes, type QuantBits } from "../../schemas/packing.ts";

Deno.test("packCodesFast = packCodes (the format's definition) word for word", () => {
  let s = 12345;
  const rand = () => (s = (Math.imul(s, 1103515245) + 12345) >>> 0) / 2 ** 32;
  for (const bits of [2, 3, 4, 8] as QuantBits[]) {
    for (const [rows, cols] of [[3, 64], [5, 96], [2, 40], [1, 32]]) {
      const codes = new Uint8Array(rows * cols);
      for (let i = 0; i < codes.length; i++) codes[i] = Math.floor(rand() * (1 << bits));
      assert.deepEqual(
        packCodesFast(codes, rows, cols, bits),
        packCodes(codes, rows, cols, bits),
        `${bits}-bit ${rows}x${cols}`,
      );
    }
  }
  const bad = new Uint8Array(64);
  bad[17] = 4;
  assert.throws(() => packCodesFast(bad, 1, 64, 2), RangeError);
});
