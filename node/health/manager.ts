// Health checking once per cluster (issue 4): composes the elected checker (leader.ts), local fallback
// (local.ts) and the verdict mode of this node. Verdicts always reach routing through the snapshot:
// shared ones from etcd, or in local fallback this node's own, through `routingVerdicts()`, which the
// reconciler calls on every build.
import type client from "prom-client";
import type { HealthHeartbeat, NodeRecord, Observation, Verdict } from "../../shared/codec.js";
import { formatDuration } from "../../shared/duration.js";
import type { KeySchema } from "../../shared/keys.js";
import type { NodeConfig } from "../../shared/schema.js";
import type { RecordTable } from "../control/records.js";
import type { Store } from "../control/store.js";
import type { Logger } from "../log.js";
import type { Snapshot, VerdictView } from "../model/snapshot.js";
import { type CheckTarget, checkTargetsOf } from "./checker.js";
import { HealthLeader } from "./leader.js";
import { LocalFallback } from "./local.js";
import { HealthMetrics } from "./metrics.js";
import type { NodeMode } from "./mode.js";
import { ObserverRole } from "./observer.js";
import { observersFor } from "./quorum.js";

/** The reconciler's cluster view, as health reads it. */
export interface ClusterView {
  readonly records: RecordTable;
  readonly heartbeat: HealthHeartbeat | null;
  readonly connected: boolean;
  readonly lastError: string | null;
  readonly snapshot: Snapshot | null;
  /** Node records (observer quorum picks observers among the ready ones). */
  readonly nodes: ReadonlyMap<string, NodeRecord>;
  /** Observer records as read from etcd. */
  readonly observations: { get(service: string, node: string): Observation | undefined };
  /** Rebuilds the snapshot from the current records (verdicts changed). */
  rebuild(): void;
}

/** What the health manager needs from the node that composes it. */
export interface HealthContext {
  readonly id: string;
  readonly standalone: boolean;
  readonly config: NodeConfig["health"];
  readonly leaseTtl: number;
  readonly store: Store;
  readonly keys: KeySchema;
  readonly log: Logger;
  readonly registry: client.Registry;
  readonly cluster: ClusterView;
  /** The data plane's descriptor budget: probes hold one descriptor each while they run. */
  readonly fds?: { reserve(name: string, fds: number): void };
  /** The verdict mode changed: the node republishes its record. */
  onMode(mode: NodeMode): void;
  /**
   * Observer quorum: this node's own probes fail a backend (`untilMs` > 0, renewed while they keep
   * failing) or no longer do (0): the node avoids it locally (the data plane's passive ejection).
   */
  avoid?(service: string, id: string, untilMs: number): void;
}

export interface HealthStatus {
  /** The node whose heartbeat is fresh (this node while it leads); null when there is none. */
  leader: string | null;
  isLeader: boolean;
  mode: NodeMode;
  /** Term of the leader (create revision of its election key). */
  term: string | null;
  /** Backends this node probes now (as leader or in local fallback). */
  checking: number;
  /** Why the node is in its mode, and since when (ms epoch). */
  modeReason: string;
  modeSince: number;
  /** Observer quorum: services whose backends this node probes as a (non-leader) observer. */
  observing: string[];
}

/**
 * Period of the leader's heartbeat writes: the idle cluster's only etcd revisions (issue 19: ≤ 12 per
 * minute; 10 with the default staleAfter of 10 s). A dead leader does not wait for it: its election
 * lease expires within etcd.leaseTtl and the next leader writes a heartbeat of a new term at once. The
 * heartbeat only has to prove the leader is not stuck, and a failed one is retried within 250 ms, so
 * 0.4 × staleAfter is left for a late write.
 */
export function heartbeatPeriod(staleAfterMs: number): number {
  return Math.max(50, Math.floor(staleAfterMs * 0.6));
}

/** Heartbeat as read from etcd: the codec's fields plus what this version's leader adds. */
interface HeartbeatSeen {
  leader: string;
  at: number;
  term: string;
  settled?: boolean;
}

