// Weighted least connections: the backend with the fewest active connections per unit of weight,
// counting the connection about to be placed, so an idle heavy backend beats an idle light one.
import type { BackendTarget, Exclude, Picker, PickerFactory } from "./algorithm.js";

export class LeastConnPicker implements Picker {
  readonly algorithm = "least-conn" as const;
  readonly targets: readonly BackendTarget[];
  /** Where the next scan starts; rotates so equally loaded backends take turns instead of the first always winning. */
  private start = 0;

  constructor(targets: readonly BackendTarget[]) {
    this.targets = targets.filter((t) => t.weight > 0 && Number.isFinite(t.weight));
  }

  pick(_hash: number, exclude: Exclude | null): BackendTarget | null {
    const n = this.targets.length;
    if (n === 0) return null;
    const start = this.start;
    this.start = start + 1 === n ? 0 : start + 1;
    return this.scan(start, exclude);
  }

  peek(_hash: number, exclude: Exclude | null): BackendTarget | null {
    return this.targets.length === 0 ? null : this.scan(this.start, exclude);
  }

  private scan(start: number, exclude: Exclude | null): BackendTarget | null {
    const { targets } = this;
    const n = targets.length;
    let best: BackendTarget | null = null;
    let bestScore = Number.POSITIVE_INFINITY;
    for (let k = 0, i = start; k < n; k++) {
      const t = targets[i];
      if (++i === n) i = 0;
      if (exclude?.(t)) continue;
      const score = (t.stats.active + 1) / t.weight;
      if (best === null || score < bestScore) {
        best = t;
        bestScore = score;
      }
    }
    return best;
  }
}

export const leastConn: PickerFactory = {
  name: "least-conn",
  hashSourceOnly: false,
  build: (targets) => new LeastConnPicker(targets),
};
