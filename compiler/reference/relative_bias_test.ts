// T5 relative position buckets against transformers' _relative_position_bucket (values printed by
// transformers 5.18 for these relative positions), both directions, two table sizes.

import assert from "node:assert/strict";
import { relativeBiasRow, relativeBucket } from "./relative_bias.ts";

const RELATIVE = [
  -300,
  -128,
  -127,
  -65,
  -64,
  -33,
  -32,
  -17,
  -16,
  -9,
  -8,
  -7,
  -4,
  -3,
  -1,
  0,
  1,
  2,
  5,
  8,
  9,
  16,
  17,
  64,
  127,
  128,
  500,
];
const WANT: [boolean, number, number, number[]][] = [
  [true, 32, 128, [
    15,
    15,
    15,
    14,
    14,
    12,
    12,
    10,
    10,
    8,
    8,
    7,
    4,
    3,
    1,
    0,
    17,
    18,
    21,
    24,
    24,
    26,
    26,
    30,
    31,
    31,
    31,
  ]],
  [true, 8, 16, [3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 2, 2, 1, 0, 5, 6, 6, 7, 7, 7, 7, 7, 7, 7, 7]],
  [false, 32, 128, [
    31,
    31,
    31,
    26,
    26,
    21,
    21,
    16,
    16,
    9,
    8,
    7,
    4,
    3,
    1,
    0,
    0,
    0,
    0,
    0,
    0,
    0,
    0,
    0,
    0,
    0,
    0,
  ]],
  [false, 8, 16, [7, 7, 7, 7, 7, 7, 7, 7, 7, 6, 6, 5, 4, 3, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]],
];

Deno.test("relativeBucket equals transformers' buckets", () => {
  for (const [bidirectional, buckets, maxDistance, want] of WANT) {
    const got = RELATIVE.map((r) => relativeBucket(r, bidirectional, buckets, maxDistance));
    assert.deepEqual(got, want, `bidirectional ${bidirectional}, ${buckets}/${maxDistance}`);
  }
});

Deno.test("relativeBiasRow: table[bucket(key − query), head] per head and key", () => {
  const nh = 2;
  const table = Float64Array.from({ length: 8 * nh }, (_, i) => i + 0.5);
  const spec = {
    kind: "relative_bias" as const,
    buckets: 8,
    maxDistance: 16,
    bidirectional: false,
    ownerLayer: 0,
  };
  const out = new Float64Array(nh * 5);
  relativeBiasRow(out, { spec, table }, 4, 5, nh);
  for (let h = 0; h < nh; h++) {
    for (let j = 0; j < 5; j++) {
      assert.equal(out[h * 5 + j], table[relativeBucket(j - 4, false, 8, 16) * nh + h]);
    }
  }
});