export class HealthManager {
  readonly metrics: HealthMetrics;
  private readonly log: Logger;
  private readonly leader: HealthLeader;
  private local: LocalFallback | null = null;
  private targets: CheckTarget[] | null = null;
  private timer: NodeJS.Timeout | null = null;
  private stopped = false;
  private heartbeatKey = "";
  private heartbeatSeenAt = 0;
  /** Since when this node's store sync has been down (0 while connected). */
  private blindSince = 0;
  /** Time this node could not see etcd since the current heartbeat arrived (outages that ended). */
  private blindMs = 0;
  private absentSince = Date.now();
  private modeReason: string;
  private modeSince = Date.now();
  private currentMode: NodeMode;
  /** Observer quorum: probes the services this node observes for another leader (null standalone). */
  private readonly observer: ObserverRole | null;
  /** Ready node ids that may observe, sorted, and a signature of what chose the observer role's services. */
  private candidates: string[] = [];
  private candidatesKey = "";
  private observerKey = "";
  private targetsVersion = 0;
  /** Observers per service and K with this node leading (valid for `candidatesKey`). */
  private readonly leadObservers = new Map<string, readonly string[]>();
  /** Backends this node's own probes fail now, with how long one failure keeps them avoided. */
  private readonly ownDown = new Map<string, number>();
  private readonly targetByKey = new Map<string, CheckTarget>();

  constructor(private readonly node: HealthContext) {
    this.log = node.log.child({ module: "health" });
    this.metrics = new HealthMetrics(node.registry);
    this.metrics.registerQuorum(node.registry, () => node.cluster.snapshot);
    this.currentMode = node.standalone ? "standalone" : "shared";
    this.metrics.setMode(this.currentMode);
    this.modeReason = node.standalone ? "standalone: checks run in this process" : "starting";
    const staleAfter = node.config.staleAfter;
    this.leader = new HealthLeader({
      id: node.id,
      store: node.store,
      keys: node.keys,
      leaseTtl: node.leaseTtl,
      heartbeatMs: heartbeatPeriod(staleAfter),
      log: this.log,
      metrics: this.metrics,
      targets: () => this.targets,
      records: () => node.cluster.records,
      observersOf: (service, k) => this.observersLeading(service, k),
      observation: (service, id) => node.cluster.observations.get(service, id),
      onOwn: (key, verdict) => this.onOwn(key, verdict),
      onProbe: (target, outcome) => this.onProbe(target.key, outcome.ok, outcome.result),
    });
    this.observer = node.standalone
      ? null
      : new ObserverRole({
          id: node.id,
          store: node.store,
          keys: node.keys,
          leaseTtl: node.leaseTtl,
          log: this.log,
          metrics: this.metrics,
          onOwn: (key, verdict) => this.onOwn(key, verdict),
          onResult: (target, outcome) => this.onProbe(target.key, outcome.ok, outcome.result),
        });
  }

  /** The node's verdict mode now. */
  get mode(): NodeMode {
    return this.currentMode;
  }

  /** The verdicts that route: shared ones, overlaid by this node's own checks while in local fallback. */
  routingVerdicts(shared: ReadonlyMap<string, VerdictView>): ReadonlyMap<string, VerdictView> {
    return this.local === null ? shared : this.local.overlay(shared);
  }

  /** Called once after the node's first start steps (store sync running). */
  start(): void {
    this.absentSince = Date.now();
    this.leader.start();
    if (this.node.standalone) return;
    const every = Math.min(500, Math.max(20, Math.floor(this.node.config.staleAfter / 10)));
    this.timer = setInterval(() => this.evaluate(), every);
    this.timer.unref();
  }

  /** Called on every applied snapshot (the set of services/backends to check may have changed). */
  onSnapshot(snapshot: Snapshot): void {
    if (this.stopped) return;
    const { targets, changed } = checkTargetsOf(snapshot, this.targets);
    this.targets = targets;
    if (changed) {
      this.targetsVersion++;
      this.targetByKey.clear();
      for (const t of targets) this.targetByKey.set(t.key, t);
    }
    // Each probe holds one descriptor while it runs: keep that many out of the data plane's budget.
    this.node.fds?.reserve("probes", targets.length);
    if (changed) {
      this.leader.refresh();
      this.local?.refresh(targets, this.sharedSeeds());
    }
    this.leader.schedulePrune();
    if (changed) this.updateObserver();
  }

  /** Called when nodes/heartbeat keys change in the reconciler's cluster view. */
  onClusterChange(): void {
    this.evaluate();
  }

  /** Called when observer records of these services changed: the leader decides their backends again. */
  onObservations(services: ReadonlySet<string>): void {
    if (!this.stopped) this.leader.reevaluate(services);
  }

