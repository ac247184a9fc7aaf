// The primary's side of `workers: N` (issue 18): the node's "proxy" forwarder when the proxy runs in
// N forked data-plane workers. The primary stays the node's one control plane; this class forks the
// workers (node:cluster), hands each snapshot's input to them, keeps the node's affinity table and the
// workers' copies in step, and sums the workers' counters into the node's own StatsRegistry, so
// metrics, /api/state and the status page keep reading one node. It extends DataPlane so that every
// reader of `node.plane` (state, metrics, drain, route explain) works unchanged; the primary itself
// opens no proxy listener.
//
// TCP listeners are shared through node:cluster: the primary holds the listening socket and hands each
// accepted connection to a worker in turn (SCHED_RR), so a worker that dies takes only its own
// connections. UDP: one worker per service binds it (udpOwner), see protocol.ts.
import cluster, { type Worker } from "node:cluster";
import { fileURLToPath } from "node:url";
import type client from "prom-client";
import type { NodeConfig } from "../../shared/schema.js";
import { collectedGauge } from "../collect.js";
import { isHostName } from "../control/resolver.js";
import { DataPlane, type PlaneDeps, type PlaneOptions } from "../data/plane.js";
import type { TcpListener } from "../data/tcp.js";
import type { Logger } from "../log.js";
import type { ForwarderServiceStatus } from "../model/forwarder.js";
import { forwardingOf } from "../model/forwarder.js";
import type { ResolvedName, ServiceState, Snapshot, SnapshotInput, Target, VerdictView } from "../model/snapshot.js";
import type { FromWorker, ToWorker, WireCounters, WireEntry, WireInput, WireListener, WireStats } from "./protocol.js";
import { udpOwner } from "./protocol.js";

/** The affinity table's public methods the pool uses (node/affinity/table.ts). */
export interface PoolAffinity {
  record(svc: ServiceState, ip: string, target: Target, now: number): void;
  bindings(svc: ServiceState, now?: number): Map<string, string> | null;
  describe?(svc: ServiceState, ip: string, now: number): { lastUsed: number } | null;
}

export interface PoolOptions {
  count: number;
  /** The node config (node.id resolved): each worker builds its plane from it (a reload replaces it). */
  config: NodeConfig;
  affinity: PoolAffinity;
  registry: client.Registry;
  /** A worker's connect latency (the node's histogram). */
  onConnected?(service: string, backend: string, seconds: number): void;
  /** A worker's passive ejection, for the node's ejection metric and event. */
  onEject?(service: string, backend: string, untilMs: number): void;
}

interface Slot {
  readonly slot: number;
  worker: Worker | null;
  pid: number;
  startedAt: number;
  restarts: number;
  /** Crashes in a row that came soon after their start (restart backoff). */
  quickCrashes: number;
  applied: number;
  listeners: WireListener[];
  stats: WireStats | null;
}

/** How often the node's affinity entries (other nodes' too) are compared with what the workers have. */
const AFFINITY_SYNC_MS = 1000;
/** A worker that does not acknowledge a snapshot in this time does not hold up the other forwarders. */
const APPLY_WAIT_MS = 10_000;
/** A scrape waits at most this long for fresh counters; then it reads the last reported ones. */
const STATS_WAIT_MS = 500;
/** A worker that lived less than this before it died is restarted with a backoff (250 ms doubling, ≤ 10 s). */
const QUICK_CRASH_MS = 5000;

/** Counter fields that are not summed: gauges of the live workers (active) or a maximum (ejection). */
const LIVE_ONLY = new Set(["active"]);
const MAXED = new Set(["ejectedUntil", "ejections"]);

export class WorkerPool extends DataPlane {
  readonly count: number;
  private readonly slots: Slot[] = [];
  private readonly inputs = new WeakMap<Snapshot, WireInput>();
  private lastInput: WireInput | null = null;
  /** Counters of workers that exited, so the node's totals never go backwards. */
  private readonly retired = new Map<string, WireCounters>();
  private readonly statsWaiters = new Map<number, { left: Set<number>; done: () => void }>();
  private nextStatsId = 1;
  private readonly appliedWaiters = new Set<() => void>();
  private drainWaiters = new Map<number, (remaining: number) => void>();
  private stopped = false;
  private readonly sent = new Map<string, Map<string, { backend: string; lastUsed: number }>>();
  private syncTimer: NodeJS.Timeout | null = null;
  private readonly exec = fileURLToPath(new URL("./main.js", import.meta.url));

