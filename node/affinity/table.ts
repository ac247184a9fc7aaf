// Session affinity shared by the whole cluster (issue 5). Owned by the affinity engineer: this file is
// the contract the node is wired to; the implementation replaces the body.
import type { AffinitySink } from "../control/reconciler.js";
import type { KeyValue, StoreEvent } from "../control/store.js";
import type { AffinityHook } from "../data/router.js";
import type { BallastNode } from "../node.js";
import type { ServiceState, Target } from "../snapshot.js";

export class AffinityTable implements AffinityHook, AffinitySink {
  constructor(readonly node: BallastNode) {}

  lookup(_svc: ServiceState, _ip: string, _now: number): Target | null {
    return null;
  }

  record(_svc: ServiceState, _ip: string, _target: Target, _now: number): void {}

  reset(_kvs: KeyValue[]): void {}

  events(_events: StoreEvent[]): void {}

  start(): void {}

  /** Entry counts per service, for /api/state, `ballast status` and the status page. */
  counts(): Record<string, number> {
    return {};
  }

  async stop(): Promise<void> {}
}
