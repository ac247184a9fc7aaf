// Writes queued affinity entries to etcd: per service, one put of up to batchMax entries per flush,
// (replication "exception": one per shard for the client records, plus one of the exceptions),
// flushes every batchInterval (or sooner, at most every batchInterval/4, once batchMax are queued).
// Each put is leased to a shared lease that outlives the batch's newest use by TTL + grace, so entries
// survive the node that wrote them and leave etcd on their own; one lease serves a TTL/4 window.
import type { KeySchema } from "../../shared/keys.js";
import type { Lease, Store } from "../control/store.js";
import type { Logger } from "../log.js";
import { type BatchEntry, encodeBatches } from "./batch.js";
import { type EntryStore, graceTtl, REFRESH_FACTOR, type ServiceTable } from "./entries.js";
import { recordKey, shardOf } from "./shards.js";

export interface ReplicatorOptions {
  store: Store;
  keys: KeySchema;
  nodeId: string;
  log: Logger;
  batchInterval: number;
  batchMax: number;
  /** The service's TTL in ms, or null when the service is gone or has affinity off. */
  ttlOf(t: ServiceTable): number | null;
  /**
   * Replication "exception": whether every node must hold this entry (its backend is not the table's
   * pick, or the service's pick is not the same on every node). Absent: "mesh", every entry goes to every node.
   */
  exceptionOf?(t: ServiceTable, slot: number): boolean;
  /** Replication "exception": whether the service's entries go to shard owners as client records (else only to every node). */
  sharded?(t: ServiceTable): boolean;
}

interface PooledLease {
  lease: Promise<Lease>;
  /** Taken before the grant request: etcd's countdown starts no earlier. */
  grantStart: number;
}

const MAX_BACKOFF_MS = 5_000;
const STOP_FLUSH_MS = 2_000;

export class Replicator {
  batches = 0;
  bytes = 0;
  entriesWritten = 0;
  /** Replication "exception": entries written to the broadcast prefix (exceptions), and client records to shards. */
  exceptionsWritten = 0;
  recordsWritten = 0;
  failures = 0;
  leaseGrants = 0;
  private timer: NodeJS.Timeout | null = null;
  private flushing: Promise<void> | null = null;
  private lastFlush = 0;
  private retryAt = 0;
  private failuresInRow = 0;
  private seq = 0;
  private readonly leases = new Map<number, PooledLease>();

  constructor(
    private readonly entries: EntryStore,
    private readonly opts: ReplicatorOptions,
  ) {}

  /** Queues a slot (once) for the next batch of its service; the cluster will know its current last use. */
  enqueue(t: ServiceTable, slot: number): void {
    const e = this.entries;
    e.setWritten(slot, e.lastUsed(slot));
    if (e.queued(slot)) return;
    e.setQueued(slot, true);
    t.queue.push(slot);
  }

  get queued(): number {
    let n = 0;
    for (const t of this.entries.tables) n += t.queue.length + t.exceptions.length;
    return n;
  }

  start(): void {
    const every = Math.max(5, Math.floor(this.opts.batchInterval / 4));
    this.timer = setInterval(() => this.tick(), every);
    this.timer.unref();
  }

  /** Stops the timer and writes what is still queued (bounded: etcd may be gone). */
  async stop(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    const last = (async () => {
      if (this.flushing) await this.flushing;
      await this.flush();
    })();
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([last, new Promise<void>((r) => (timer = setTimeout(r, STOP_FLUSH_MS)))]);
    clearTimeout(timer);
  }

  private tick(): void {
    if (this.flushing) return;
    const now = Date.now();
    if (now < this.retryAt) return;
    const intervalDue = now - this.lastFlush >= this.opts.batchInterval;
    let due = false;
    for (const t of this.entries.tables) {
      // Exceptions written for a table change go at once: until they arrive, other nodes pick by the new table.
      if (t.exceptions.length > 0 || (t.queue.length > 0 && (intervalDue || t.queue.length >= this.opts.batchMax))) {
        due = true;
        break;
      }
    }
    if (!due) return;
    this.lastFlush = now;
    this.flushing = this.flush().finally(() => {
      this.flushing = null;
    });
  }

