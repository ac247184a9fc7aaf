// Local fallback: while shared verdicts are stale (no fresh leader heartbeat), this node checks its
// backends itself and routes by its own results. Starts from the shared verdicts, so nothing flaps.
import type { Verdict } from "../../shared/codec.js";
import type { Logger } from "../log.js";
import type { VerdictView } from "../model/snapshot.js";
import { Checker, type CheckTarget } from "./checker.js";
import type { Probe } from "./checks.js";
import type { HealthMetrics } from "./metrics.js";

export interface LocalContext {
  readonly id: string;
  readonly log: Logger;
  readonly metrics: HealthMetrics;
  readonly probe?: Probe;
  /** Local verdicts changed: rebuild the snapshot (called at most once per tick). */
  changed(): void;
}

export class LocalFallback {
  private readonly checker: Checker;
  private scheduled = false;
  private stopped = false;

  constructor(private readonly ctx: LocalContext) {
    this.checker = new Checker(
      ctx.id,
      {
        onChange: (target, verdict) => {
          ctx.metrics.verdictChanges.inc({ service: target.service, state: verdict.state, source: "local" });
          ctx.log.info({ service: target.service, backend: target.id, state: verdict.state, reason: verdict.reason, count: verdict.count }, `backend ${verdict.state} (local check)`);
          this.schedule();
        },
        onResult: (target, outcome, seconds, lagMs) => ctx.metrics.observe(target.service, outcome.result, seconds, lagMs),
      },
      ctx.probe,
      // Spread: nodes that fall back together (etcd gone for all) start each backend's probes at their
      // own phase of its interval, not all at the same instant (issue 19).
      ctx.id,
    );
  }

  get checking(): number {
    return this.checker.size;
  }

  /** New targets start from `seedOf` (the shared verdicts as last seen). */
  refresh(targets: readonly CheckTarget[], seedOf: (key: string) => Verdict | undefined): void {
    this.checker.setTargets(targets, seedOf);
    this.ctx.metrics.checking.set({ role: "local" }, this.checker.size);
  }

  /** The verdict source while in fallback: the shared verdicts with this node's own laid over them. */
  overlay(shared: ReadonlyMap<string, VerdictView>): ReadonlyMap<string, VerdictView> {
    const out = new Map(shared);
    for (const [key, v] of this.checker.verdicts()) out.set(key, { ...v, source: "local" });
    return out;
  }

  stop(): void {
    this.stopped = true;
    this.checker.stop();
    this.ctx.metrics.checking.set({ role: "local" }, 0);
  }

  private schedule(): void {
    if (this.scheduled) return;
    this.scheduled = true;
    queueMicrotask(() => {
      this.scheduled = false;
      if (!this.stopped) this.ctx.changed();
    });
  }
}
