// Session affinity shared by the whole cluster (issue 5): the router's synchronous lookup/record on the
// local table, replication of new and refreshed entries to etcd in leased batches, and the merge of
// every other node's batches arriving through the cluster watch.
import type client from "prom-client";
import type { KeySchema } from "../../shared/keys.js";
import type { NodeConfig } from "../../shared/schema.js";
import type { AffinitySink } from "../control/reconciler.js";
import type { KeyValue, Store, StoreEvent } from "../control/store.js";
import type { AffinityHook } from "../data/router.js";
import type { Logger } from "../log.js";
import type { ServiceState, Snapshot, Target } from "../model/snapshot.js";
import { type DecodedBatch, decodeBatch } from "./batch.js";
import { EntryStore, GRACE_FACTOR, Merge, REFRESH_FACTOR, type ServiceTable } from "./entries.js";
import { AffinityMetrics } from "./metrics.js";
import { Replicator } from "./replicator.js";

interface Received {
  service: string;
  value: Buffer;
  /** From a watch event (counts towards replication lag), not from a (re)list. */
  live: boolean;
}

/**
 * Work per event-loop turn, counted in entries (decoding a batch counts a quarter per tuple): a joining
 * node's initial list, or one huge batch from a buggy writer, must not stall the data plane.
 */
export const MERGE_ENTRIES_PER_TURN = 4096;
/**
 * How far ahead of this node's clock another node's times may be. Later times are clamped to it: an
 * entry "last used" next year would pin its client for a year on every node (and outlive its key).
 */
export const CLOCK_SKEW_MS = 5_000;

/** A decoded batch being merged, possibly over several turns. */
interface Merging {
  service: string;
  batch: DecodedBatch;
  next: number;
}
const MIN_SWEEP_MS = 100;
const MAX_SWEEP_MS = 2_000;
/**
 * An overflow episode (the table evicting live entries for room) ends once the table is back under
 * this share of maxEntries with no eviction since the last sweep: one warning per episode, not per entry.
 */
export const OVERFLOW_CLEAR_SHARE = 0.9;

/** A condition the operator should act on, as /api/state lists it. */
export interface AffinityWarning {
  kind: "affinity-overflow";
  message: string;
  since: number;
}

/** What the affinity table needs from the node that composes it. */
export interface AffinityContext {
  readonly id: string;
  readonly config: NodeConfig["affinity"];
  readonly keys: KeySchema;
  readonly log: Logger;
  readonly registry: client.Registry;
  /** Where batches are written; null in standalone mode (one node, nothing to share). */
  readonly store: Store | null;
  /** The applied snapshot (null before the first): which services have affinity and their TTLs. */
  snapshot(): Snapshot | null;
}

export class AffinityTable implements AffinityHook, AffinitySink {
  readonly entries: EntryStore;
  /** Null in standalone mode: one node, nothing to share. */
  readonly replicator: Replicator | null;
  readonly metrics: AffinityMetrics;
  readonly merges = { new: 0, same: 0, won: 0, lost: 0, stale: 0 };
  batchesReceived = 0;
  invalidBatches = 0;
  /** Tuples skipped as malformed, or naming a backend the service does not have. */
  invalidEntries = 0;
  /** Times later than now + CLOCK_SKEW_MS, clamped. */
  clampedEntries = 0;
  private self: number;
  private merging: Merging | null = null;
  private inbox: Received[] = [];
  private inboxHead = 0;
  private draining = false;
  private sweepTimer: NodeJS.Timeout | null = null;
  private stopped = false;
  /** When the current overflow episode began (0: none); set on the hot path, logged by the sweep. */
  overflowSince = 0;
  private overflowLogged = false;
  private evictionsAtEpisodeStart = 0;
  private evictionsAtLastSweep = 0;
  // lookup() and the record() that follows it in the same route() share one Map lookup.
  private cachedIp = "";
  private cachedTable: ServiceTable | null = null;
  private cachedSlot = -1;

  constructor(private readonly ctx: AffinityContext) {
    const c = ctx.config;
    this.entries = new EntryStore(c.maxEntries);
    this.self = this.entries.names.intern(ctx.id);
    this.entries.onEvict = (slot) => {
      if (slot === this.cachedSlot) this.cachedTable = null;
      // Hot path: only note the episode's start; the sweep logs it (once) off the hot path.
      if (this.overflowSince === 0) {
        this.overflowSince = Date.now();
        this.evictionsAtEpisodeStart = this.entries.evictions;
      }
    };
    this.replicator =
      ctx.store === null
        ? null
        : new Replicator(this.entries, {
          store: ctx.store,
          keys: ctx.keys,
          nodeId: ctx.id,
          log: ctx.log,
          batchInterval: c.batchInterval,
          batchMax: c.batchMax,
          ttlOf: (t) => this.ttlOf(t),
        });
    this.metrics = new AffinityMetrics(ctx.registry, this);
  }

