// In-process Store for standalone (YAML) mode and pure-logic tests: a Map with a revision counter and
// the same contract as the etcd store (one revision per write, sync = reset then ordered events,
// leases with TTL timers, election by lowest create revision, fenced writes).

import { LossSignal, type LostCallback } from "./loss.js";
import {
  type KeyValue,
  type Leadership,
  type Lease,
  type PutOptions,
  type Store,
  StoreError,
  type StoreEvent,
  type SyncHandle,
  type SyncSink,
  type TxnCompare,
  type TxnOp,
} from "./store.js";

interface Entry {
  value: Buffer;
  createRevision: number;
  modRevision: number;
  lease: string;
}

const RESYNC_DELAY_MS = 100;

function toBuffer(value: Buffer | string): Buffer {
  return typeof value === "string" ? Buffer.from(value) : value;
}

/** Byte order, as etcd sorts keys. */
function byKey(a: string, b: string): number {
  return Buffer.compare(Buffer.from(a), Buffer.from(b));
}

function closedError(): StoreError {
  return new StoreError("STORE_CLOSED", "the store is closed", false);
}

export class MemoryStore implements Store {
  private revision = 1; // etcd's revision of an empty store
  private readonly data = new Map<string, Entry>();
  private readonly syncs = new Set<MemorySync>();
  private readonly leases = new Map<string, MemoryLease>();
  private readonly leaderships = new Set<MemoryLeadership>();
  private readonly campaigns = new Set<PendingCampaign>();
  private nextLeaseId = 1;
  private settleScheduled = false;
  private closed = false;

  sync(prefix: string, sink: SyncSink): SyncHandle {
    this.assertOpen();
    const sync = new MemorySync(prefix, sink, () => this.snapshot(prefix), () => this.syncs.delete(sync));
    this.syncs.add(sync);
    return sync;
  }

  async get(key: string): Promise<KeyValue | null> {
    this.assertOpen();
    const entry = this.data.get(key);
    return entry === undefined ? null : toKeyValue(key, entry);
  }

  async list(prefix: string): Promise<{ kvs: KeyValue[]; revision: number }> {
    this.assertOpen();
    return this.snapshot(prefix);
  }

  async put(key: string, value: Buffer | string, opts?: PutOptions): Promise<number> {
    this.assertOpen();
    const lease = opts?.lease ?? "0";
    if (lease !== "0" && !this.leases.has(lease)) {
      throw new StoreError("STORE_UNAVAILABLE", "put: requested lease not found", false);
    }
    return this.write([{ type: "put", key, value: toBuffer(value), lease }]);
  }

  async delete(key: string): Promise<boolean> {
    this.assertOpen();
    if (!this.data.has(key)) return false;
    this.write([{ type: "delete", key }]);
    return true;
  }

  async deletePrefix(prefix: string): Promise<number> {
    this.assertOpen();
    if (prefix === "") throw new RangeError("deletePrefix: refusing to delete the whole keyspace");
    const keys = this.keysUnder(prefix);
    if (keys.length > 0) this.write(keys.map((key) => ({ type: "delete", key })));
    return keys.length;
  }

  async grantLease(ttlSeconds: number, keepAlive: boolean): Promise<Lease> {
    this.assertOpen();
    return this.grant(ttlSeconds, keepAlive);
  }

  async txn(compares: readonly TxnCompare[], ops: readonly TxnOp[]): Promise<{ succeeded: boolean; revision: number }> {
    this.assertOpen();
    for (const c of compares) if ((this.data.get(c.key)?.modRevision ?? 0) !== c.modRevision) return { succeeded: false, revision: this.revision };
    if (ops.length === 0) return { succeeded: true, revision: this.revision };
    const revision = this.write(
      ops.map((op): Mutation => ("put" in op ? { type: "put", key: op.put, value: toBuffer(op.value), lease: op.lease ?? "0" } : { type: "delete", key: op.delete })),
    );
    return { succeeded: true, revision };
  }

  async campaign(electionPrefix: string, candidate: string, ttlSeconds: number): Promise<Leadership> {
    this.assertOpen();
    const lease = this.grant(ttlSeconds, true);
    const key = `${electionPrefix}${BigInt(lease.id).toString(16)}`;
    const term = this.write([{ type: "put", key, value: Buffer.from(candidate), lease: lease.id }]);
    return new Promise((resolve, reject) => {
      this.campaigns.add({ prefix: electionPrefix, candidate, ttlSeconds, key, term, lease, resolve, reject });
      this.scheduleSettle();
    });
  }

  async leader(electionPrefix: string): Promise<string | null> {
    this.assertOpen();
    const first = this.oldestUnder(electionPrefix);
    return first === null ? null : this.data.get(first)!.value.toString();
  }

