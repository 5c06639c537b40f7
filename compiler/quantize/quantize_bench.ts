/**
 * Throughput of the quantizers on a 1024×4096 f32 matrix (16 MiB), reported by `deno bench` and,
 * when run directly (`deno run quantize_bench.ts`), as MB/s of f32 input.
 *
 * @module
 */

import { dequantize } from "../../schemas/packing.ts";
import { quantizeMatrix } from "./mod.ts";
import { gaussianMatrix } from "./test_util.ts";

const [ROWS, COLS] = [1024, 4096];
const w = gaussianMatrix(ROWS * COLS, 0.02, 1);
const cases = [
  { name: "rtn 4-bit g64", opts: { bits: 4, groupSize: 64, method: "rtn" } },
  { name: "rtn-sym 4-bit per-channel", opts: { bits: 4, groupSize: COLS, method: "rtn-sym" } },
  { name: "hqq 4-bit g64", opts: { bits: 4, groupSize: 64, method: "hqq" } },
  { name: "hqq 2-bit g64", opts: { bits: 2, groupSize: 64, method: "hqq" } },
] as const;

for (const c of cases) {
  Deno.bench(c.name, () => {
    quantizeMatrix(w, ROWS, COLS, c.opts);
  });
}

if (import.meta.main) {
  const mb = (ROWS * COLS * 4) / 1e6;
  for (const c of cases) {
    quantizeMatrix(w, ROWS, COLS, c.opts); // warm up
    const t0 = performance.now();
    const t = quantizeMatrix(w, ROWS, COLS, c.opts);
    const ms = performance.now() - t0;
    const t1 = performance.now();
    dequantize(t);
    const dq = performance.now() - t1;
    console.log(
      `${c.name}: ${ms.toFixed(0)} ms, ${(mb / (ms / 1000)).toFixed(1)} MB/s` +
        ` (dequantize ${dq.toFixed(0)} ms)`,
    );
  }
}