  constructor(
    log: Logger,
    options: PlaneOptions,
    deps: PlaneDeps,
    private readonly pool: PoolOptions,
  ) {
    super(log, options, deps);
    this.count = pool.count;
    for (let i = 0; i < this.count; i++) this.slots.push({ slot: i, worker: null, pid: 0, startedAt: 0, restarts: 0, quickCrashes: 0, applied: 0, listeners: [], stats: null });
    this.registerMetrics(pool.registry);
  }

  /** Forks the workers (node.start()). */
  start(): void {
    // Round-robin hand-off from the primary: connections land on every worker, whatever the kernel's
    // wake-up order; and the listening socket outlives any one worker. Node's own switch,
    // NODE_CLUSTER_SCHED_POLICY=none, lets the workers accept on the shared socket themselves instead
    // (no hand-off through the primary per connection; the kernel decides which worker wakes).
    if (process.env.NODE_CLUSTER_SCHED_POLICY === undefined) cluster.schedulingPolicy = cluster.SCHED_RR;
    cluster.setupPrimary({ exec: this.exec, serialization: "advanced" });
    for (const s of this.slots) this.fork(s);
    this.syncTimer = setInterval(() => this.syncAffinity(), AFFINITY_SYNC_MS);
    this.syncTimer.unref();
  }

  private fork(s: Slot): void {
    if (this.stopped) return;
    const w = cluster.fork({ BALLAST_WORKER_SLOT: String(s.slot) });
    s.worker = w;
    s.pid = w.process.pid ?? 0;
    s.startedAt = Date.now();
    s.applied = 0;
    s.listeners = [];
    s.stats = null;
    this.log.info({ worker: s.slot, pid: s.pid }, "worker started");
    w.on("message", (m: FromWorker) => this.onMessage(s, w, m));
    w.on("error", (err) => this.log.warn({ worker: s.slot, err: err.message }, "worker channel error"));
    w.once("exit", (code, signal) => this.onExit(s, w, code, signal));
  }

  private post(s: Slot, m: ToWorker): void {
    const w = s.worker;
    if (w === null || !w.isConnected()) return;
    try {
      w.send(m);
    } catch (err) {
      this.log.warn({ worker: s.slot, err: (err as Error).message }, "message to worker failed");
    }
  }

  private broadcast(m: ToWorker, except?: Slot): void {
    for (const s of this.slots) if (s !== except) this.post(s, m);
  }

  private onExit(s: Slot, w: Worker, code: number | null, signal: string | null): void {
    if (s.worker !== w) return;
    // Its counters stay in the node's totals; its open connections are gone with it.
    if (s.stats !== null) {
      for (const [k, c] of s.stats.services) this.retire(`s:${k}`, c);
      for (const [k, c] of s.stats.backends) this.retire(`b:${k}`, c);
    }
    s.worker = null;
    s.stats = null;
    s.listeners = [];
    this.refreshListeners();
    this.sumStats();
    this.wakeApplied();
    this.drainWaiters.get(s.slot)?.(0);
    for (const [id, waiter] of this.statsWaiters) {
      waiter.left.delete(s.slot);
      if (waiter.left.size === 0) {
        this.statsWaiters.delete(id);
        waiter.done();
      }
    }
    if (this.stopped) return;
    const lived = Date.now() - s.startedAt;
    s.quickCrashes = lived < QUICK_CRASH_MS ? s.quickCrashes + 1 : 0;
    const delay = s.quickCrashes === 0 ? 0 : Math.min(10_000, 250 * 2 ** (s.quickCrashes - 1));
    this.log.error({ worker: s.slot, pid: s.pid, code, signal, restartInMs: delay }, "worker exited; starting a replacement");
    s.restarts++;
    // During a drain a replacement would open listeners the drain closed: it starts at resume().
    if (this.draining) return;
    setTimeout(() => {
      if (s.worker === null && !this.draining) this.fork(s);
    }, delay).unref();
  }

  private retire(key: string, c: WireCounters): void {
    const r = this.retired.get(key) ?? {};
    for (const [f, v] of Object.entries(c)) {
      if (LIVE_ONLY.has(f) || MAXED.has(f)) continue;
      r[f] = (r[f] ?? 0) + v;
    }
    this.retired.set(key, r);
  }

