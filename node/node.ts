// A Ballast node: composes the store sync, reconcile, data plane, metrics, admin API, and the node's
// registration in etcd. The same class runs standalone (YAML services in a memory store) and clustered.
import os from "node:os";
import { parseHostPort } from "../shared/address.js";
import { encodeValue, MAX_UNSERVED, type NodeRecord } from "../shared/codec.js";
import { KeySchema } from "../shared/keys.js";
import { type NodeConfig, workerCount } from "../shared/schema.js";
import { VERSION } from "../shared/version.js";
import { AdminServer } from "./admin/server.js";
import { PeerTrust } from "./admin/peer-trust.js";
import { allowsPeerOrigin, statusPage } from "./admin/status-page.js";
import { AffinityTable } from "./affinity/table.js";
import { EtcdStore } from "./control/etcd-store.js";
import { LastKnownGood, registerLastGoodMetrics } from "./control/last-good.js";
import { registerRecoveryMetrics } from "./control/recovery-metrics.js";
import { registerSpaceMetrics, SpaceMonitor } from "./control/space.js";
import { MemoryStore } from "./control/memory-store.js";
import { Reconciler } from "./control/reconciler.js";
import { NameResolver } from "./control/resolver.js";
import type { Lease, Store, SyncHandle } from "./control/store.js";
import { DataPlane } from "./data/plane.js";
import { EventLog } from "./events.js";
import { HealthManager } from "./health/manager.js";
import type { NodeMode } from "./health/mode.js";
import { createLogger, type Logger } from "./log.js";
import { Metrics } from "./metrics.js";
import { NodeDns } from "./dns/node-dns.js";
import { registerDsrMetrics } from "./kernel/dsr-metrics.js";
import { DsrForwarder } from "./kernel/dsr.js";
import { KernelForwarder } from "./kernel/forwarder.js";
import { registerKernelMetrics } from "./kernel/metrics.js";
import { type Forwarder, forwardingOf, unservedServices } from "./model/forwarder.js";
import type { ServiceState, Snapshot, Target } from "./model/snapshot.js";
import { StatsRegistry } from "./model/stats.js";
import { describeState, explainRoute } from "./state.js";
import { describeSummary } from "./admin/summary.js";
import { registerBackendGauges } from "./backend-metrics.js";
import { AccessLog, registerAccessLogMetrics } from "./data/access-log.js";
import { ReloadMetrics, type ReloadResult, reloadNode } from "./reload.js";
import { NodeDrain } from "./drain.js";
import { writeMember } from "./rollout/members.js";
import { WorkerPool } from "./workers/pool.js";

export type { NodeMode };

export interface NodeOptions {
  config: NodeConfig;
  /** Injected store (tests); otherwise etcd from the config, or a memory store holding the YAML services. */
  store?: Store;
  log?: Logger;
  /** Forwarders after the proxy (the kernel data plane; tests inject recording ones). Each gets every snapshot. */
  forwarders?: readonly Forwarder<Snapshot>[];
  /** A rollout without restart hook asks the node to restart once drained: the process exits for its supervisor. */
  restart?: () => void;
}

