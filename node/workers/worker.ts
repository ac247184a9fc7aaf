// A data-plane worker (`workers: N`, issue 18): runs the proxy listeners of its node and nothing else.
// It has no etcd session, no health checks and no admin API: the primary sends it the input of every
// snapshot, the affinity entries the node knows, and drain orders; the worker reports back what its
// listeners bound, the affinity entries it learned and its counters.
import { KeySchema } from "../../shared/keys.js";
import { GRACE_FACTOR, REFRESH_FACTOR } from "../affinity/entries.js";
import { AccessLog } from "../data/access-log.js";
import { DataPlane } from "../data/plane.js";
import type { AffinityHook } from "../data/router.js";
import { UdpListener } from "../data/udp.js";
import { createLogger, type Logger } from "../log.js";
import { forwardingOf } from "../model/forwarder.js";
import { buildSnapshot, type ServiceState, type Snapshot, type SnapshotInput, type Target } from "../model/snapshot.js";
import { StatsRegistry } from "../model/stats.js";
import { type FromWorker, MAX_LATENCIES, type ToWorker, udpOwner, type WireCounters, type WireEntry, type WireInput, type WireStats } from "./protocol.js";

/** How often counters go to the primary unasked (a scrape asks for fresh ones). */
const STATS_INTERVAL_MS = 1000;
/** Learned affinity entries are sent in one message per this many ms, not one per connection. */
const LEARN_FLUSH_MS = 5;

interface LocalEntry {
  backend: string;
  lastUsed: number;
  /** When this worker last told the primary about the entry (0: the primary told us). */
  sent: number;
}

/**
 * The worker's copy of the node's affinity entries. Lookups are local and synchronous (the hot path
 * never waits on the primary); a new or refreshed entry is recorded here and batched to the primary,
 * whose table replicates it to etcd and to the other workers. Same lifetime rules as the node's table:
 * an entry lives `ttl × GRACE_FACTOR` from its last use and is re-sent after `ttl × REFRESH_FACTOR`.
 */
export class WorkerAffinity implements AffinityHook {
  private readonly byService = new Map<string, Map<string, LocalEntry>>();
  private pending: WireEntry[] = [];
  private flushTimer: NodeJS.Timeout | null = null;

  constructor(private readonly send: (entries: WireEntry[]) => void) {}

  lookup(svc: ServiceState, ip: string, now: number): Target | null {
    return this.peek(svc, ip, now);
  }

  peek(svc: ServiceState, ip: string, now: number): Target | null {
    const e = this.byService.get(svc.name)?.get(ip);
    if (e === undefined || now - e.lastUsed >= svc.spec.affinity.ttl * GRACE_FACTOR) return null;
    return svc.sticky.get(e.backend) ?? null;
  }

  record(svc: ServiceState, ip: string, target: Target, now: number): void {
    let m = this.byService.get(svc.name);
    if (m === undefined) {
      m = new Map();
      this.byService.set(svc.name, m);
    }
    const ttl = svc.spec.affinity.ttl;
    const e = m.get(ip);
    if (e !== undefined && e.backend === target.id && now - e.lastUsed < ttl * GRACE_FACTOR) {
      e.lastUsed = now;
      if (now - e.sent < ttl * REFRESH_FACTOR) return;
      e.sent = now;
    } else m.set(ip, { backend: target.id, lastUsed: now, sent: now });
    this.pending.push([svc.name, ip, target.id, now]);
    this.flushTimer ??= setTimeout(() => this.flush(), LEARN_FLUSH_MS);
  }

  /** Entries from the primary (other workers' and other nodes'): the later use wins. */
  merge(entries: readonly WireEntry[]): void {
    for (const [service, ip, backend, lastUsed] of entries) {
      let m = this.byService.get(service);
      if (m === undefined) {
        m = new Map();
        this.byService.set(service, m);
      }
      const e = m.get(ip);
      if (e === undefined || e.backend !== backend || e.lastUsed < lastUsed) m.set(ip, { backend, lastUsed: Math.max(lastUsed, e?.backend === backend ? e.lastUsed : 0), sent: e?.backend === backend ? e.sent : 0 });
    }
  }