  private onMessage(s: Slot, w: Worker, m: FromWorker): void {
    if (s.worker !== w) return;
    switch (m.type) {
      case "hello": {
        this.post(s, { type: "init", slot: s.slot, workers: this.count, config: this.pool.config });
        if (this.lastInput !== null) this.post(s, { type: "snapshot", input: this.lastInput });
        const all = this.allEntries();
        if (all.length > 0) this.post(s, { type: "affinity", entries: all });
        break;
      }
      case "applied":
        s.applied = Math.max(s.applied, m.revision);
        s.listeners = m.listeners;
        this.refreshListeners();
        this.wakeApplied();
        break;
      case "stats": {
        s.stats = m.stats;
        for (const [service, backend, seconds] of m.stats.connects) this.pool.onConnected?.(service, backend, seconds);
        this.sumStats();
        const waiter = this.statsWaiters.get(m.id);
        if (waiter !== undefined) {
          waiter.left.delete(s.slot);
          if (waiter.left.size === 0) {
            this.statsWaiters.delete(m.id);
            waiter.done();
          }
        }
        break;
      }
      case "learned":
        this.learn(s, m.entries);
        break;
      case "ejected":
        this.pool.onEject?.(m.service, m.backend, m.untilMs);
        break;
      case "drained":
        this.drainWaiters.get(s.slot)?.(m.remaining);
        break;
    }
  }

  // ---- snapshots --------------------------------------------------------------------------------

  /**
   * Called by the node in the same turn the snapshot was built (the record table still holds that
   * revision): keeps what the workers need to build the same snapshot.
   */
  capture(s: Snapshot, records: { input(v: ReadonlyMap<string, VerdictView>): SnapshotInput }, resolve: (name: string) => ResolvedName | undefined): void {
    const verdicts = new Map<string, VerdictView>();
    for (const svc of s.services.values()) for (const b of svc.backends) if (b.verdict !== null) verdicts.set(`${svc.name}/${b.id}`, b.verdict);
    const input = records.input(verdicts);
    const backendRevisions = new Map<string, number>();
    const resolved = new Map<string, ResolvedName>();
    for (const [service, m] of input.backends) {
      for (const [id, b] of m) {
        backendRevisions.set(`${service}/${id}`, input.backendRevision?.(service, id) ?? 0);
        for (const name of [b.address, b.checkAddress]) {
          if (name === undefined || !isHostName(name)) continue;
          const r = resolve(name);
          if (r !== undefined) resolved.set(name, r);
        }
      }
    }
    this.inputs.set(s, { revision: s.revision, now: Date.now(), services: input.services, backends: input.backends, verdicts, backendRevisions, resolved });
  }

  override apply(next: Snapshot): Promise<void> {
    this.current = next;
    const input = this.inputs.get(next);
    if (input === undefined) {
      this.log.error({ revision: next.revision }, "no captured input for this snapshot: the workers keep the previous one");
      return Promise.resolve();
    }
    this.lastInput = input;
    this.broadcast({ type: "snapshot", input });
    return new Promise((resolve) => {
      const finish = () => {
        clearTimeout(timer);
        this.appliedWaiters.delete(check);
        resolve();
      };
      const check = () => {
        if (this.slots.every((s) => s.worker === null || s.applied >= next.revision)) finish();
      };
      const timer = setTimeout(finish, APPLY_WAIT_MS);
      timer.unref();
      this.appliedWaiters.add(check);
      check();
    });
  }

  private wakeApplied(): void {
    for (const check of [...this.appliedWaiters]) check();
  }

  /**
   * The node's listener view from the workers' reports: a TCP service is bound when any worker bound
   * it (they share the socket); a UDP service by its owner. Readers outside the plane (metrics, state)
   * read only `svc`, `error` and `boundPort` of a listener; the primary's entries are just that.
   */
  private refreshListeners(): void {
    this.listeners.clear();
    const snap = this.current;
    if (snap === null) return;
    const by = new Map<string, { svc: ServiceState; error: string | null; boundPort: number }>();
    for (const s of this.slots) {
      if (s.worker === null) continue;
      for (const l of s.listeners) {
        const svc = snap.services.get(l.service);
        if (svc === undefined) continue;
        const have = by.get(l.service);
        if (have === undefined || (have.error !== null && l.error === null)) by.set(l.service, { svc, error: l.error, boundPort: l.boundPort });
      }
    }
    for (const [name, l] of by) this.listeners.set(name, l as unknown as TcpListener);
  }