export class BallastNode {
  readonly id: string;
  readonly config: NodeConfig;
  readonly keys: KeySchema;
  readonly log: Logger;
  /** The userspace proxy: the first forwarder, and the router `route explain` asks. */
  readonly plane: DataPlane;
  /** With `workers: N > 1`: the plane is this pool, and the proxy listeners run in its N worker processes. */
  readonly workers: WorkerPool | null;
  /** Every forwarder, in the order each snapshot is handed to them (the proxy first). */
  readonly forwarders: readonly Forwarder<Snapshot>[];
  readonly stats = new StatsRegistry();
  readonly metrics: Metrics;
  readonly reconciler: Reconciler;
  readonly store: Store;
  readonly admin: AdminServer;
  readonly standalone: boolean;
  readonly startedAt = Date.now();
  /** Which peers' admin APIs the status page may send the token to (admin.trustedPeers). */
  readonly peerTrust: PeerTrust;
  private sync: SyncHandle | null = null;
  private lease: Lease | null = null;
  private registerTimer: NodeJS.Timeout | null = null;
  private granting: Promise<void> | null = null;
  /** Registrations on a new lease (ballast_node_registrations_total; the scale bench reads it too). */
  readonly registrations = { registrations: 0 };
  private lastRegistered = "";
  private stopping = false;
  private firstSnapshot: Promise<void>;
  private resolveFirst!: () => void;
  /** Snapshots are handed to the forwarders one at a time, in order. */
  private applying: Promise<void> = Promise.resolve();
  readonly health: HealthManager;
  readonly affinity: AffinityTable;
  /** The authoritative DNS responder, when the config has `dns.listen`. */
  readonly dns: NodeDns | null;
  /** Programs `forwarding: nat` services into nftables; the data plane proxies the rest. */
  readonly kernel: KernelForwarder;
  /** Programs `forwarding: dsr` services into the node's netdev table. */
  readonly dsr: DsrForwarder;
  readonly reloads: ReloadMetrics;
  readonly events: EventLog;
  /** The operator drain: obeys rollout/drains/<id>. */
  readonly drain: NodeDrain;
  private lastSnapshot: Snapshot | null = null;
  private watchTimer: NodeJS.Timeout | null = null;
  /** Clustered with `stateDir`: the last applied records on disk, served at start if etcd is unreachable. */
  readonly lastGood: LastKnownGood | null = null;
  /** etcd's database size against its quota, and its alarms (null standalone). */
  readonly space: SpaceMonitor | null = null;
  private reloading: Promise<unknown> = Promise.resolve();
  /** Resolves host-name backends off the hot path; the snapshot reads its answers (node/control/resolver.ts). */
  readonly resolver: NameResolver;