  // ---- hot path (router) ------------------------------------------------------------------------

  lookup(svc: ServiceState, ip: string, now: number): Target | null {
    const t = this.entries.ensureTable(svc.name);
    this.cachedTable = null;
    const e = this.entries;
    const slot = e.find(t, ip);
    if (slot < 0) {
      t.misses++;
      return null;
    }
    this.cachedIp = ip;
    this.cachedTable = t;
    this.cachedSlot = slot;
    if (now - e.lastUsed(slot) >= svc.spec.affinity.ttl * GRACE_FACTOR) {
      t.expired++;
      return null;
    }
    // Drained backends are in `sticky`: their clients stay until the TTL. The entry stays too when the
    // backend is gone, so the replacing pick knows which generation it supersedes.
    const target = svc.sticky.get(e.backendName(slot));
    if (target === undefined) {
      t.moved++;
      return null;
    }
    t.hits++;
    return target;
  }

  peek(svc: ServiceState, ip: string, now: number): Target | null {
    const e = this.entries;
    const t = e.table(svc.name);
    const slot = t === undefined ? -1 : e.find(t, ip);
    if (slot < 0 || now - e.lastUsed(slot) >= svc.spec.affinity.ttl * GRACE_FACTOR) return null;
    return svc.sticky.get(e.backendName(slot)) ?? null;
  }

  record(svc: ServiceState, ip: string, target: Target, now: number): void {
    const e = this.entries;
    let t = this.cachedTable;
    let slot: number;
    if (t !== null && t.name === svc.name && this.cachedIp === ip && e.ownedBy(this.cachedSlot, t)) slot = this.cachedSlot;
    else {
      t = e.ensureTable(svc.name);
      slot = e.find(t, ip);
    }
    this.cachedTable = null;
    const ttl = svc.spec.affinity.ttl;
    const backend = e.names.intern(target.id);
    if (slot < 0) {
      slot = e.insert(t, ip, backend, this.self, 0, now, now);
      this.replicator?.enqueue(t, slot);
      return;
    }
    if (e.backend(slot) === backend && now - e.lastUsed(slot) < ttl * GRACE_FACTOR) {
      e.use(slot, now);
      if (now - e.written(slot) >= ttl * REFRESH_FACTOR) this.replicator?.enqueue(t, slot);
      return;
    }
    // A new pick replacing an entry (expired, or its backend lost): the next generation, which wins
    // over the old binding on every node, even those that have not noticed the backend is gone.
    e.setBinding(slot, backend, this.self, e.gen(slot) + 1, now, now);
    e.use(slot, now);
    this.replicator?.enqueue(t, slot);
  }

  describe(svc: ServiceState, ip: string, now: number): { backend: string; node: string; lastUsed: number } | null {
    const e = this.entries;
    const t = e.table(svc.name);
    const slot = t === undefined ? -1 : e.find(t, ip);
    if (slot < 0 || now - e.lastUsed(slot) >= svc.spec.affinity.ttl * GRACE_FACTOR) return null;
    return { backend: e.backendName(slot), node: e.creatorName(slot), lastUsed: e.lastUsed(slot) };
  }

  /**
   * A service's live entries as client → backend id: the kernel forwarder programs them as map
   * elements consulted before the hash (forwarding: nat). A scan of the entry slots, once per apply.
   */
  bindings(svc: ServiceState, now = Date.now()): Map<string, string> | null {
    const e = this.entries;
    const t = e.table(svc.name);
    if (t === undefined) return null;
    const out = new Map<string, string>();
    const grace = svc.spec.affinity.ttl * GRACE_FACTOR;
    for (let slot = 0; slot < e.highWater; slot++) if (e.ownedBy(slot, t) && now - e.lastUsed(slot) < grace) out.set(e.ip(slot), e.backendName(slot));
    return out;
  }

  // ---- cluster watch (reconciler) ---------------------------------------------------------------

  reset(kvs: KeyValue[]): void {
    // The local table is kept: entries whose batch keys are gone from etcd are still valid here.
    for (const kv of kvs) this.receive(kv.key, kv.value, false);
    this.scheduleMerge();
  }

