// Session affinity shared by the whole cluster (issue 5): the router's synchronous lookup/record on the
// local table, replication of new and refreshed entries to etcd in leased batches, and the merge of
// every other node's batches arriving through the cluster watch.
import type client from "prom-client";
import type { KeySchema } from "../../shared/keys.js";
import type { NodeConfig } from "../../shared/schema.js";
import type { AffinitySink } from "../control/reconciler.js";
import type { KeyValue, Store, StoreEvent, SyncHandle } from "../control/store.js";
import type { AffinityHook } from "../data/router.js";
import { hashString } from "../lb/hash.js";
import { forwardingOf } from "../model/forwarder.js";
import type { Logger } from "../log.js";
import type { ServiceState, Snapshot, Target } from "../model/snapshot.js";
import { type DecodedBatch, decodeBatch } from "./batch.js";
import { EntryStore, GRACE_FACTOR, Merge, REFRESH_FACTOR, type ServiceTable } from "./entries.js";
import { AffinityMetrics } from "./metrics.js";
import { Replicator } from "./replicator.js";
import { ownedShards, parseRecordKey, shardOf, shardPrefix } from "./shards.js";

interface Received {
  key: string;
  service: string;
  value: Buffer;
  /** From a watch event (counts towards replication lag), not from a (re)list. */
  live: boolean;
  /** Replication "exception": a client record from a shard this node owns (else an entry every node gets). */
  record: boolean;
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
  record: boolean;
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
  /** The node lease TTL in seconds (how long a dead node's record, and its shards, outlive it). */
  readonly leaseTtlS?: number;
  /** Replication "exception": the node records (who owns which shard). Absent: this node owns no shard. */
  nodes?(): Iterable<{ readonly id: string; readonly ready: boolean }>;
}

/**
 * Replication "exception": after a service's table changed, a client with no entry on this node is
 * routed by the previous table for this long (if that backend still takes new clients), so the shard
 * owners' exceptions for existing clients arrive before the new table decides for them. At least the
 * node lease TTL and 2 s more: when both owners of a shard died just before the change, their node
 * records (and so their ownership) last until their leases expire; only then do new owners list the
 * shard and write its exceptions, and the hold must still be on.
 */
export function holdMs(batchInterval: number, leaseTtlS = 0): number {
  return Math.max(2_000 + 4 * batchInterval, leaseTtlS * 1000 + 2_000);
}
/** Slots looked at per event-loop turn when shard owners look for new exceptions after a table change. */
const SCAN_SLOTS_PER_TURN = 16_384;

/** Per service, replication "exception": the previous table during the hold after a change. */
interface TableChange {
  picker: ServiceState["picker"];
  previous: ServiceState["picker"] | null;
  holdUntil: number;
}

