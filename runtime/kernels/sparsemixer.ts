/**
 * PhiMoE's sparsemixer routing (inference form) as the WGSL `fn chooseExperts(t: u32, li: u32)` of
 * the routing kernels (kernels/moe.ts picks it when the routing key has a jitter; all lanes of the
 * workgroup call it together, lane 0 routes, the others wait at its barrier): two rounds, each
 * taking the argmax m of the logits not yet chosen (ties to the lower index) with weight
 * 1 / Σ exp(s − m) over the experts not masked, where expert e is masked when
 * (m − s) > 2·jitter·max(|s|, m) (the reference's (m − s) / max(|s|, m) > 2·jitter, without the
 * division). compiler/reference/sparsemixer.ts is the float64 original.
 *
 * @module
 */

import { f, u } from "./kernel.ts";

/** `fn chooseExperts(t: u32, li: u32)` routing token t to 2 of `numExperts` experts. */
export function sparsemixerChooseFunction(numExperts: number, jitter: number): string {
  const E = u(numExperts);
  return `
fn chooseExperts(t: u32, li: u32) {
  if (li == 0u) { sparsemixerChoose(t); }
  workgroupBarrier();
}

fn sparsemixerChoose(t: u32) {
  let base = t * ${E};
  var skip = ${E};
  for (var k = 0u; k < 2u; k++) {
    var best = 0u;
    var m = -3.4e38;
    for (var e = 0u; e < ${E}; e++) {
      let s = routerLogits[base + e];
      if (e != skip && s > m) { m = s; best = e; }
    }
    var z = 0.0;
    for (var e = 0u; e < ${E}; e++) {
      let s = routerLogits[base + e];
      if (e != skip && !(m - s > ${f(2 * jitter)} * max(abs(s), m))) { z += exp(s - m); }
    }
    expertIds[t * 2u + k] = best;
    expertWeights[t * 2u + k] = 1.0 / z;
    skip = best;
  }
}`;
}