  events(events: StoreEvent[]): void {
    // Deletes are ignored: a batch key goes when its lease expires, after every entry in it did.
    for (const ev of events) if (ev.type === "put") this.receive(ev.key, ev.value, true);
    this.scheduleMerge();
  }

  /** Whether the applied snapshot has this service (metrics list a gone service's series no more). */
  hasService(name: string): boolean {
    return this.ctx.snapshot()?.services.has(name) === true;
  }

  /** Received values not yet merged (tests, and the fuzz suite). */
  get pending(): boolean {
    return this.merging !== null || this.inboxHead < this.inbox.length;
  }

  private receive(key: string, value: Buffer, live: boolean): void {
    const k = this.ctx.keys.parse(key);
    if (k?.kind !== "affinity") return;
    // Our own batches echo back through the watch; at startup (a list) they are a previous run's entries.
    if (live && k.node === this.ctx.id) return;
    this.inbox.push({ service: k.service!, value, live });
  }

  /** Merges after the reconciler has applied the same revision (it hands affinity keys over first). */
  private scheduleMerge(): void {
    if (this.draining || (this.merging === null && this.inboxHead >= this.inbox.length)) return;
    this.draining = true;
    setImmediate(() => this.mergeSome());
  }

  private mergeSome(): void {
    this.draining = false;
    if (this.stopped) return;
    const now = Date.now();
    let budget = MERGE_ENTRIES_PER_TURN;
    while (budget > 0) {
      if (this.merging === null) {
        if (this.inboxHead >= this.inbox.length) break;
        const r = this.inbox[this.inboxHead++];
        this.merging = this.open(r, now);
        budget -= 1 + ((this.merging?.batch.entries.length ?? 0) >>> 2);
        continue;
      }
      budget -= this.mergeEntries(this.merging, now, budget);
      if (this.merging.next >= this.merging.batch.entries.length) this.merging = null;
    }
    if (this.merging === null && this.inboxHead >= this.inbox.length) {
      this.inbox = [];
      this.inboxHead = 0;
    } else this.scheduleMerge();
  }

  /** Decodes one received value; null when it is skipped (service gone or affinity off, or not a batch). */
  private open(r: Received, now: number): Merging | null {
    const svc = this.ctx.snapshot()?.services.get(r.service);
    if (svc === undefined || svc.spec.affinity.mode !== "source-ip") return null;
    let batch: DecodedBatch;
    try {
      batch = decodeBatch(r.value);
    } catch (err) {
      this.invalidBatches++;
      this.ctx.log.debug({ service: r.service, err: (err as Error).message }, "invalid affinity batch skipped");
      return null;
    }
    this.batchesReceived++;
    this.invalidEntries += batch.skipped;
    if (r.live) this.metrics.replicationLag.observe(Math.max(0, now - Math.min(batch.base, now + CLOCK_SKEW_MS)) / 1000);
    return { service: r.service, batch, next: 0 };
  }

  /** Merges up to `budget` entries of a batch; returns how many it looked at. */
  private mergeEntries(b: Merging, now: number, budget: number): number {
    // The snapshot may have changed since the batch was opened (another turn): judge by the current one.
    const svc = this.ctx.snapshot()?.services.get(b.service);
    const list = b.batch.entries;
    if (svc === undefined || svc.spec.affinity.mode !== "source-ip") {
      const n = list.length - b.next;
      b.next = list.length;
      return n;
    }
    const e = this.entries;
    const t = e.ensureTable(b.service);
    const grace = svc.spec.affinity.ttl * GRACE_FACTOR;
    const latest = now + CLOCK_SKEW_MS;
    const m = this.merges;
    const end = Math.min(list.length, b.next + budget);
    const start = b.next;
    for (; b.next < end; b.next++) {
      const x = list[b.next];
      let lastUsed = x.lastUsed;
      let created = x.created;
      if (lastUsed > latest || created > latest) {
        this.clampedEntries++;
        if (lastUsed > latest) lastUsed = latest;
        if (created > latest) created = latest;
      }
      // Names are interned only for entries that can be stored: a stale entry, or one naming a backend
      // this service does not have, would otherwise leave its strings in the interner for good.
      if (now - lastUsed >= grace) {
        m.stale++;
        continue;
      }
      if (!hasBackend(svc, x.backend)) {
        this.invalidEntries++;
        continue;
      }
      const result = e.merge(t, x.ip, e.names.intern(x.backend), e.names.intern(x.creator), x.gen, created, lastUsed, grace, now);
      switch (result) {
        case Merge.Stale:
          m.stale++;
          break;
        case Merge.New:
          m.new++;
          break;
        case Merge.Same:
          m.same++;
          break;
        case Merge.Won:
          m.won++;
          break;
        case Merge.Lost: {
          m.lost++;
          // The sender holds a binding that loses everywhere (it had not seen ours): tell it, unless
          // ours is in flight anyway (created or refreshed within the last two batch intervals).
          const slot = e.find(t, x.ip);
          if (now - e.written(slot) >= 2 * this.ctx.config.batchInterval) this.replicator?.enqueue(t, slot);
          break;
        }
      }
    }
    return end - start;
  }