export class AffinityTable implements AffinityHook, AffinitySink {
  readonly entries: EntryStore;
  /** Null in standalone mode: one node, nothing to share. */
  readonly replicator: Replicator | null;
  readonly metrics: AffinityMetrics;
  /** superseded: records that lost to a binding whose backend is lost, taken as the client's move (replication "exception"). */
  readonly merges = { new: 0, same: 0, won: 0, lost: 0, stale: 0, superseded: 0 };
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
  /** Replication "exception" (else null): shards this node owns and their syncs. */
  private readonly shards: Map<number, SyncHandle> | null;
  private readonly changes = new Map<string, TableChange>();
  /** Replication "exception": whether the applied snapshot has a service whose records are sharded. */
  private sharding = false;
  private scanning: { tables: Set<string>; next: number } | null = null;
  /** Routed by the previous table during a hold (replication "exception"). */
  held = 0;

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
          exceptionOf: c.replication === "exception" ? (t, slot) => this.exceptionOf(t, slot) : undefined,
          sharded: (t) => {
            const svc = this.ctx.snapshot()?.services.get(t.name);
            return svc !== undefined && sameEverywhere(svc);
          },
        });
    this.shards = ctx.store !== null && c.replication === "exception" ? new Map() : null;
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
      return this.changes.size === 0 ? null : this.heldPick(svc, ip, now);
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

  /**
   * Replication "exception", during the hold after a table change: the previous table's pick for a
   * client with no entry, if that backend still takes new clients. An existing client keeps its
   * backend until the shard owners' exception for it arrives; a new one gets an entry that is an
   * exception of the new table, which every node then learns.
   */
  private heldPick(svc: ServiceState, ip: string, now: number, count = true): Target | null {
    const c = this.changes.get(svc.name);
    if (c === undefined || c.previous === null || now >= c.holdUntil || c.picker !== svc.picker) return null;
    const prev = c.previous.peek(hashString(ip), null);
    if (prev === null) return null;
    const cur = svc.sticky.get(prev.id);
    if (cur === undefined || !svc.targets.includes(cur)) return null;
    if (count) this.held++;
    return cur;
  }

  /** lookup() without its counters or side effects (route explain): the same answer a connection would get. */
  peek(svc: ServiceState, ip: string, now: number): Target | null {
    const e = this.entries;
    const t = e.table(svc.name);
    const slot = t === undefined ? -1 : e.find(t, ip);
    if (slot < 0) return this.changes.size === 0 ? null : this.heldPick(svc, ip, now, false);
    if (now - e.lastUsed(slot) >= svc.spec.affinity.ttl * GRACE_FACTOR) return null;
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
    this.inbox.push({ key, service: k.service!, value, live, record: false });
  }

  // ---- replication "exception": shards, table changes ---------------------------------------------

  /**
   * Whether every node must hold this entry: its backend is not what the service's table picks for
   * the client, or the service's pick is not the same on every node (a zone plan, a flow hash, a
   * kernel-forwarded service hashing in nftables), so only an entry everywhere keeps the client.
   * During the hold after a table change also when the previous table picks otherwise: nodes without
   * an entry route by that table then (a client of a backend that left and came back, who did not
   * return meanwhile, would otherwise go to the previous table's pick for the hold, and that node
   * would keep it there).
   */
  private exceptionOf(t: ServiceTable, slot: number): boolean {
    const svc = this.ctx.snapshot()?.services.get(t.name);
    if (svc === undefined || !sameEverywhere(svc)) return true;
    const h = hashString(this.entries.ip(slot));
    const backend = this.entries.backendName(slot);
    const pick = svc.picker.peek(h, null);
    if (pick === null || pick.id !== backend) return true;
    const c = this.changes.get(t.name);
    if (c === undefined || c.previous === null || c.picker !== svc.picker || Date.now() >= c.holdUntil) return false;
    const prev = c.previous.peek(h, null);
    return prev !== null && prev.id !== backend;
  }

  /** The node records changed: take up the shards this node now owns, let go of the others. */
  membershipChanged(): void {
    if (this.shards === null || this.stopped || this.ctx.nodes === undefined) return;
    const ids: string[] = [];
    let registered = false;
    for (const n of this.ctx.nodes()) {
      if (n.id === this.ctx.id) registered = true;
      if (n.ready || n.id === this.ctx.id) ids.push(n.id);
    }
    // Before its own record is in, a node owns nothing: it would otherwise list every shard at once.
    // Nor while no service shards its records (no source-ip affinity on a table that is the same on
    // every node): a cluster without such a service keeps no shard watches and never touches the
    // records prefix (an etcd role limited to the cluster prefix keeps working).
    const owned = registered && this.sharding ? ownedShards(this.ctx.id, ids) : new Set<number>();
    for (const [shard, handle] of this.shards) {
      if (owned.has(shard)) continue;
      this.shards.delete(shard);
      void handle.stop();
    }
    for (const shard of owned) {
      if (this.shards.has(shard)) continue;
      this.shards.set(shard, this.ctx.store!.sync(shardPrefix(this.ctx.keys, shard), this.shardSink(shard)));
    }
  }

  /** Shards this node owns now (replication "exception"). */
  get ownedShards(): number[] {
    return this.shards === null ? [] : [...this.shards.keys()].sort((a, b) => a - b);
  }

  private shardSink(shard: number) {
    const take = (key: string, value: Buffer, live: boolean) => {
      if (this.shards?.has(shard) !== true) return;
      const k = parseRecordKey(this.ctx.keys, key);
      if (typeof k === "string") {
        this.invalidBatches++;
        this.ctx.log.debug({ key, reason: k }, "invalid affinity record key skipped");
        return;
      }
      if (live && k.node === this.ctx.id) return;
      this.inbox.push({ key, service: k.service, value, live, record: true });
    };
    return {
      reset: (kvs: KeyValue[]) => {
        for (const kv of kvs) take(kv.key, kv.value, false);
        this.scheduleMerge();
      },
      events: (events: StoreEvent[]) => {
        for (const ev of events) if (ev.type === "put") take(ev.key, ev.value, true);
        this.scheduleMerge();
      },
      status: () => {},
    };
  }

  /**
   * A new snapshot (replication "exception"): for each service whose table changed, hold the previous
   * table for clients without an entry, and look through the records of owned shards for clients
   * whose pick moved: those become exceptions.
   */
  applied(snap: Snapshot): void {
    if (this.ctx.config.replication !== "exception" || this.stopped) return;
    const now = Date.now();
    const changed = new Set<string>();
    let sharding = false;
    for (const svc of snap.services.values()) if (svc.spec.affinity.mode === "source-ip" && sameEverywhere(svc)) sharding = true;
    if (sharding !== this.sharding) {
      this.sharding = sharding;
      this.membershipChanged();
    }
    for (const svc of snap.services.values()) {
      if (svc.spec.affinity.mode !== "source-ip" || !sameEverywhere(svc)) {
        this.changes.delete(svc.name);
        continue;
      }
      const c = this.changes.get(svc.name);
      if (c === undefined) {
        this.changes.set(svc.name, { picker: svc.picker, previous: null, holdUntil: 0 });
        continue;
      }
      if (c.picker === svc.picker) continue;
      // A change during a hold (a slow-start step, a verdict flipping back) keeps the table from before
      // the hold: clients without an entry followed that one, and have no exception for any other.
      const previous = c.previous !== null && now < c.holdUntil ? c.previous : c.picker;
      this.changes.set(svc.name, { picker: svc.picker, previous, holdUntil: now + holdMs(this.ctx.config.batchInterval, this.ctx.leaseTtlS) });
      changed.add(svc.name);
    }
    for (const name of this.changes.keys()) if (!snap.services.has(name)) this.changes.delete(name);
    if (changed.size > 0 && this.shards !== null) {
      if (this.scanning === null) {
        this.scanning = { tables: changed, next: 0 };
        setImmediate(() => this.scanSome());
      } else {
        // A scan is under way: start over for the union (the earlier slots may have moved again).
        for (const n of changed) this.scanning.tables.add(n);
        this.scanning.next = 0;
      }
    }
  }

  /** One turn of the owners' scan for new exceptions. */
  private scanSome(): void {
    const sc = this.scanning;
    if (sc === null || this.stopped) return;
    const e = this.entries;
    const end = Math.min(e.highWater, sc.next + SCAN_SLOTS_PER_TURN);
    const tables = e.tables.filter((t) => sc.tables.has(t.name));
    for (let slot = sc.next; slot < end; slot++) {
      for (const t of tables) if (e.ownedBy(slot, t)) this.considerException(t, slot);
    }
    sc.next = end;
    if (end < e.highWater) setImmediate(() => this.scanSome());
    else this.scanning = null;
  }

  /** An owner's check of one record: queue it as an exception if its backend is no longer the pick. */
  private considerException(t: ServiceTable, slot: number): void {
    const e = this.entries;
    if (e.excepted(slot) || e.excQueued(slot) || this.shards === null || !this.shards.has(shardOf(e.ip(slot)))) return;
    const svc = this.ctx.snapshot()?.services.get(t.name);
    // A service whose pick differs per node has every entry everywhere already (its seer broadcasts it).
    if (svc === undefined || !sameEverywhere(svc) || Date.now() - e.lastUsed(slot) >= svc.spec.affinity.ttl * GRACE_FACTOR) return;
    // A client whose backend left (removed, down) moves anyway: no exception keeps it there.
    if (!svc.sticky.has(e.backendName(slot)) || !this.exceptionOf(t, slot)) return;
    e.setExcQueued(slot, true);
    t.exceptions.push(slot);
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
      this.ctx.log.debug({ key: r.key, service: r.service, err: (err as Error).message }, "invalid affinity batch skipped");
      return null;
    }
    this.batchesReceived++;
    this.invalidEntries += batch.skipped;
    if (r.live) this.metrics.replicationLag.observe(Math.max(0, now - Math.min(batch.base, now + CLOCK_SKEW_MS)) / 1000);
    return { service: r.service, record: r.record, batch, next: 0 };
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
      if (this.shards !== null && result !== Merge.Stale) {
        const slot = e.find(t, x.ip);
        // An exception every node got (unless ours won, which is then sent as one where it differs);
        // a record of an owned shard: an exception if the table no longer picks its backend.
        if (!b.record) {
          if (result !== Merge.Lost) e.setExcepted(slot, true);
        } else this.considerException(t, slot);
      }
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
          const slot = e.find(t, x.ip);
          if (b.record && this.supersede(svc, t, slot, x.backend, x.creator, created, lastUsed)) {
            m.superseded++;
            break;
          }
          m.lost++;
          // The sender holds a binding that loses everywhere (it had not seen ours): tell it, unless
          // ours is in flight anyway (created or refreshed within the last two batch intervals).
          if (now - e.written(slot) >= 2 * this.ctx.config.batchInterval) this.replicator?.enqueue(t, slot);
          break;
        }
      }
    }
    return end - start;
  }

  /**
   * Replication "exception", a shard owner merging a record that lost to the entry it holds: a node
   * that held no entry for the client (it is no owner, and the entry was no exception) routed it by
   * the table and recorded a first binding, which loses to the older one. When the older binding's
   * backend is lost (gone, down, disabled) and the record is a later use of a backend that takes the
   * client, the client has moved, exactly as a look-up here would have moved it: the owner records
   * that move as the next generation (the same on both owners: same backend, creator and times), so
   * that when the old backend returns its exception keeps the client where it went (moved once).
   */
  private supersede(svc: ServiceState, t: ServiceTable, slot: number, backend: string, creator: string, created: number, lastUsed: number): boolean {
    const e = this.entries;
    if (slot < 0 || svc.sticky.has(e.backendName(slot)) || !svc.sticky.has(backend) || lastUsed <= e.lastUsed(slot)) return false;
    e.setBinding(slot, e.names.intern(backend), e.names.intern(creator), e.gen(slot) + 1, created, lastUsed);
    // Both owners make this binding: each writes it (to its shard, and as an exception where it
    // differs from the table's pick), and every node that merges both sees one binding.
    this.replicator?.enqueue(t, slot);
    return true;
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
    if (this.shards !== null) {
      await Promise.all([...this.shards.values()].map((h) => h.stop()));
      this.shards.clear();
    }
    await this.replicator?.stop();
  }
}

/**
 * Whether every node picks the same backend for a client from the snapshot alone: a proxied service
 * hashing the source address only, with no zone plan (zone plans differ per node; a nat service's
 * kernel hashes with jhash, not the userspace table). Other services replicate every entry.
 */
function sameEverywhere(svc: ServiceState): boolean {
  return svc.hashSourceOnly && svc.zones === null && forwardingOf(svc.spec) === "proxy";
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
