// Power of two random choices: sample two distinct backends, keep the less loaded per unit of weight.
// Near least-conn balance at O(1) per pick, and nodes that see stale counts do not all herd to one backend.
import type { BackendTarget, Exclude, Picker, PickerFactory } from "./algorithm.js";

function load(t: BackendTarget): number {
  return (t.stats.active + 1) / t.weight;
}

export class P2cPicker implements Picker {
  readonly algorithm = "p2c" as const;
  readonly targets: readonly BackendTarget[];
  /** xorshift32 state; never 0. Seeded randomly per build so nodes do not sample in lockstep. */
  private state: number;

  constructor(targets: readonly BackendTarget[], seed = (Math.random() * 0x100000000) >>> 0) {
    this.targets = targets.filter((t) => t.weight > 0 && Number.isFinite(t.weight));
    this.state = seed >>> 0 || 0x9e3779b9;
  }

  private next(): number {
    let x = this.state;
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    this.state = x >>> 0;
    return this.state;
  }

  /** The pick the next real connection would make (the same draws), with the generator state put back. */
  peek(hash: number, exclude: Exclude | null): BackendTarget | null {
    const saved = this.state;
    const t = this.pick(hash, exclude);
    this.state = saved;
    return t;
  }

  pick(_hash: number, exclude: Exclude | null): BackendTarget | null {
    const { targets } = this;
    const n = targets.length;
    if (n === 0) return null;
    if (n === 1) return exclude?.(targets[0]) ? null : targets[0];

    const ia = this.next() % n;
    let ib = this.next() % (n - 1);
    if (ib >= ia) ib++;
    const a = targets[ia];
    const b = targets[ib];
    if (exclude === null || (!exclude(a) && !exclude(b))) return load(b) < load(a) ? b : a;

    // A sample was excluded: compare the first two acceptable backends from a random start instead,
    // so the answer is null only when every backend is excluded.
    let first: BackendTarget | null = null;
    for (let k = 0, i = this.next() % n; k < n; k++) {
      const t = targets[i];
      if (++i === n) i = 0;
      if (exclude(t)) continue;
      if (first === null) first = t;
      else return load(t) < load(first) ? t : first;
    }
    return first;
  }
}

export const p2c: PickerFactory = {
  name: "p2c",
  hashSourceOnly: false,
  build: (targets) => new P2cPicker(targets),
};