  /** Drops entries past their grace and services gone from the snapshot (called once per stats tick). */
  sweep(snap: Snapshot | null, now: number): void {
    for (const [service, m] of this.byService) {
      const svc = snap?.services.get(service);
      if (svc === undefined || svc.spec.affinity.mode === "none") {
        this.byService.delete(service);
        continue;
      }
      const grace = svc.spec.affinity.ttl * GRACE_FACTOR;
      for (const [ip, e] of m) if (now - e.lastUsed >= grace) m.delete(ip);
    }
  }

  size(service: string): number {
    return this.byService.get(service)?.size ?? 0;
  }

  flush(): void {
    if (this.flushTimer !== null) clearTimeout(this.flushTimer);
    this.flushTimer = null;
    if (this.pending.length === 0) return;
    const out = this.pending;
    this.pending = [];
    this.send(out);
  }
}

/** Copies the numbers of a counters object (one level of nested records, as `a.b`): what the primary sums. */
export function counterNumbers(o: object): WireCounters {
  const out: WireCounters = {};
  for (const [k, v] of Object.entries(o)) {
    if (typeof v === "number") out[k] = v;
    else if (v !== null && typeof v === "object" && !(v instanceof Set) && !ArrayBuffer.isView(v) && Object.getPrototypeOf(v) === Object.prototype) {
      for (const [k2, v2] of Object.entries(v)) if (typeof v2 === "number") out[`${k}.${k2}`] = v2;
    }
  }
  return out;
}

export function inputOf(w: WireInput, keys: KeySchema, onlyServices: (name: string, spec: { protocol: string; forwarding?: string }) => boolean): SnapshotInput {
  const services = new Map([...w.services].filter(([name, spec]) => onlyServices(name, spec as { protocol: string; forwarding?: string })));
  const backends = new Map([...w.backends].filter(([name]) => services.has(name)));
  return {
    revision: w.revision,
    now: w.now,
    services,
    backends,
    verdicts: w.verdicts,
    invalid: [],
    keyOf: { service: (n) => keys.service(n), backend: (s, id) => keys.backend(s, id) },
    backendRevision: (s, id) => w.backendRevisions.get(`${s}/${id}`) ?? 0,
    resolve: (name) => w.resolved.get(name),
  };
}