  /** Test hook: the lease expires now, as if its keepalives had stopped for longer than its TTL. */
  expireLease(id: string): void {
    this.leases.get(id)?.end("lost", "expired");
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (const sync of this.syncs) await sync.stop();
    for (const leadership of this.leaderships) leadership.end("store closed");
    for (const campaign of this.campaigns) campaign.reject(closedError());
    this.campaigns.clear();
    for (const lease of this.leases.values()) lease.end("revoked", "store closed");
  }

  private assertOpen(): void {
    if (this.closed) throw closedError();
  }

  private snapshot(prefix: string): { kvs: KeyValue[]; revision: number } {
    return { kvs: this.keysUnder(prefix).map((key) => toKeyValue(key, this.data.get(key)!)), revision: this.revision };
  }

  private keysUnder(prefix: string): string[] {
    const keys: string[] = [];
    for (const key of this.data.keys()) if (key.startsWith(prefix)) keys.push(key);
    return keys.sort(byKey);
  }

  private oldestUnder(prefix: string): string | null {
    let oldest: string | null = null;
    let oldestRevision = Number.POSITIVE_INFINITY;
    for (const [key, entry] of this.data) {
      if (key.startsWith(prefix) && entry.createRevision < oldestRevision) {
        oldest = key;
        oldestRevision = entry.createRevision;
      }
    }
    return oldest;
  }

  /** Applies the mutations as one revision and tells every sync whose prefix they touch. */
  private write(mutations: Mutation[]): number {
    const revision = ++this.revision;
    const events: StoreEvent[] = [];
    for (const m of mutations) {
      if (m.type === "put") {
        const existing = this.data.get(m.key);
        this.data.set(m.key, {
          value: m.value,
          createRevision: existing?.createRevision ?? revision,
          modRevision: revision,
          lease: m.lease,
        });
        events.push({ type: "put", key: m.key, value: m.value, modRevision: revision });
      } else if (this.data.delete(m.key)) {
        events.push({ type: "delete", key: m.key, value: Buffer.alloc(0), modRevision: revision });
      }
    }
    for (const sync of this.syncs) sync.deliver(events, revision);
    this.scheduleSettle();
    return revision;
  }

  private grant(ttlSeconds: number, keepAlive: boolean): MemoryLease {
    if (!(ttlSeconds >= 1)) throw new RangeError(`lease TTL must be at least 1 second, got ${ttlSeconds}`);
    const id = String(this.nextLeaseId++);
    const lease = new MemoryLease(id, () => {
      this.leases.delete(id);
      const keys = [...this.data].filter(([, e]) => e.lease === id).map(([k]) => k);
      if (keys.length > 0 && !this.closed) this.write(keys.map((key) => ({ type: "delete", key })));
    });
    this.leases.set(id, lease);
    // In-process keepalives cannot fail: a kept-alive lease lives until revoked (or expireLease()).
    if (!keepAlive) lease.expireAfter(ttlSeconds);
    return lease;
  }

  private scheduleSettle(): void {
    if (this.settleScheduled) return;
    this.settleScheduled = true;
    queueMicrotask(() => {
      this.settleScheduled = false;
      this.settle();
    });
  }

  /** After writes: end leaderships whose key is gone, elect waiting candidates whose turn it is. */
  private settle(): void {
    if (this.closed) return;
    for (const leadership of this.leaderships) {
      if (!this.holds(leadership.key, Number(leadership.term))) leadership.end("election key deleted");
    }
    for (const c of this.campaigns) {
      if (!this.holds(c.key, c.term)) {
        // Our key vanished while waiting (lease expired): stand again with a new lease, as etcd does.
        this.campaigns.delete(c);
        c.lease.end("revoked", "restarting campaign");
        this.campaign(c.prefix, c.candidate, c.ttlSeconds).then(c.resolve, c.reject);
      } else if (this.oldestUnder(c.prefix) === c.key) {
        this.campaigns.delete(c);
        const leadership = new MemoryLeadership(c.key, String(c.term), c.lease, {
          holds: () => this.holds(c.key, c.term),
          put: (key, value) => this.write([{ type: "put", key, value, lease: "0" }]),
          del: (key) => {
            if (this.data.has(key)) this.write([{ type: "delete", key }]);
          },
          forget: (l) => this.leaderships.delete(l),
        });
        this.leaderships.add(leadership);
        c.resolve(leadership);
      }
    }
  }

  private holds(key: string, term: number): boolean {
    return this.data.get(key)?.createRevision === term;
  }
}

type Mutation = { type: "put"; key: string; value: Buffer; lease: string } | { type: "delete"; key: string };