  /**
   * Ready once every worker runs and has applied a snapshot: a missing worker is a missing share of
   * the TCP accepts and all of its UDP services, so the node says unready until its replacement serves.
   */
  override get ready(): boolean {
    return super.ready && this.slots.every((s) => s.worker !== null && s.applied > 0);
  }

  override status(service: string): ForwarderServiceStatus | undefined {
    const svc = this.current?.services.get(service);
    if (svc === undefined || forwardingOf(svc.spec) !== "proxy") return undefined;
    const l = this.listenerOf(service);
    let revision = Number.POSITIVE_INFINITY;
    for (const s of this.slots) if (s.worker !== null) revision = Math.min(revision, s.applied);
    if (!Number.isFinite(revision)) revision = 0;
    if (l === undefined) return { programmed: false, reason: this.draining ? "draining: no new listeners" : this.slots.every((s) => s.worker === null) ? "no worker running" : "not applied yet", revision };
    if (l.error !== null) return { programmed: false, reason: l.error, revision };
    return { programmed: true, reason: null, revision };
  }

  /** Which worker slot binds a UDP service (null: TCP, shared by all). */
  ownerOf(svc: ServiceState): number | null {
    return svc.spec.protocol === "udp" ? udpOwner(svc.name, this.count) : null;
  }

  // ---- affinity ---------------------------------------------------------------------------------

  private learn(from: Slot, entries: WireEntry[]): void {
    const snap = this.current;
    if (snap === null) return;
    const fresh: WireEntry[] = [];
    for (const e of entries) {
      const [service, ip, backend, lastUsed] = e;
      const svc = snap.services.get(service);
      const target = svc?.sticky.get(backend);
      if (svc === undefined || target === undefined) continue;
      this.pool.affinity.record(svc, ip, target, lastUsed);
      this.remember(service, ip, backend, lastUsed);
      fresh.push(e);
    }
    if (fresh.length > 0) this.broadcast({ type: "affinity", entries: fresh }, from);
  }

  private remember(service: string, ip: string, backend: string, lastUsed: number): void {
    let m = this.sent.get(service);
    if (m === undefined) {
      m = new Map();
      this.sent.set(service, m);
    }
    m.set(ip, { backend, lastUsed });
  }

  /** Every live entry of the node's table for its affinity services (a new worker's starting copy). */
  private allEntries(): WireEntry[] {
    const snap = this.current;
    const out: WireEntry[] = [];
    if (snap === null) return out;
    const now = Date.now();
    for (const svc of snap.services.values()) {
      if (svc.spec.affinity.mode === "none" || forwardingOf(svc.spec) !== "proxy") continue;
      for (const [ip, backend] of this.pool.affinity.bindings(svc, now) ?? []) out.push([svc.name, ip, backend, this.pool.affinity.describe?.(svc, ip, now)?.lastUsed ?? now]);
    }
    return out;
  }

  /**
   * Entries the node's table has that the workers were not told of, or whose use moved on by more
   * than the refresh share of the TTL: other nodes' entries arrive in the table through etcd.
   */
  private syncAffinity(): void {
    const changed: WireEntry[] = [];
    for (const e of this.allEntries()) {
      const [service, ip, backend, lastUsed] = e;
      const had = this.sent.get(service)?.get(ip);
      const ttl = this.current?.services.get(service)?.spec.affinity.ttl ?? 0;
      if (had !== undefined && had.backend === backend && lastUsed - had.lastUsed < ttl / 4) continue;
      this.remember(service, ip, backend, lastUsed);
      changed.push(e);
    }
    for (const [service, m] of this.sent) {
      const svc = this.current?.services.get(service);
      if (svc === undefined) {
        this.sent.delete(service);
        continue;
      }
      const grace = svc.spec.affinity.ttl * 1.25;
      const now = Date.now();
      for (const [ip, e] of m) if (now - e.lastUsed >= grace) m.delete(ip);
    }
    if (changed.length > 0) this.broadcast({ type: "affinity", entries: changed });
  }