/** Runs the worker on its IPC channel (node/workers/main.ts calls it in a cluster worker). */
export function runWorker(): void {
  const send = (m: FromWorker) => {
    if (process.connected) process.send!(m);
  };
  let plane: DataPlane | null = null;
  let log: Logger | null = null;
  let keys: KeySchema | null = null;
  let slot = 0;
  let workers = 1;
  let snapshot: Snapshot | null = null;
  let drainCancel: AbortController | null = null;
  const stats = new StatsRegistry();
  const affinity = new WorkerAffinity((entries) => send({ type: "learned", entries }));
  let connects: Array<[string, string, number]> = [];

  const collect = (): WireStats => {
    const services = new Map<string, WireCounters>();
    const backends = new Map<string, WireCounters>();
    for (const [name, c] of stats.services) if (snapshot?.services.get(name) === undefined || forwardingOf(snapshot.services.get(name)!.spec) === "proxy") services.set(name, counterNumbers(c));
    for (const [key, c] of stats.backends) if (services.has(c.service)) backends.set(key, counterNumbers(c));
    const cpu = process.cpuUsage();
    const out = connects;
    connects = [];
    return { services, backends, rssBytes: process.memoryUsage.rss(), cpuSeconds: (cpu.user + cpu.system) / 1e6, connects: out };
  };

  // The primary orchestrates the drain: a SIGTERM/SIGINT sent to the whole process group (systemd's
  // control-group kill, Ctrl-C) must not end a worker before the primary's drain reaches it.
  process.on("SIGTERM", () => {});
  process.on("SIGINT", () => {});
  // SIGHUP to the group (a closing terminal): the primary reloads and tells the workers.
  process.on("SIGHUP", () => {});
  // The primary gone (crashed or exited): nothing will route these listeners any more.
  process.on("disconnect", () => {
    void (plane?.close() ?? Promise.resolve()).finally(() => process.exit(0));
  });

  const statsTimer = setInterval(() => {
    affinity.sweep(snapshot, Date.now());
    if (plane !== null) stats.prune(plane.current ?? { services: new Map() });
    send({ type: "stats", id: 0, stats: collect() });
  }, STATS_INTERVAL_MS);
  statsTimer.unref();

  let applying: Promise<void> = Promise.resolve();
  process.on("message", (m: ToWorker) => {
    switch (m.type) {
      case "init": {
        slot = m.slot;
        workers = m.workers;
        const c = m.config;
        keys = KeySchema.forCluster(c.cluster, c.etcd?.prefix);
        log = createLogger(c.log.level, { node: c.node.id, worker: slot });
        plane = new DataPlane(
          log,
          { ejectBaseMs: c.health.ejectBase, ejectMaxMs: c.health.ejectMax, maxEjectedShare: c.health.maxEjectedShare, bindAddress: c.node.bindAddress },
          {
            affinity,
            stats,
            zone: c.node.zone,
            hooks: {
              onEject: (svc, t, untilMs) => send({ type: "ejected", service: svc.name, backend: t.id, untilMs }),
              // The node's connect-latency histogram lives in the primary: observations go with the counters.
              onConnected: (svc, t, seconds) => {
                if (connects.length < MAX_LATENCIES) connects.push([svc.name, t.id, seconds]);
              },
            },
          },
        );
        plane.accessLog = new AccessLog(c.node.id ?? "", c.accessLog);
        break;
      }
      case "snapshot": {
        const p = plane;
        const k = keys;
        if (p === null || k === null) break;
        // UDP services of other slots are left out: their owner binds them (udpOwner).
        const input = inputOf(m.input, k, (name, spec) => spec.protocol !== "udp" || udpOwner(name, workers) === slot);
        const next = buildSnapshot(input, stats, snapshot);
        snapshot = next;
        applying = applying.then(async () => {
          await p.apply(next);
          const listeners = [...p.listeners.values()].map((l) => ({ service: l.svc.name, protocol: l instanceof UdpListener ? ("udp" as const) : ("tcp" as const), error: l.error, boundPort: l.boundPort }));
          send({ type: "applied", revision: next.revision, listeners });
        });
        break;
      }
      case "affinity":
        affinity.merge(m.entries);
        break;
      case "reconfigure": {
        const c = m.config;
        if (log !== null) log.level = c.log.level;
        plane?.accessLog?.configure({ ...c.accessLog, path: "" });
        if (plane !== null) {
          plane.options.ejectBaseMs = c.health.ejectBase;
          plane.options.ejectMaxMs = c.health.ejectMax;
          plane.options.maxEjectedShare = c.health.maxEjectedShare;
        }
        break;
      }
      case "avoid":
        plane?.avoidLocally(m.service, m.backend, m.untilMs);
        break;
      case "stats?":
        send({ type: "stats", id: m.id, stats: collect() });
        break;
      case "drain": {
        const p = plane;
        if (p === null) {
          send({ type: "drained", remaining: 0 });
          break;
        }
        drainCancel = new AbortController();
        void p.drain(m.timeoutMs, drainCancel.signal).then((r) => {
          affinity.flush();
          send({ type: "stats", id: 0, stats: collect() });
          send({ type: "drained", remaining: r.remaining });
        });
        break;
      }
      case "drain-cancel":
        drainCancel?.abort();
        break;
      case "resume":
        drainCancel = null;
        void plane?.resume().then(() => {
          const p = plane!;
          const listeners = [...p.listeners.values()].map((l) => ({ service: l.svc.name, protocol: l instanceof UdpListener ? ("udp" as const) : ("tcp" as const), error: l.error, boundPort: l.boundPort }));
          send({ type: "applied", revision: p.current?.revision ?? 0, listeners });
        });
        break;
    }
  });
  send({ type: "hello" });
}
