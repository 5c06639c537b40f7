import assert from "node:assert/strict";
import { GenerationClock, generationRates } from "./rates.ts";

/**
 * Arrival times of a simulated batched engine: prefill `p` ms, then one decode step every `s`
 * ms, each batch of `b` ids read back in `r` ms after its last step (steps wait for nothing).
 */
function simulate(n: number, b: number, p: number, s: number, r: number): number[] {
  const arrivals: number[] = [];
  let t = p; // the first id is sampled by the prefill
  for (let done = 0; done < n;) {
    const count = Math.min(b, n - done);
    t += (done === 0 ? count - 1 : count) * s + r;
    for (let i = 0; i < count; i++) arrivals.push(t);
    done += count;
  }
  return arrivals;
}

Deno.test("generationRates: the decode rate of a batched engine is its steady delivery rate", () => {
  for (const [n, b, p, s, r] of [[64, 8, 120, 5, 10], [208, 16, 40, 3.5, 12], [36, 4, 7, 9, 1]]) {
    const arrivals = simulate(n, b, p, s, r);
    const rates = generationRates({
      requestMs: 0,
      firstMs: arrivals[0],
      lastMs: arrivals[n - 1],
      tokens: n,
      firstBatch: b,
    });
    // Every batch after the first costs b steps and one readback: b ids per (b·s + r) ms.
    // (n − b is a whole number of batches in these cases.)
    assert.equal((n - b) % b, 0);
    const steady = b / ((b * s + r) / 1000);
    assert.ok(Math.abs(rates.decodeTokensPerS! - steady) < 1e-9 * steady, `${n}/${b}`);
    assert.ok(Math.abs(rates.decodeMsPerToken! - (b * s + r) / b) < 1e-9);
    assert.equal(rates.ttftMs, p + (b - 1) * s + r);
    assert.equal(rates.totalMs, arrivals[n - 1]);
    assert.ok(Math.abs(rates.endToEndTokensPerS - n / (arrivals[n - 1] / 1000)) < 1e-9);
    // The old formula, (n − 1) ids over the same span, overstates by (n − 1) / (n − b).
    const naive = (n - 1) / ((arrivals[n - 1] - arrivals[0]) / 1000);
    assert.ok(Math.abs(naive / rates.decodeTokensPerS! - (n - 1) / (n - b)) < 1e-9);
  }
});

Deno.test("generationRates: one-by-one ids; a generation within the first batch has no decode rate", () => {
  const one = generationRates({
    requestMs: 10,
    firstMs: 60,
    lastMs: 160,
    tokens: 11,
    firstBatch: 1,
  });
  assert.equal(one.decodeTokensPerS, 100);
  assert.equal(one.ttftMs, 50);
  const early = generationRates({
    requestMs: 0,
    firstMs: 90,
    lastMs: 91,
    tokens: 3,
    firstBatch: 8,
  });
  assert.equal(early.decodeTokensPerS, null);
  assert.equal(early.decodeMsPerToken, null);
  assert.ok(Math.abs(early.endToEndTokensPerS - 3 / 0.091) < 1e-9);
  assert.throws(() =>
    generationRates({ requestMs: 0, firstMs: 1, lastMs: 1, tokens: 0, firstBatch: 1 })
  );
});

Deno.test("GenerationClock records first and last arrivals", () => {
  const c = new GenerationClock(100);
  assert.equal(c.rates(1), null);
  for (const t of [150, 150, 170, 190]) c.received(t);
  const r = c.rates(2)!;
  assert.equal(c.tokens, 4);
  assert.equal(r.ttftMs, 50);
  assert.equal(r.decodeMsPerToken, 20);
});