  // ---- lifecycle ---------------------------------------------------------------------------------

  start(): void {
    this.replicator?.start();
    this.scheduleSweep();
  }

  private ttlOf(t: ServiceTable): number | null {
    const svc = this.ctx.snapshot()?.services.get(t.name);
    return svc !== undefined && svc.spec.affinity.mode === "source-ip" ? svc.spec.affinity.ttl : null;
  }

  /** Coarse expiry: a sweep every TTL/8 of the shortest TTL (within 0.1-2 s); lookups check TTLs themselves. */
  private scheduleSweep(): void {
    if (this.stopped) return;
    let shortest = Number.POSITIVE_INFINITY;
    for (const svc of this.ctx.snapshot()?.services.values() ?? []) {
      if (svc.spec.affinity.mode === "source-ip") shortest = Math.min(shortest, svc.spec.affinity.ttl);
    }
    const delay = Math.min(MAX_SWEEP_MS, Math.max(MIN_SWEEP_MS, shortest / 8));
    this.sweepTimer = setTimeout(() => {
      // Before the first snapshot no service is known: nothing to judge entries by yet.
      if (this.ctx.snapshot() !== null) {
        this.entries.sweep(Date.now(), (t) => this.ttlOf(t));
        this.checkOverflow(Date.now());
        if (this.entries.compactNames([this.ctx.id])) {
          this.self = this.entries.names.intern(this.ctx.id);
          this.cachedTable = null;
        }
      }
      this.scheduleSweep();
    }, delay);
    this.sweepTimer.unref();
  }

  /**
   * Running past maxEntries evicts live entries before their TTL (their clients may move): never
   * silently. One warning log per episode; the episode ends (one info log) when the table has room again.
   */
  checkOverflow(now: number): void {
    const e = this.entries;
    const evictedSinceSweep = e.evictions !== this.evictionsAtLastSweep;
    this.evictionsAtLastSweep = e.evictions;
    if (this.overflowSince === 0) return;
    if (!this.overflowLogged) {
      this.overflowLogged = true;
      this.ctx.log.warn(
        { maxEntries: e.maxEntries, entries: e.count, evicted: e.evictions - this.evictionsAtEpisodeStart },
        "affinity table full: evicting live entries before their TTL (their clients may move); raise affinity.maxEntries",
      );
      return;
    }
    if (!evictedSinceSweep && e.count < e.maxEntries * OVERFLOW_CLEAR_SHARE) {
      this.ctx.log.info({ evicted: e.evictions - this.evictionsAtEpisodeStart, lastedMs: now - this.overflowSince, entries: e.count }, "affinity table has room again: overflow ended");
      this.overflowSince = 0;
      this.overflowLogged = false;
    }
  }

  /** Conditions for /api/state and the status page: an overflow episode while it lasts. */
  warnings(): AffinityWarning[] {
    if (this.overflowSince === 0) return [];
    const e = this.entries;
    return [
      {
        kind: "affinity-overflow",
        message: `affinity table at affinity.maxEntries (${e.maxEntries}): ${e.evictions - this.evictionsAtEpisodeStart} live entries evicted before their TTL; their clients may move (raise affinity.maxEntries)`,
        since: this.overflowSince,
      },
    ];
  }

  async stop(): Promise<void> {
    this.stopped = true;
    if (this.sweepTimer) clearTimeout(this.sweepTimer);
    await this.replicator?.stop();
  }
}

/** Backend ids of a service state (any state: a drained or down backend's entries still count), once per snapshot. */
const backendIds = new WeakMap<ServiceState, Set<string>>();
function hasBackend(svc: ServiceState, id: string): boolean {
  let ids = backendIds.get(svc);
  if (ids === undefined) {
    ids = new Set(svc.backends.map((b) => b.id));
    backendIds.set(svc, ids);
  }
  return ids.has(id);
}