  constructor(opts: NodeOptions) {
    const c = opts.config;
    this.config = c;
    this.id = c.node.id ?? os.hostname();
    this.log = opts.log ?? createLogger(c.log.level, { node: this.id });
    this.keys = KeySchema.forCluster(c.cluster, c.etcd?.prefix);
    this.peerTrust = new PeerTrust(c.admin.trustedPeers);
    this.standalone = !c.etcd && !opts.store;
    const etcdLog = this.log.child({ module: "etcd" });
    this.store =
      opts.store ??
      (c.etcd
        ? new EtcdStore({
            endpoints: c.etcd.endpoints,
            username: c.etcd.username,
            password: c.etcd.password,
            tls: c.etcd.tls,
            onEndpointChange: (e) => {
              if (e.up) etcdLog.info({ endpoint: e.endpoint }, "etcd endpoint answers again: calls may use it");
              else etcdLog.warn({ endpoint: e.endpoint, reason: e.reason }, "etcd endpoint not answering while another does: its calls and streams moved to the other endpoints");
            },
          })
        : new MemoryStore());
    this.metrics = new Metrics(this.stats, this.id);
    this.reloads = new ReloadMetrics(this.metrics.registry);
    this.firstSnapshot = new Promise((r) => {
      this.resolveFirst = r;
    });
    // Everything is wired here, each part given only the narrow context it needs. Closures read
    // parts built later (the reconciler) only after start(), when all exist.
    this.affinity = new AffinityTable({
      id: this.id,
      config: c.affinity,
      leaseTtlS: c.etcd?.leaseTtl,
      keys: this.keys,
      log: this.log,
      registry: this.metrics.registry,
      store: this.standalone ? null : this.store,
      snapshot: () => this.reconciler.snapshot,
      nodes: () => this.reconciler.nodes.values(),
    });
    const planeOptions = { ejectBaseMs: c.health.ejectBase, ejectMaxMs: c.health.ejectMax, maxEjectedShare: c.health.maxEjectedShare, bindAddress: c.node.bindAddress };
    const planeDeps = {
      affinity: this.affinity,
      stats: this.stats,
      zone: c.node.zone,
      hooks: {
        ...this.metrics.planeHooks,
        onEject: (svc: ServiceState, t: Target, until: number) => {
          this.metrics.planeHooks.onEject?.(svc, t, until);
          this.events.record("ejection", `backend ${svc.name}/${t.id} ejected for ${Math.round((until - Date.now()) / 1000)} s after connect failures`, { service: svc.name, backend: t.id });
        },
      },
    };
    const workers = workerCount(c, os.availableParallelism);
    this.workers =
      workers > 1
        ? new WorkerPool(this.log, planeOptions, planeDeps, {
            count: workers,
            config: { ...c, node: { ...c.node, id: this.id } },
            affinity: this.affinity,
            registry: this.metrics.registry,
            onConnected: (service, backend, seconds) => {
              const svc = this.reconciler.snapshot?.services.get(service);
              const t = svc?.sticky.get(backend);
              if (svc !== undefined && t !== undefined) planeDeps.hooks.onConnected?.(svc, t, seconds);
            },
            onEject: (service, backend, until) => {
              const svc = this.reconciler.snapshot?.services.get(service);
              const t = svc?.sticky.get(backend);
              if (svc !== undefined && t !== undefined) planeDeps.hooks.onEject(svc, t, until);
            },
          })
        : null;
    this.plane = this.workers ?? new DataPlane(this.log, planeOptions, planeDeps);
    // The kernel forwarder programs `forwarding: nat` services into nftables from the same snapshot.
    this.kernel = new KernelForwarder({
      cluster: c.cluster,
      log: this.log,
      affinityOf: (svc) => this.affinity.bindings(svc),
      learn: (svc, client, target) => this.affinity.record(svc, client, target, Date.now()),
      stats: this.stats,
      sourceAddresses: c.nat.sourceAddresses,
    });
    const own = new Set(Object.values(os.networkInterfaces()).flatMap((l) => (l ?? []).map((i) => i.address)));
    for (const a of c.nat.sourceAddresses) if (!own.has(a)) this.log.warn({ address: a }, "nat.sourceAddresses: not an address of this node; replies to NAT'ed flows will not reach it");
    registerKernelMetrics(this.metrics.registry, this.kernel, () => this.reconciler.snapshot);
    this.metrics.forwardingOf = (service) => forwardingOf(this.reconciler.snapshot?.services.get(service)?.spec ?? {});
    // The DSR forwarder programs `forwarding: dsr` services into the netdev table (stateless, direct return).
    this.dsr = new DsrForwarder({ cluster: c.cluster, device: c.dsr?.interface, log: this.log, stats: this.stats });
    registerDsrMetrics(this.metrics.registry, this.dsr, () => this.reconciler.snapshot?.services.keys() ?? []);
    this.metrics.observePlane(this.plane);
    registerBackendGauges(this.metrics.registry, this.plane);
    this.plane.accessLog = new AccessLog(this.id, c.accessLog);
    registerAccessLogMetrics(this.metrics.registry, this.plane.accessLog);
    this.forwarders = [this.plane, this.kernel, this.dsr, ...(opts.forwarders ?? [])];
    this.resolver = new NameResolver({ ...c.resolver, log: this.log, onChange: () => this.reconciler.namesChanged() });
    this.reconciler = new Reconciler(
      this.keys,
      this.stats,
      {
        onSnapshot: (s) => this.onSnapshot(s),
        onStatus: (connected) => {
          this.metrics.storeConnected.set(connected ? 1 : 0);
          this.metrics.lastSync = connected ? 0 : Date.now();
        },
        onInvalid: (fresh) => {
          this.metrics.invalidRecordsTotal.inc(fresh.length);
          for (const r of fresh.slice(0, 20)) this.events.record("invalid-record", `invalid record ${r.key}: ${r.reason}`, {}, true);
        },
        onClusterChange: () => {
          this.health.onClusterChange();
          this.affinity.membershipChanged();
          this.drain.update(this.reconciler.drains.get(this.id));
          this.dns?.refresh();
        },
        routingVerdicts: (shared) => this.health.routingVerdicts(shared),
        resolver: this.resolver,
        onObservations: (services) => this.health.onObservations(services),
      },
      this.log,
      this.affinity,
    );
    if (!this.standalone && c.stateDir !== "") {
      this.lastGood = new LastKnownGood(this.reconciler, c.stateDir, this.keys, this.log, (savedAt) => {
        this.metrics.lastSync = savedAt;
      });
      registerLastGoodMetrics(this.metrics.registry, this.lastGood);
    }
    const store = this.store;
    if (c.etcd && store.space) {
      this.space = new SpaceMonitor(() => store.space!(), c.etcd.quotaBytes, c.etcd.spaceCheck, this.log.child({ module: "etcd-space" }));
      registerSpaceMetrics(this.metrics.registry, this.space);
    }
    if (store instanceof EtcdStore) {
      registerRecoveryMetrics(this.metrics.registry, store.recovery, this.registrations, () => store.endpointStates());
    }
    this.health = new HealthManager({
      id: this.id,
      standalone: this.standalone,
      config: c.health,
      leaseTtl: c.etcd?.leaseTtl ?? 5,
      store: this.store,
      keys: this.keys,
      log: this.log,
      registry: this.metrics.registry,
      cluster: this.reconciler,
      fds: this.plane.fds,
      onMode: () => this.refreshRegistration(),
      // Observer quorum: a backend this node's own probes fail while the cluster keeps it (partial).
      avoid: (service, id, untilMs) => {
        const was = this.plane.stats.backends.get(`${service}/${id}`)?.ejectedUntil ?? 0;
        const applied = this.plane.avoidLocally(service, id, untilMs);
        if (applied && untilMs > 0 && was <= Date.now()) {
          this.events.record("ejection", `backend ${service}/${id} avoided on this node: its own health probes fail it`, { service, backend: id });
        }
      },
    });
    this.metrics.backendZones(() => this.reconciler.snapshot);
    this.dns = c.dns ? new NodeDns({ config: c, log: this.log, reconciler: this.reconciler, metrics: this.metrics }) : null;
    this.events = new EventLog(this.id, this.keys, this.store, this.log, () => this.standalone || this.health.status().isLeader);
    this.drain = new NodeDrain({
      id: this.id,
      log: this.log,
      startedAt: this.startedAt,
      plane: this.plane,
      events: this.events,
      timing: () => ({ withdrawDelay: this.config.withdrawDelay, drainTimeout: this.config.drainTimeout }),
      announced: () => this.announced,
      changed: () => this.refreshRegistration(),
      restart: opts.restart ?? null,
    });
    this.admin = new AdminServer(
      {
        ready: () => {
          const ready = this.ready;
          if (ready) this.announced = true;
          return ready;
        },
        state: () => (this.workers === null ? describeState(this) : { ...describeState(this), workers: this.workers.describe() }),
        summary: () => describeSummary(this),
        stateKey: () => `${this.reconciler.appliedRevision}|${this.reconciler.snapshot?.revision ?? 0}|${this.ready}|${this.mode}|${this.reconciler.connected}|${this.drain.state?.state ?? ""}`,
        route: (service, client, port) => explainRoute(this, service, client, port),
        metrics: async () => {
          await this.workers?.refreshStats();
          this.pruneMetrics();
          // DSR's per-backend bytes live in the kernel: read them before the scrape, so the shared
          // ballast_backend_bytes_in_total{forwarding="dsr"} and the packet counters agree.
          if (this.dsr.current !== null) await this.dsr.counters();
          return { contentType: this.metrics.registry.contentType, body: await this.metrics.registry.metrics() };
        },
        pages: new Map<string, () => { contentType: string; body: string | Buffer }>([
          ["/", statusPage],
          ["/api/events", () => ({ contentType: "application/json; charset=utf-8", body: JSON.stringify({ node: this.id, events: this.events.recent() }) })],
        ]),
        publicPages: new Set(["/"]),
        allowOrigin: (origin) => allowsPeerOrigin(this.reconciler.nodes.values(), origin),
      },
      c.admin.token,
      {
        // The names this node is reached by: the advertised one, the listen one, and any configured.
        allowedHosts: [...c.admin.allowedHosts, ...[c.node.advertise, c.admin.listen].flatMap((a) => (a ? [parseHostPort(a)?.host ?? a] : []))],
        maxConnections: c.admin.maxConnections,
      },
    );
  }

