import assert from "node:assert/strict";
import { summarize } from "./bench_decode.ts";

Deno.test("bench decode summarize: median and min per field, requests without a decode figure skipped", () => {
  const s = summarize([
    { ttftMs: 30, decodeMsPerToken: 5 },
    { ttftMs: 10, decodeMsPerToken: null },
    { ttftMs: 20, decodeMsPerToken: 7 },
    { ttftMs: 40, decodeMsPerToken: 4 },
  ]);
  assert.deepEqual(s.median, { ttftMs: 25, decodeMsPerToken: 5 });
  assert.deepEqual(s.min, { ttftMs: 10, decodeMsPerToken: 4 });
  const none = summarize([{ ttftMs: 3, decodeMsPerToken: null }]);
  assert.equal(none.median.decodeMsPerToken, null);
  assert.equal(none.median.ttftMs, 3);
});