interface PendingCampaign {
  prefix: string;
  candidate: string;
  ttlSeconds: number;
  key: string;
  term: number;
  lease: MemoryLease;
  resolve(leadership: Leadership): void;
  reject(err: unknown): void;
}

function toKeyValue(key: string, entry: Entry): KeyValue {
  return { key, value: entry.value, modRevision: entry.modRevision, lease: entry.lease };
}

/** Sink calls go through one FIFO drained in a microtask: never nested, always in revision order. */
class MemorySync implements SyncHandle {
  private queue: (() => void)[] = [];
  private scheduled = false;
  private stopped = false;

  constructor(
    private readonly prefix: string,
    private readonly sink: SyncSink,
    private readonly snapshot: () => { kvs: KeyValue[]; revision: number },
    private readonly onStopped: () => void,
  ) {
    this.resync();
  }

  deliver(events: StoreEvent[], revision: number): void {
    const mine = events.filter((e) => e.key.startsWith(this.prefix));
    if (mine.length > 0) this.enqueue(() => this.sink.events(mine, revision));
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.queue = [];
    this.onStopped();
  }

  private resync(): void {
    const { kvs, revision } = this.snapshot();
    this.enqueue(() => this.sink.reset(kvs, revision));
    this.enqueue(() => this.sink.status(true));
  }

  private enqueue(call: () => void): void {
    if (this.stopped) return;
    this.queue.push(call);
    if (this.scheduled) return;
    this.scheduled = true;
    queueMicrotask(() => this.drain());
  }

  private drain(): void {
    this.scheduled = false;
    const calls = this.queue;
    this.queue = [];
    for (let i = 0; i < calls.length; i++) {
      if (this.stopped) return;
      try {
        calls[i]();
      } catch (err) {
        // Like the etcd store: a throwing sink is told, then given a fresh state a little later.
        this.queue = [];
        try {
          this.sink.status(false, `sink threw: ${err instanceof Error ? err.message : String(err)}`);
        } catch {
          // ignore
        }
        setTimeout(() => {
          if (!this.stopped) this.resync();
        }, RESYNC_DELAY_MS).unref();
        return;
      }
    }
  }
}

class MemoryLease implements Lease {
  private readonly loss = new LossSignal();
  private timer: NodeJS.Timeout | undefined;

  constructor(
    readonly id: string,
    private readonly release: () => void,
  ) {}

  expireAfter(ttlSeconds: number): void {
    this.timer = setTimeout(() => this.end("lost", `expired after its ${ttlSeconds}s TTL`), ttlSeconds * 1_000);
    this.timer.unref();
  }

  onLost(cb: LostCallback): void {
    this.loss.onLost(cb);
  }

  async revoke(): Promise<void> {
    this.end("revoked", "revoked");
  }

  end(how: "lost" | "revoked", reason: string): void {
    // Listeners are queued before the release's writes settle, so a leadership hears "lease lost"
    // (the cause) rather than "election key deleted" (its consequence), as with etcd.
    if (!(how === "lost" ? this.loss.lose(reason) : this.loss.end())) return;
    clearTimeout(this.timer);
    this.release();
  }
}

interface LeadershipOps {
  holds(): boolean;
  put(key: string, value: Buffer): void;
  del(key: string): void;
  forget(leadership: MemoryLeadership): void;
}

class MemoryLeadership implements Leadership {
  private readonly loss = new LossSignal();
  private resigned = false;

  constructor(
    readonly key: string,
    readonly term: string,
    private readonly lease: MemoryLease,
    private readonly ops: LeadershipOps,
  ) {
    lease.onLost((reason) => this.end(`lease lost: ${reason}`));
  }

  async fencedPut(key: string, value: Buffer | string): Promise<boolean> {
    return this.fenced(() => this.ops.put(key, toBuffer(value)));
  }

  async fencedDelete(key: string): Promise<boolean> {
    return this.fenced(() => this.ops.del(key));
  }

  onLost(cb: LostCallback): void {
    this.loss.onLost(cb);
  }

  async resign(): Promise<void> {
    if (this.resigned) return;
    this.resigned = true;
    this.loss.end();
    this.ops.forget(this);
    // Revoking deletes the election key with every other key on the lease.
    this.lease.end("revoked", "resigned");
  }

  end(reason: string): void {
    if (!this.loss.lose(reason)) return;
    this.ops.forget(this);
    this.lease.end("revoked", reason);
  }

  private fenced(write: () => void): boolean {
    if (!this.loss.live) return false;
    if (!this.ops.holds()) {
      this.end("fenced write refused: the election key no longer carries our term");
      return false;
    }
    write();
    return true;
  }
}