  status(): HealthStatus {
    const isLeader = this.leader.leading;
    const hb = this.node.cluster.heartbeat as HeartbeatSeen | null;
    const now = Date.now();
    const fresh = hb !== null && this.heartbeatAge(now) - this.blindGrace(now) <= this.node.config.staleAfter;
    return {
      leader: isLeader ? this.node.id : fresh ? hb.leader : null,
      isLeader,
      mode: this.currentMode,
      term: this.leader.termId ?? (fresh ? String(hb.term) : null),
      checking: this.leader.checking + (this.local?.checking ?? 0),
      modeReason: this.modeReason,
      modeSince: this.modeSince,
      observing: [...(this.observer?.observing() ?? [])].sort(),
    };
  }

  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    if (this.timer) clearInterval(this.timer);
    this.local?.stop();
    this.local = null;
    await this.observer?.stop();
    await this.leader.stop();
  }

  /** Observers of a service with this node leading: cached until the ready nodes change. */
  private observersLeading(service: string, k: number): readonly string[] {
    const key = `${service}\u0000${k}`;
    let out = this.leadObservers.get(key);
    if (out === undefined) {
      out = observersFor(service, this.node.id, this.candidates, k);
      this.leadObservers.set(key, out);
    }
    return out;
  }

  /**
   * Nodes that may observe: registered, ready, not draining. A change re-decides every backend
   * (observers rotate). A node in local fallback stays one: if it cannot reach etcd, its leased
   * records expire and it has no vote; if it can, its votes count.
   */
  private refreshCandidates(): void {
    const ids: string[] = [];
    for (const n of this.node.cluster.nodes.values()) if (n.ready && !n.draining) ids.push(n.id);
    ids.sort();
    const key = ids.join(",");
    if (key === this.candidatesKey) return;
    this.candidates = ids;
    this.candidatesKey = key;
    this.leadObservers.clear();
    this.leader.reevaluate(null);
  }

  /**
   * The services this node observes: those whose observers, with the leader of the last heartbeat,
   * include this node. None while it leads (its leader's checker probes everything), or before any
   * leader was heard of (nobody to report to).
   */
  private updateObserver(): void {
    if (this.observer === null || this.stopped) return;
    this.refreshCandidates();
    // The last leader heard of, even while its heartbeat is late: an observer keeps its states through
    // a failover (the new leader finds its votes in place) instead of starting over from unknown.
    // Local fallback does not stop it either: a heartbeat that is late on a loaded machine must not cost
    // the next leader its votes (a degraded quorum, then a rewrite of every verdict).
    const leader = this.leader.leading ? null : (this.node.cluster.heartbeat?.leader ?? null);
    const key = `${leader}|${this.candidatesKey}|${this.targetsVersion}`;
    if (key === this.observerKey) return;
    this.observerKey = key;
    const services = new Set<string>();
    if (leader !== null && leader !== this.node.id && this.targets !== null) {
      const seen = new Set<string>();
      for (const t of this.targets) {
        if (seen.has(t.service)) continue;
        seen.add(t.service);
        if (t.settings.observers > 1 && observersFor(t.service, leader, this.candidates, t.settings.observers).includes(this.node.id)) services.add(t.service);
      }
    }
    this.observer.set(this.targets ?? [], services);
  }

  /** This node's own state of a backend changed: avoid it locally while its own probes fail it. */
  private onOwn(key: string, verdict: Verdict | null): void {
    const t = this.targetByKey.get(key);
    const slash = key.indexOf("/");
    const service = key.slice(0, slash);
    const id = key.slice(slash + 1);
    if (verdict?.state === "down" && t !== undefined && t.settings.observers > 1) {
      // Held for two intervals past each failing probe: a probe that runs late does not end it.
      const hold = 2 * t.settings.interval + t.settings.timeout;
      this.ownDown.set(key, hold);
      this.node.avoid?.(service, id, Date.now() + hold);
    } else if (this.ownDown.delete(key)) this.node.avoid?.(service, id, 0);
  }

  private onProbe(key: string, ok: boolean, result: string): void {
    if (ok || result === "local") return;
    const hold = this.ownDown.get(key);
    if (hold === undefined) return;
    const slash = key.indexOf("/");
    this.node.avoid?.(key.slice(0, slash), key.slice(slash + 1), Date.now() + hold);
  }

  /** Milliseconds since the current heartbeat, measured on this node's clock where it can be. */
  private heartbeatAge(now: number): number {
    const hb = this.node.cluster.heartbeat;
    if (hb === null) {
      if (this.heartbeatKey !== "") {
        this.heartbeatKey = "";
        this.absentSince = now;
      }
      return Number.POSITIVE_INFINITY;
    }
    const key = `${hb.leader}|${hb.term}|${hb.at}`;
    if (key !== this.heartbeatKey) {
      this.heartbeatKey = key;
      // Blindness before this value no longer matters: it is what the leader wrote after it.
      this.blindMs = 0;
      if (this.blindSince !== 0) this.blindSince = now;
      // A new value counts from when it arrived (immune to small clock skew between nodes), unless
      // its own timestamp is already past the bound (a dead leader's last heartbeat, read at start).
      this.heartbeatSeenAt = now - hb.at > this.node.config.staleAfter ? hb.at : now;
    }
    return now - this.heartbeatSeenAt;
  }

  /**
   * Time this node could not see etcd since the current heartbeat arrived, counted up to one lease
   * TTL. A node that cannot read etcd cannot tell a stuck leader from its own blindness, and the
   * leader's term outlives an etcd outage shorter than its lease TTL (it retries its heartbeat, and
   * etcd keeps its lease): such an outage must not send every node to local fallback at once
   * (issue 19: a 4 s etcd restart sent 40 of 40 nodes there). Longer ones still do, one lease TTL later.
   */
  private blindGrace(now: number): number {
    const r = this.node.cluster;
    if (!r.connected) {
      if (this.blindSince === 0) this.blindSince = now;
    } else if (this.blindSince !== 0) {
      this.blindMs += now - this.blindSince;
      this.blindSince = 0;
    }
    const blind = this.blindMs + (this.blindSince === 0 ? 0 : now - this.blindSince);
    return Math.min(blind, this.node.leaseTtl * 1_000);
  }

  /** Switches between shared verdicts and local fallback; runs on a timer and on heartbeat changes. */
  private evaluate(): void {
    try {
      this.evaluateNow();
      this.updateObserver();
    } catch (err) {
      // A health bug must not take the node (or the store sync that called us) down with it.
      this.log.error({ err: (err as Error).message }, "verdict mode evaluation failed");
    }
  }

  private evaluateNow(): void {
    if (this.stopped || this.node.standalone) return;
    const now = Date.now();
    const staleAfter = this.node.config.staleAfter;
    const r = this.node.cluster;
    const hb = r.heartbeat as HeartbeatSeen | null;
    const age = this.heartbeatAge(now);
    const grace = this.blindGrace(now);
    let fresh: boolean;
    let why: string;
    if (hb !== null) {
      fresh = age - grace <= staleAfter;
      const blind = grace > 0 ? `, ${formatDuration(Math.round(grace))} of it without etcd` : "";
      why = fresh
        ? `leader ${hb.leader} heartbeat is fresh (term ${hb.term}${blind})`
        : `leader ${hb.leader} heartbeat is ${formatDuration(Math.round(age))} old${blind} (staleAfter ${formatDuration(staleAfter)}, etcd.leaseTtl ${this.node.leaseTtl}s)`;
    } else if (!r.connected && r.lastError !== null) {
      fresh = false;
      why = `no leader heartbeat and the store is unreachable (${r.lastError})`;
    } else {
      fresh = now - this.absentSince <= staleAfter;
      why = `no leader heartbeat for ${formatDuration(Math.round(now - this.absentSince))}`;
    }
    if (this.currentMode === "shared" && fresh && hb !== null) this.modeReason = why;
    else if (this.currentMode === "shared" && !fresh) this.enterFallback(why);
    // Back only on a heartbeat whose leader has settled, i.e. whose verdicts are its own observations
    // (a new leader seeded from old verdicts may not have seen yet what this node's checks saw).
    // An absent heartbeat only delays a fallback; it never ends one.
    else if (this.currentMode === "local-fallback" && fresh && hb !== null && hb.settled !== false) this.leaveFallback(why);
  }

  private enterFallback(reason: string): void {
    this.local = new LocalFallback({ id: this.node.id, log: this.log, metrics: this.metrics, changed: () => this.rebuild() });
    const local = this.local;
    this.setMode("local-fallback", reason);
    if (this.targets) local.refresh(this.targets, this.sharedSeeds());
    this.rebuild();
  }

  private leaveFallback(reason: string): void {
    this.local?.stop();
    this.local = null;
    this.setMode("shared", reason);
    this.rebuild();
  }

  private setMode(mode: NodeMode, reason: string): void {
    const from = this.currentMode;
    this.currentMode = mode;
    this.modeReason = reason;
    this.modeSince = Date.now();
    this.metrics.setMode(mode);
    this.metrics.modeTransitions.inc({ mode });
    if (mode === "local-fallback") this.log.warn({ from, to: mode, reason }, "verdict mode local-fallback: routing by this node's own checks");
    else this.log.info({ from, to: mode, reason }, `verdict mode ${mode}: routing by the leader's verdicts`);
    this.node.onMode(mode);
  }

  /** Re-applies verdicts to routing; not before the first snapshot (an empty one would unbind listeners). */
  private rebuild(): void {
    if (!this.stopped && this.node.cluster.snapshot !== null) this.node.cluster.rebuild();
  }

  /** Shared verdicts as seeds, read only if a new target needs one. */
  private sharedSeeds(): (key: string) => Verdict | undefined {
    let shared: ReadonlyMap<string, Verdict> | null = null;
    return (key) => {
      shared ??= this.node.cluster.records.sharedVerdicts();
      return shared.get(key);
    };
  }
}
