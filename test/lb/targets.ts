// Backend targets for picker tests: only id, weight and the live active count matter to the algorithms.
import type { BackendTarget } from "../../node/lb/algorithm.js";

export function target(id: string, weight = 1, active = 0): BackendTarget {
  return { id, host: "127.0.0.1", port: 0, weight, zone: "z", label: `${id}:0`, stats: { active, ejectedUntil: 0 } };
}

export function targets(count: number, weight = 1): BackendTarget[] {
  return Array.from({ length: count }, (_, i) => target(`backend-${String(i).padStart(5, "0")}`, weight));
}

/** Deterministic Fisher–Yates shuffle (xorshift32), so a failing order can be reproduced. */
export function shuffled<T>(items: readonly T[], seed: number): T[] {
  const out = items.slice();
  let x = seed >>> 0 || 1;
  for (let i = out.length - 1; i > 0; i--) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    const j = x % (i + 1);
    [out[i], out[j]] = [out[j], out[i]];
  }
  return out;
}
