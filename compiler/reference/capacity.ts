/**
 * The Switch Transformer router in float64 (`capacity`): each token goes to the argmax of the
 * softmax of its router logits (the lowest index among ties, like torch.argmax), weighted by that
 * probability; each expert takes at most `capacity` tokens of the chunk routed together (one
 * sequence of a forward call), in position order, and refuses the rest. A refused token gets no
 * expert at all (its feed-forward output is zero): only its argmax expert can refuse it, no second
 * choice is tried. This is transformers' SwitchTransformersTop1Router at inference.
 *
 * In cached decoding each call routes one token, so nothing is refused there.
 *
 * @module
 */

import { softmax } from "./math.ts";
import type { Routing } from "./router.ts";

/** Routes n tokens from their router logits [n, E]; a refused token's routing is empty. */
export function capacityRoutes(
  logits: Float64Array,
  n: number,
  E: number,
  capacity: number,
): Routing[] {
  const taken = new Int32Array(E);
  const routes: Routing[] = [];
  for (let t = 0; t < n; t++) {
    const p = logits.slice(t * E, (t + 1) * E);
    softmax(p);
    let best = 0;
    for (let e = 1; e < E; e++) if (p[e] > p[best]) best = e;
    taken[best]++;
    routes.push(
      taken[best] <= capacity
        ? { experts: [best], weights: [p[best]] }
        : { experts: [], weights: [] },
    );
  }
  return routes;
}
