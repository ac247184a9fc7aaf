// Smooth weighted round-robin (nginx ngx_http_upstream_get_peer): each pick adds every backend's
// weight to its running score, takes the highest, and subtracts the total from the winner.
import type { BackendTarget, Exclude, Picker, PickerFactory } from "./algorithm.js";

export class RoundRobinPicker implements Picker {
  readonly algorithm = "round-robin" as const;
  readonly targets: readonly BackendTarget[];
  private readonly weights: Float64Array;
  private readonly current: Float64Array;

  constructor(targets: readonly BackendTarget[]) {
    this.targets = targets.filter((t) => t.weight > 0 && Number.isFinite(t.weight));
    this.weights = Float64Array.from(this.targets, (t) => t.weight);
    this.current = new Float64Array(this.targets.length);
  }

  pick(_hash: number, exclude: Exclude | null): BackendTarget | null {
    const { targets, weights, current } = this;
    let best = -1;
    let total = 0;
    for (let i = 0; i < targets.length; i++) {
      // As nginx: an excluded backend sits this pick out and neither gains nor loses score.
      if (exclude?.(targets[i])) continue;
      current[i] += weights[i];
      total += weights[i];
      if (best < 0 || current[i] > current[best]) best = i;
    }
    if (best < 0) return null;
    current[best] -= total;
    return targets[best];
  }

  peek(_hash: number, exclude: Exclude | null): BackendTarget | null {
    const { targets, weights, current } = this;
    let best = -1;
    let bestScore = 0;
    for (let i = 0; i < targets.length; i++) {
      if (exclude?.(targets[i])) continue;
      const score = current[i] + weights[i];
      if (best < 0 || score > bestScore) {
        best = i;
        bestScore = score;
      }
    }
    return best < 0 ? null : targets[best];
  }
}

export const roundRobin: PickerFactory = {
  name: "round-robin",
  hashSourceOnly: false,
  build: (targets) => new RoundRobinPicker(targets),
};