  /** This process said ready once (/readyz 200 or its node record): anycast or DNS may have announced it. */
  private announced = false;

  /** Set on SIGTERM: /readyz answers 503 while the listeners still accept for `withdrawDelay`. */
  withdrawing = false;

  /** The verdict mode, as health last reported it. */
  get mode(): NodeMode {
    return this.health.mode;
  }

  /**
   * Ready = not stopping, the proxy has a snapshot and all its listeners, and every other forwarder
   * carries every service it handles. A service no forwarder handles (a mode this build lacks) shows
   * in /api/state but does not make the node unready: one record must not withdraw every node.
   */
  get ready(): boolean {
    if (this.stopping || this.withdrawing || this.drain.active || !this.plane.ready) return false;
    const snap = this.plane.current;
    if (snap === null) return false;
    for (let i = 1; i < this.forwarders.length; i++) {
      const f = this.forwarders[i];
      for (const name of snap.services.keys()) if (f.status(name)?.programmed === false) return false;
    }
    return true;
  }

  /** Starts the admin server, then the store sync; resolves once the first snapshot is applied. */
  async start(opts: { waitForSnapshot?: boolean } = {}): Promise<void> {
    if (this.standalone) await seedMemoryStore(this.config, this.keys, this.store);
    const adminAddress = await this.admin.listen(this.config.admin.listen);
    this.log.info({ address: adminAddress }, "admin listening");
    this.workers?.start();
    this.sync = this.store.sync(this.keys.prefix, this.lastGood ?? this.reconciler);
    this.space?.start();
    this.affinity.start();
    this.health.start();
    await this.dns?.start();
    this.events.record("started", `node started (${this.mode})`);
    // Leadership and mode transitions, seen from outside the health module (a 1 s poll is plenty for a timeline).
    let leader = false;
    let mode = this.mode;
    this.watchTimer = setInterval(() => {
      const st = this.health.status();
      if (st.isLeader !== leader) {
        leader = st.isLeader;
        this.events.record("leadership", leader ? `became health-check leader (term ${st.term})` : "no longer health-check leader");
      }
      if (this.mode !== mode) {
        this.events.record("mode", `verdict mode ${mode} → ${this.mode}${st.modeReason ? `: ${st.modeReason}` : ""}`);
        mode = this.mode;
      }
      this.checkOwnRecord();
    }, 1000);
    this.watchTimer.unref();
    if (!this.standalone) this.scheduleRegister(0);
    if (opts.waitForSnapshot !== false) await this.firstSnapshot;
  }