  /** One put (split only past MAX_BATCH_BYTES) per service with queued entries (per shard and service for records). */
  private async flush(): Promise<void> {
    const e = this.entries;
    const writes: Promise<void>[] = [];
    const exceptionOf = this.opts.exceptionOf;
    for (const t of e.tables) {
      if (t.queue.length === 0 && t.exceptions.length === 0) continue;
      const ttl = this.opts.ttlOf(t);
      const items: BatchEntry[] = [];
      const records = new Map<number, BatchEntry[]>();
      const sharded = exceptionOf !== undefined && this.opts.sharded?.(t) === true;
      let i = 0;
      for (; i < t.queue.length && items.length < this.opts.batchMax; i++) {
        const slot = t.queue[i];
        // The slot may have been freed or handed to another client since it was queued.
        if (!e.ownedBy(slot, t) || !e.queued(slot)) continue;
        e.setQueued(slot, false);
        if (ttl === null) continue;
        const item = this.item(slot);
        if (exceptionOf === undefined) {
          items.push(item);
          continue;
        }
        // Replication "exception": every entry is a client record for its shard's owners (of services
        // whose pick is the same on every node); only exceptions go to every node.
        if (sharded) {
          const shard = shardOf(item.ip);
          let list = records.get(shard);
          if (list === undefined) {
            list = [];
            records.set(shard, list);
          }
          list.push(item);
        }
        if (exceptionOf(t, slot)) {
          e.setExcepted(slot, true);
          items.push(item);
        }
      }
      t.queue = i >= t.queue.length ? [] : t.queue.slice(i);
      let j = 0;
      for (; j < t.exceptions.length && items.length < 2 * this.opts.batchMax; j++) {
        const slot = t.exceptions[j];
        if (!e.ownedBy(slot, t) || !e.excQueued(slot)) continue;
        e.setExcQueued(slot, false);
        if (ttl === null || exceptionOf === undefined || !exceptionOf(t, slot)) continue;
        e.setExcepted(slot, true);
        items.push(this.item(slot));
      }
      t.exceptions = j >= t.exceptions.length ? [] : t.exceptions.slice(j);
      if (ttl === null) continue;
      if (items.length > 0) writes.push(this.write(t, ttl, items, null));
      for (const [shard, list] of records) writes.push(this.write(t, ttl, list, shard));
    }
    await Promise.all(writes);
  }

  private item(slot: number): BatchEntry {
    const e = this.entries;
    return { ip: e.ip(slot), backend: e.backendName(slot), lastUsed: e.lastUsed(slot), created: e.created(slot), gen: e.gen(slot), creator: e.creatorName(slot) };
  }

  /** `shard` null: the broadcast prefix every node watches (all entries in "mesh", exceptions in "exception"). */
  private async write(t: ServiceTable, ttl: number, items: BatchEntry[], shard: number | null): Promise<void> {
    const { store, keys, nodeId } = this.opts;
    try {
      const lease = await this.leaseFor(ttl);
      for (const value of encodeBatches(nodeId, items)) {
        const seq = this.nextSeq();
        await store.put(shard === null ? keys.affinityBatch(t.name, nodeId, seq) : recordKey(keys, shard, t.name, nodeId, seq), value, { lease: lease.id });
        this.batches++;
        this.bytes += value.length;
      }
      this.entriesWritten += items.length;
      if (this.opts.exceptionOf !== undefined) {
        if (shard === null) this.exceptionsWritten += items.length;
        else this.recordsWritten += items.length;
      }
      this.failuresInRow = 0;
    } catch (err) {
      this.failures++;
      this.failuresInRow++;
      // The lease may be what failed (expired, etcd restarted without it): take a fresh one next time.
      this.leases.clear();
      this.retryAt = Date.now() + Math.min(MAX_BACKOFF_MS, this.opts.batchInterval * 2 ** this.failuresInRow);
      const level = this.failuresInRow === 1 ? "warn" : "debug";
      this.opts.log[level]({ service: t.name, entries: items.length, err: (err as Error).message }, "affinity batch write failed; retrying");
      this.requeue(t, items);
    }
  }

  private requeue(t: ServiceTable, items: BatchEntry[]): void {
    const e = this.entries;
    for (const item of items) {
      const slot = e.find(t, item.ip);
      if (slot < 0 || e.queued(slot)) continue;
      e.setQueued(slot, true);
      t.queue.push(slot);
    }
  }

  /**
   * A lease expiring at least TTL + grace after now, shared by every batch of that TTL for a window of
   * TTL/4: entries leave etcd between TTL + grace and TTL + grace + TTL/4 after their last use.
   */
  private leaseFor(ttl: number): Promise<Lease> {
    const grace = graceTtl(ttl);
    const ttlSeconds = Math.max(1, Math.ceil((grace + ttl * REFRESH_FACTOR) / 1000));
    const now = Date.now();
    const pooled = this.leases.get(ttlSeconds);
    if (pooled && now + grace <= pooled.grantStart + ttlSeconds * 1000) return pooled.lease;
    const lease = this.opts.store.grantLease(ttlSeconds, false);
    this.leaseGrants++;
    this.leases.set(ttlSeconds, { lease, grantStart: now });
    lease.catch(() => {
      if (this.leases.get(ttlSeconds)?.lease === lease) this.leases.delete(ttlSeconds);
    });
    return lease;
  }

  /** Batch keys: milliseconds, strictly increasing, so a restarted node does not overwrite its own earlier keys. */
  private nextSeq(): number {
    const now = Date.now();
    this.seq = now > this.seq ? now : this.seq + 1;
    return this.seq;
  }
}
