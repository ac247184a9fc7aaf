// Health checking once per cluster (issue 4). Owned by the health engineer: this file is the contract
// the node is wired to; the implementation replaces the body.
import type { BallastNode } from "../node.js";
import type { Snapshot } from "../snapshot.js";

export interface HealthStatus {
  leader: string | null;
  isLeader: boolean;
  mode: "shared" | "local-fallback" | "standalone";
}

export class HealthManager {
  constructor(readonly node: BallastNode) {}

  /** Called once after the node's first start steps (store sync running). */
  start(): void {}

  /** Called on every applied snapshot (the set of services/backends to check may have changed). */
  onSnapshot(_snapshot: Snapshot): void {}

  /** Called when nodes/heartbeat keys change in the reconciler's cluster view. */
  onClusterChange(): void {}

  status(): HealthStatus {
    return { leader: this.node.reconciler.heartbeat?.leader ?? null, isLeader: false, mode: this.node.standalone ? "standalone" : "shared" };
  }

  async stop(): Promise<void> {}
}