  private rampTimer: NodeJS.Timeout | null = null;

  private onSnapshot(s: Snapshot): void {
    // Before the plane routes by it: the affinity table holds the previous table for clients without an entry.
    this.affinity.applied(s);
    // Slow start: the next ramp step is a rebuild from the same records at a later clock.
    if (this.rampTimer !== null) clearTimeout(this.rampTimer);
    this.rampTimer = null;
    if (s.nextRampAt !== null && !this.stopping) {
      this.rampTimer = setTimeout(() => {
        this.rampTimer = null;
        this.reconciler.rebuild();
      }, Math.max(0, s.nextRampAt - Date.now()));
      this.rampTimer.unref();
    }
    this.events.diff(this.lastSnapshot, s);
    this.lastSnapshot = s;
    // The workers build this snapshot again from its records: taken now, while the table holds them.
    this.workers?.capture(s, this.reconciler.records, (name) => this.resolver.get(name));
    this.metrics.snapshotSwaps.inc();
    this.metrics.snapshotRevision.set(s.revision);
    this.metrics.invalidRecords.reset();
    for (const r of s.invalid) this.metrics.invalidRecords.inc({ kind: this.keys.parse(r.key)?.kind ?? "unknown" });
    this.health.onSnapshot(s);
    this.dns?.refresh();
    this.pruneMetrics();
    // Each forwarder in order; apply() never rejects (a failure is kept in its status()).
    this.applying = this.applying.then(async () => {
      for (const f of this.forwarders) await f.apply(s);
    });
    this.applying.then(
      () => {
        // Backends that left with connections: their counters go once those closed (or at the next scrape).
        this.pruneMetrics();
        this.resolveFirst();
        if (!this.standalone) this.scheduleRegister(0);
      },
      (err: Error) => this.log.error({ err: err.message }, "applying snapshot failed"),
    );
  }

  /** Forgets counters and series of backends and services gone from the newest snapshot (issue 13, finding 14). */
  private pruneMetrics(): void {
    const s = this.reconciler.snapshot;
    if (s === null) return;
    for (const service of this.metrics.prune(this.stats, s)) this.health.metrics.forgetService(service);
  }

  /** The node's own record under nodes/<id>, leased so it disappears within the TTL when the node dies. */
  private scheduleRegister(delayMs: number): void {
    if (this.registerTimer || this.stopping) return;
    this.registerTimer = setTimeout(() => {
      this.registerTimer = null;
      this.register().catch((err: Error) => {
        this.log.debug({ err: err.message }, "node registration failed; retrying");
        this.scheduleRegister(500 + Math.random() * 1000);
      });
    }, delayMs);
    this.registerTimer.unref();
  }

