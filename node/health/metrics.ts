// Health metrics, registered on the node's registry (so they carry its `node` label): checks by
// result, check latency and schedule lag, verdict changes, fenced writes, leadership and mode.
import client from "prom-client";
import { type ChildCache, childCache, collectedGauge } from "../collect.js";
import type { Snapshot, VerdictView } from "../model/snapshot.js";
import type { CheckResult } from "./checks.js";
import type { NodeMode } from "./mode.js";

const MODES: readonly NodeMode[] = ["standalone", "shared", "local-fallback"];

export type FencedWriteResult = "ok" | "refused" | "error";

export class HealthMetrics {
  readonly checks: client.Counter<"service" | "result">;
  readonly checkSeconds: client.Histogram<"service">;
  readonly lagSeconds: client.Histogram;
  readonly verdictChanges: client.Counter<"service" | "state" | "source">;
  readonly fencedWrites: client.Counter<"result">;
  readonly unwrittenVerdicts: client.Gauge;
  readonly leader: client.Gauge;
  readonly mode: client.Gauge<"mode">;
  readonly modeTransitions: client.Counter<"mode">;
  readonly checking: client.Gauge<"role">;
  private readonly seconds: ChildCache<"service">;
  /** Results seen per service, so forgetService removes exactly the series that exist. */
  private readonly results = new Map<string, Set<CheckResult>>();

  constructor(registry: client.Registry) {
    const registers = [registry];
    this.checks = new client.Counter({ name: "ballast_health_checks_total", help: "Health probes run by this node, by service and result.", labelNames: ["service", "result"], registers });
    this.checkSeconds = new client.Histogram({
      name: "ballast_health_check_seconds",
      help: "Duration of health probes.",
      labelNames: ["service"],
      buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
      registers,
    });
    this.lagSeconds = new client.Histogram({
      name: "ballast_health_check_lag_seconds",
      help: "How late probes start against their schedule (a growing tail means the checker falls behind).",
      buckets: [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1],
      registers,
    });
    this.verdictChanges = new client.Counter({
      name: "ballast_health_verdict_changes_total",
      help: "Verdict transitions made by this node: source=shared as health leader (written to etcd), source=local in local fallback.",
      labelNames: ["service", "state", "source"],
      registers,
    });
    this.fencedWrites = new client.Counter({ name: "ballast_health_fenced_writes_total", help: "Verdict and heartbeat writes as health leader, by result (refused = fenced out).", labelNames: ["result"], registers });
    this.unwrittenVerdicts = new client.Gauge({ name: "ballast_health_unwritten_verdicts", help: "Verdicts this node decided as leader whose write did not reach etcd yet (retried while its term lasts).", registers });
    this.leader = new client.Gauge({ name: "ballast_health_leader", help: "1 while this node is the health-check leader.", registers });
    this.mode = new client.Gauge({ name: "ballast_health_mode", help: "1 for the verdict mode this node routes by (shared, local-fallback, standalone).", labelNames: ["mode"], registers });
    this.modeTransitions = new client.Counter({ name: "ballast_health_mode_transitions_total", help: "Switches of the verdict mode, by the mode entered.", labelNames: ["mode"], registers });
    this.checking = new client.Gauge({ name: "ballast_health_checked_backends", help: "Backends this node probes now, as leader or in local fallback.", labelNames: ["role"], registers });
    this.leader.set(0);
    this.seconds = childCache(this.checkSeconds);
  }

  /**
   * Observer quorum (issue 17), from the routing snapshot at scrape time: each backend's votes by
   * kind, whether its verdict is partial, whether the quorum was degraded (the leader alone decided).
   */
  registerQuorum(registry: client.Registry, snapshot: () => Snapshot | null): void {
    const each = (fn: (service: string, backend: string, v: VerdictView) => void) => {
      const snap = snapshot();
      if (snap === null) return;
      for (const svc of snap.services.values()) for (const b of svc.backends) if (b.verdict?.votes !== undefined) fn(svc.name, b.id, b.verdict);
    };
    collectedGauge({
      name: "ballast_backend_verdict_votes",
      help: "Observer quorum: observers of the backend's shared verdict by vote (pass, fail, none = no observation yet, local = short of local resources).",
      labelNames: ["service", "backend", "vote"],
      registry,
      read: (emit) =>
        each((service, backend, v) => {
          const n = { pass: 0, fail: 0, none: 0, local: 0 };
          for (const vote of Object.values(v.votes ?? {})) n[vote]++;
          for (const [vote, count] of Object.entries(n)) emit({ service, backend, vote }, count);
        }),
    });
    collectedGauge({
      name: "ballast_backend_verdict_partial",
      help: "Observer quorum: 1 while the backend is up but fails from a minority of its observers (it stays in rotation; those nodes avoid it).",
      labelNames: ["service", "backend"],
      registry,
      read: (emit) => each((service, backend, v) => emit({ service, backend }, v.partial ? 1 : 0)),
    });
    collectedGauge({
      name: "ballast_backend_verdict_quorum_degraded",
      help: "Observer quorum: 1 while fewer observers voted than a majority, so the leader alone decided the backend's verdict.",
      labelNames: ["service", "backend"],
      registry,
      read: (emit) => each((service, backend, v) => emit({ service, backend }, v.quorum === "degraded" ? 1 : 0)),
    });
  }

  setMode(mode: NodeMode): void {
    for (const m of MODES) this.mode.set({ mode: m }, m === mode ? 1 : 0);
  }

  /** Drops the series of a service that is gone (its probes, latency and verdict changes). */
  forgetService(service: string): void {
    for (const result of this.results.get(service) ?? []) this.checks.remove({ service, result });
    this.results.delete(service);
    this.seconds.forget(service);
    for (const state of ["up", "down"]) for (const source of ["shared", "local"]) this.verdictChanges.remove({ service, state, source });
  }

  observe(service: string, result: CheckResult, seconds: number, lagMs: number): void {
    this.checks.inc({ service, result });
    let seen = this.results.get(service);
    if (seen === undefined) {
      seen = new Set();
      this.results.set(service, seen);
    }
    seen.add(result);
    this.seconds(service).observe(seconds);
    this.lagSeconds.observe(lagMs / 1000);
  }
}