  /** A reload changed what the workers apply live (the config object is the node's running one). */
  reconfigure(config: NodeConfig): void {
    this.pool.config = { ...config, node: { ...config.node, id: this.pool.config.node.id } };
    this.broadcast({ type: "reconfigure", config: this.pool.config });
  }

  override avoidLocally(service: string, id: string, untilMs: number): boolean {
    const applied = super.avoidLocally(service, id, untilMs);
    if (applied) this.broadcast({ type: "avoid", service, backend: id, untilMs });
    return applied;
  }

  // ---- counters ---------------------------------------------------------------------------------

  /** Asks every worker for its counters now (a scrape); resolves when all answered or after STATS_WAIT_MS. */
  refreshStats(): Promise<void> {
    const live = this.slots.filter((s) => s.worker?.isConnected() === true);
    if (live.length === 0) return Promise.resolve();
    const id = this.nextStatsId++;
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.statsWaiters.delete(id);
        resolve();
      }, STATS_WAIT_MS);
      timer.unref();
      this.statsWaiters.set(id, {
        left: new Set(live.map((s) => s.slot)),
        done: () => {
          clearTimeout(timer);
          resolve();
        },
      });
      for (const s of live) this.post(s, { type: "stats?", id });
    });
  }

  /**
   * The node's counters are the sums of the live workers' last reports and of the workers that exited
   * (`active`: live workers only; ejection: the latest). Only counters the snapshot has (or that still
   * hold connections) are written: a pruned one is not brought back.
   */
  private sumStats(): void {
    const sums = new Map<string, WireCounters>();
    const add = (key: string, c: WireCounters, live: boolean) => {
      let t = sums.get(key);
      if (t === undefined) {
        t = {};
        sums.set(key, t);
      }
      for (const [f, v] of Object.entries(c)) {
        if (MAXED.has(f)) t[f] = Math.max(t[f] ?? 0, v);
        else if (live || !LIVE_ONLY.has(f)) t[f] = (t[f] ?? 0) + v;
      }
    };
    for (const [k, c] of this.retired) add(k, c, false);
    for (const s of this.slots) {
      if (s.stats === null) continue;
      for (const [k, c] of s.stats.services) add(`s:${k}`, c, true);
      for (const [k, c] of s.stats.backends) add(`b:${k}`, c, true);
    }
    const snap = this.current;
    for (const [key, c] of sums) {
      const name = key.slice(2);
      let target: object | undefined;
      if (key.startsWith("s:")) target = this.stats.services.get(name) ?? (snap?.services.has(name) ? this.stats.service(name) : undefined);
      else {
        const slash = name.indexOf("/");
        const svc = snap?.services.get(name.slice(0, slash));
        target = this.stats.backends.get(name) ?? (svc?.backends.some((b) => b.id === name.slice(slash + 1)) ? this.stats.backend(svc.name, name.slice(slash + 1)) : undefined);
      }
      if (target === undefined) {
        this.retired.delete(key);
        continue;
      }
      // Fields the workers did not report (a live gauge of no live worker) read 0.
      if ("active" in target && c.active === undefined) c.active = 0;
      for (const [f, v] of Object.entries(c)) {
        const dot = f.indexOf(".");
        if (dot < 0) (target as Record<string, number>)[f] = v;
        else {
          const inner = (target as Record<string, Record<string, number>>)[f.slice(0, dot)];
          if (inner !== undefined) inner[f.slice(dot + 1)] = v;
        }
      }
    }
    // Connections of the exited workers are gone: no report left holds them.
    for (const [key, c] of this.stats.services) if (!sums.has(`s:${key}`)) c.active = 0;
    for (const [key, c] of this.stats.backends) if (!sums.has(`b:${key}`)) c.active = 0;
    if (this.active === 0) this.onConnectionClosed();
  }

  /** Per-worker view for /api/state and metrics. */
  describe(): Array<{ worker: number; pid: number; running: boolean; startedAt: number; restarts: number; active: number; accepted: number; udpServices: string[]; rssBytes: number; cpuSeconds: number }> {
    const udp = [...(this.current?.services.values() ?? [])].filter((svc) => svc.spec.protocol === "udp" && forwardingOf(svc.spec) === "proxy");
    return this.slots.map((s) => {
      let active = 0;
      let accepted = 0;
      for (const c of s.stats?.services.values() ?? []) {
        active += c.active ?? 0;
        accepted += c.accepted ?? 0;
      }
      return {
        worker: s.slot,
        pid: s.worker === null ? 0 : s.pid,
        running: s.worker !== null,
        startedAt: s.startedAt,
        restarts: s.restarts,
        active,
        accepted,
        udpServices: udp.filter((svc) => udpOwner(svc.name, this.count) === s.slot).map((svc) => svc.name),
        rssBytes: s.stats?.rssBytes ?? 0,
        cpuSeconds: s.stats?.cpuSeconds ?? 0,
      };
    });
  }

  private registerMetrics(r: client.Registry): void {
    const each = (read: (s: Slot) => number) => (emit: (labels: { worker: string }, v: number) => void) => {
      for (const s of this.slots) emit({ worker: String(s.slot) }, read(s));
    };
    const sum = (s: Slot, f: string) => {
      let n = 0;
      for (const c of s.stats?.services.values() ?? []) n += c[f] ?? 0;
      return n;
    };
    collectedGauge({ name: "ballast_worker_up", help: "1 while the data-plane worker of this slot runs (workers: N).", labelNames: ["worker"], registry: r, read: each((s) => (s.worker === null ? 0 : 1)) });
    collectedGauge({ name: "ballast_worker_restarts", help: "Times the worker of this slot was replaced after it exited.", labelNames: ["worker"], registry: r, read: each((s) => s.restarts) });
    collectedGauge({ name: "ballast_worker_active", help: "Open connections and UDP flows of the worker (the node's sum is ballast_service_active_connections).", labelNames: ["worker"], registry: r, read: each((s) => (s.worker === null ? 0 : sum(s, "active"))) });
    collectedGauge({ name: "ballast_worker_accepted", help: "Connections and flows the current worker process of this slot accepted (restarts at 0 with a new process).", labelNames: ["worker"], registry: r, read: each((s) => sum(s, "accepted")) });
    collectedGauge({ name: "ballast_worker_resident_memory_bytes", help: "Resident memory of the worker process.", labelNames: ["worker"], registry: r, read: each((s) => s.stats?.rssBytes ?? 0) });
    collectedGauge({ name: "ballast_worker_cpu_seconds", help: "User + system CPU seconds of the current worker process.", labelNames: ["worker"], registry: r, read: each((s) => s.stats?.cpuSeconds ?? 0) });
  }

  // ---- drain and close --------------------------------------------------------------------------

  override async drain(timeoutMs: number, cancel?: AbortSignal): Promise<{ remaining: number }> {
    this.draining = true;
    this.listeners.clear();
    const live = this.slots.filter((s) => s.worker !== null);
    const waits = live.map(
      (s) =>
        new Promise<number>((resolve) => {
          this.drainWaiters.set(s.slot, (n) => {
            this.drainWaiters.delete(s.slot);
            resolve(n);
          });
        }),
    );
    const onCancel = () => this.broadcast({ type: "drain-cancel" });
    cancel?.addEventListener("abort", onCancel);
    this.broadcast({ type: "drain", timeoutMs });
    const remaining = (await Promise.all(waits)).reduce((a, b) => a + b, 0);
    cancel?.removeEventListener("abort", onCancel);
    return { remaining };
  }

  override async resume(): Promise<void> {
    if (this.stopped || !this.draining) return;
    this.draining = false;
    this.broadcast({ type: "resume" });
    for (const s of this.slots) if (s.worker === null) this.fork(s);
  }

  override async close(): Promise<void> {
    this.stopped = true;
    this.draining = true;
    if (this.syncTimer !== null) clearInterval(this.syncTimer);
    const exits: Promise<void>[] = [];
    for (const s of this.slots) {
      const w = s.worker;
      if (w === null) continue;
      exits.push(
        new Promise<void>((resolve) => {
          const kill = setTimeout(() => w.process.kill("SIGKILL"), 2000);
          w.once("exit", () => {
            clearTimeout(kill);
            resolve();
          });
          // The worker closes its listeners and exits when its channel closes.
          if (w.isConnected()) w.disconnect();
          else w.process.kill("SIGKILL");
        }),
      );
    }
    await Promise.all(exits);
    this.listeners.clear();
  }
}