  nodeRecord(): NodeRecord {
    const drain = this.drain.state;
    return {
      id: this.id,
      address: this.config.node.advertise ?? this.admin.address,
      admin: this.config.node.advertise ?? this.admin.address,
      zone: this.config.node.zone,
      version: VERSION,
      ready: this.ready,
      draining: this.withdrawing || this.plane.draining || drain !== null,
      revision: this.reconciler.appliedRevision,
      mode: this.mode,
      public: this.config.node.publicAddresses,
      unserved: this.reconciler.snapshot ? unservedServices(this.forwarders, this.reconciler.snapshot, MAX_UNSERVED) : [],
      startedAt: this.startedAt,
      updatedAt: Date.now(),
      // Omitted, not undefined, when not drained: msgpack would write nil, which readers reject.
      ...(drain !== null ? { drain } : {}),
    };
  }

  private async grantNodeLease(): Promise<void> {
    const ttl = this.config.etcd?.leaseTtl ?? 5;
    const lease = await this.store.grantLease(ttl, true);
    this.lease = lease;
    this.lastRegistered = "";
    // Once per lease too: a member record deleted meanwhile (etcd restored from a backup) comes back.
    this.memberWritten = false;
    this.registrations.registrations++;
    lease.onLost((reason) => {
      // Jittered over half a TTL: after a long etcd outage every node loses its lease at about the
      // same moment, and they should not all grant and put at the same instant (issue 19).
      const delayMs = 500 + Math.random() * ttl * 500;
      this.log.warn({ reason, delayMs: Math.round(delayMs) }, "node lease lost; registering again");
      if (this.lease === lease) this.lease = null;
      this.scheduleRegister(delayMs);
    });
  }

  /**
   * One registration at a time; a request while one runs makes it run once more after, with the state
   * of then. Two in flight could land in etcd in either order: a ready=false put applied after the
   * ready=true one would leave the record saying "not ready" while this process believes it wrote
   * ready (one way a CI run saw a ready node missing from its own DNS answer; checkOwnRecord heals the rest).
   */
  private register(): Promise<void> {
    this.registerDirty = true;
    this.registering ??= (async () => {
      try {
        while (this.registerDirty && !this.stopping) {
          this.registerDirty = false;
          await this.registerOnce();
        }
      } finally {
        this.registering = null;
      }
    })();
    return this.registering;
  }
  private registering: Promise<void> | null = null;
  private registerDirty = false;

  /** The fields a node record is rewritten for (the rest is the same for the process's life or asked from the admin API). */
  private static recordSig(r: NodeRecord): string {
    return `${r.ready}|${r.draining}|${r.mode}|${r.admin}|${r.drain?.state ?? ""}|${r.drain?.since ?? 0}|${r.unserved?.join(",") ?? ""}`;
  }

  /**
   * Level, not edge: once a second, the node's record as the watch last delivered it is compared
   * with what the node would write now. A difference that outlived one check (a put in flight is
   * seen within milliseconds) is written again: a missed transition, a record overwritten by hand
   * or by a rogue peer, or writes applied out of order all heal within about two seconds.
   */
  private checkOwnRecord(): void {
    if (this.standalone || this.stopping || this.lease === null || !this.reconciler.connected || this.registering !== null) {
      this.recordMismatch = false;
      return;
    }
    const seen = this.reconciler.nodes.get(this.id);
    const want = BallastNode.recordSig(this.nodeRecord());
    if (seen !== undefined && BallastNode.recordSig(seen) === want) {
      this.recordMismatch = false;
      return;
    }
    if (!this.recordMismatch) {
      this.recordMismatch = true;
      return;
    }
    this.recordMismatch = false;
    this.log.warn({ seen: seen === undefined ? null : BallastNode.recordSig(seen), want }, "own node record in etcd differs from this node's state: writing it again");
    this.lastRegistered = "";
    this.scheduleRegister(0);
  }
  private recordMismatch = false;

  private async registerOnce(): Promise<void> {
    if (this.stopping) return;
    if (this.lease === null) {
      // One grant at a time: a register() from start and one from a mode change used to both find no
      // lease and grant two (a second registration, and a lease left to expire).
      this.granting ??= this.grantNodeLease().finally(() => {
        this.granting = null;
      });
      await this.granting;
    }
    if (this.lease === null) return;
    // Only ready/draining/mode/unserved changes are written: the revision is asked from the admin API, since
    // writing it here would make every node's write bump every other node's revision, forever.
    const r = this.nodeRecord();
    if (r.ready) this.announced = true;
    const sig = BallastNode.recordSig(r);
    if (sig !== this.lastRegistered) {
      await this.store.put(this.keys.node(this.id), encodeValue({ ...r }), { lease: this.lease.id });
      this.lastRegistered = sig;
    }
    // The member record (unleased, once per process) after the node record: a running node is never
    // a member without a live record, which the drain guard would count as down.
    if (!this.memberWritten) {
      await writeMember(this.store, this.keys, r);
      this.memberWritten = true;
    }
  }
  private memberWritten = false;

  /** Re-publishes the node record when readiness or mode changed (called by health and drain). */
  refreshRegistration(): void {
    if (!this.standalone) this.scheduleRegister(0);
  }

  /**
   * SIGHUP / file watch with a config that passed validation: applied like an etcd change (listeners and
   * connections kept). Reloads run one at a time, in order.
   */
  reload(next: NodeConfig, source: string): Promise<ReloadResult | null> {
    const run = this.reloading.then(async () => {
      if (this.stopping) return null;
      try {
        const r = await reloadNode(this, next);
        this.workers?.reconfigure(this.config);
        this.reloads.reloads.inc({ result: "applied" });
        this.reloads.lastSuccessful.set(1);
        this.log.info({ source, applied: r.applied, writes: r.writes }, "config reloaded");
        this.events.record("reload", `config reloaded (${source}): ${r.applied.join(", ") || "no change"}`);
        if (r.needsRestart.length > 0) this.log.warn({ source, fields: r.needsRestart }, "config reload: these fields need a restart; their running values are kept");
        return r;
      } catch (err) {
        this.reloads.reloads.inc({ result: "failed" });
        this.reloads.lastSuccessful.set(0);
        this.log.error({ source, err: (err as Error).message }, "config reload failed");
        return null;
      }
    });
    this.reloading = run;
    return run;
  }

  /** A reload whose file did not validate: the running config stays; the error names the field path. */
  reloadRejected(source: string, error: string): void {
    this.reloads.reloads.inc({ result: "invalid" });
    this.reloads.lastSuccessful.set(0);
    this.log.error({ source, err: error }, "config reload rejected; keeping the running config");
    this.events.record("reload", `config reload rejected (${source}): ${error.split("\n").slice(1).join("; ").trim() || error}`);
  }

  /** SIGTERM: not ready (anycast withdraws), stop accepting, let open connections finish, then stop. */
  async shutdown(drainTimeoutMs = this.config.drainTimeout): Promise<{ remaining: number }> {
    this.withdrawing = true;
    this.events.record("drain", `node draining (drainTimeout ${drainTimeoutMs} ms)`);
    this.log.info({ drainTimeoutMs, withdrawDelayMs: this.config.withdrawDelay, active: this.plane.active }, "draining");
    if (!this.standalone) {
      await this.register().catch(() => {});
    }
    if (this.config.withdrawDelay > 0) await new Promise((r) => setTimeout(r, this.config.withdrawDelay));
    const drained = await Promise.all(this.forwarders.map((f) => f.drain(drainTimeoutMs)));
    const r = { remaining: drained.reduce((n, d) => n + d.remaining, 0) };
    await this.close();
    this.log.info({ remaining: r.remaining }, "stopped");
    return r;
  }

  /** Stops everything at once (tests, and the end of shutdown). */
  async close(): Promise<void> {
    if (this.stopping) return;
    this.stopping = true;
    if (this.registerTimer) clearTimeout(this.registerTimer);
    await this.dns?.close();
    if (this.rampTimer) clearTimeout(this.rampTimer);
    if (this.watchTimer) clearInterval(this.watchTimer);
    this.events.close();
    await this.health.stop();
    await this.affinity.stop();
    await this.sync?.stop();
    await this.lastGood?.close();
    this.space?.close();
    this.reconciler.stop();
    this.resolver.close();
    if (this.lease) await this.lease.revoke().catch(() => {});
    for (const f of this.forwarders) await f.close();
    this.plane.accessLog?.close();
    await this.admin.close();
    await this.store.close();
  }
}

/** Standalone mode: the YAML services become records in the memory store, so they take the same path as etcd's. */
async function seedMemoryStore(c: NodeConfig, keys: KeySchema, store: Store): Promise<void> {
  for (const s of c.services) {
    const { backends, ...service } = s;
    await store.put(keys.service(s.name), JSON.stringify(service));
    for (const b of backends) await store.put(keys.backend(s.name, b.id), JSON.stringify(b));
  }
}
