// The local affinity table's storage: every entry of every service in typed arrays (one slot per
// entry), a Map per service from client IP to slot, one LRU list across services, and the merge rule.
//
// Why typed arrays: a million entries as JS objects cost ~200 B each (object header, boxed doubles,
// list pointers); as slots they cost the Map entry, the IP string and ~50 B of arrays, and a hit
// reads and writes numbers in place without allocating.

/** Entries live TTL + TTL/4 after the last use a node knows of: other nodes publish uses at most once per TTL/4. */
export const GRACE_FACTOR = 1.25;
/** A live entry's use is published again once it is this fraction of the TTL older than what the cluster knows. */
export const REFRESH_FACTOR = 0.25;

export function graceTtl(ttlMs: number): number {
  return ttlMs * GRACE_FACTOR;
}

const NONE = -1;
const INITIAL_CAPACITY = 1024;
/** Slot flag: queued for replication. */
export const QUEUED = 1;

/** Strings (backend ids, node ids) as small integers, so slots hold numbers. Grows only with distinct ids. */
export class Interner {
  private readonly index = new Map<string, number>();
  readonly names: string[] = [];

  intern(name: string): number {
    let i = this.index.get(name);
    if (i === undefined) {
      i = this.names.length;
      this.names.push(name);
      this.index.set(name, i);
    }
    return i;
  }
}

/** One service's entries: its IP index and the counters /api/state and metrics read. */
export class ServiceTable {
  readonly index = new Map<string, number>();
  /** Slots waiting to be written (a slot may be stale: the writer checks its flag and owner). */
  queue: number[] = [];
  hits = 0;
  misses = 0;
  /** Lookups that found an entry older than its TTL (a new pick follows). */
  expired = 0;
  /** Lookups that found an entry whose backend may no longer take sessions (down, disabled, removed). */
  moved = 0;

  constructor(
    readonly id: number,
    readonly name: string,
  ) {}

  get size(): number {
    return this.index.size;
  }
}

/**
 * Which of two bindings of the same client wins, on every node alike: a higher generation (a deliberate
 * re-pick after the backend was lost or the entry expired) beats a lower one; within a generation the
 * earliest created wins (a node that had not yet seen the entry made the later one), then the lower
 * node id (and, for a total order, the lower backend id). True when binding a wins over binding b.
 */
export function wins(aGen: number, aCreated: number, aNode: string, aBackend: string, bGen: number, bCreated: number, bNode: string, bBackend: string): boolean {
  if (aGen !== bGen) return aGen > bGen;
  if (aCreated !== bCreated) return aCreated < bCreated;
  if (aNode !== bNode) return aNode < bNode;
  return aBackend < bBackend;
}

export enum Merge {
  /** The incoming entry is past its TTL: ignored. */
  Stale = 0,
  /** No live local entry: taken. */
  New = 1,
  /** The same binding, or the same backend: last use updated, nothing else changed. */
  Same = 2,
  /** The incoming binding won over a different local one. */
  Won = 3,
  /** The local binding won over the incoming one (different backends). */
  Lost = 4,
}

export class EntryStore {
  readonly names = new Interner();
  readonly tables: ServiceTable[] = [];
  private readonly byName = new Map<string, ServiceTable>();
  private capacity = 0;
  // Per slot. svc is the owning table's id + 1; 0 marks a free slot.
  svc = new Uint16Array(0);
  backend = new Uint32Array(0);
  creator = new Uint32Array(0);
  gen = new Uint32Array(0);
  lastUsed = new Float64Array(0);
  created = new Float64Array(0);
  /** The last use the cluster knows of (written by us or received): refreshes are due TTL/4 after it. */
  written = new Float64Array(0);
  flags = new Uint8Array(0);
  private prev = new Int32Array(0);
  private next = new Int32Array(0);
  ips: string[] = [];
  /** LRU list: head is the most recently used slot, tail the next to evict. */
  private head = NONE;
  private tail = NONE;
  private free: number[] = [];
  /** Slots [0, highWater) have been handed out at least once. */
  highWater = 0;
  count = 0;
  evictions = 0;
  /** Called before a slot is evicted for room (not for expiry). */
  onEvict: ((slot: number) => void) | null = null;

  constructor(readonly maxEntries: number) {
    this.grow(Math.min(INITIAL_CAPACITY, maxEntries));
  }

  table(name: string): ServiceTable | undefined {
    return this.byName.get(name);
  }

  ensureTable(name: string): ServiceTable {
    let t = this.byName.get(name);
    if (t === undefined) {
      t = new ServiceTable(this.tables.length, name);
      if (t.id >= 0xffff) throw new RangeError("too many affinity services");
      this.tables.push(t);
      this.byName.set(name, t);
    }
    return t;
  }

  tableOfSlot(slot: number): ServiceTable | undefined {
    const s = this.svc[slot];
    return s === 0 ? undefined : this.tables[s - 1];
  }

  isLive(slot: number, now: number, ttlGraceMs: number): boolean {
    return now - this.lastUsed[slot] < ttlGraceMs;
  }

  /** A new binding for a client with no slot yet; evicts the least recently used entry when full. */
  insert(t: ServiceTable, ip: string, backend: number, creator: number, gen: number, created: number, lastUsed: number): number {
    const slot = this.allocate();
    this.svc[slot] = t.id + 1;
    this.ips[slot] = ip;
    this.flags[slot] = 0;
    this.written[slot] = 0;
    this.setBinding(slot, backend, creator, gen, created, lastUsed);
    t.index.set(ip, slot);
    this.count++;
    this.pushHead(slot);
    return slot;
  }

  setBinding(slot: number, backend: number, creator: number, gen: number, created: number, lastUsed: number): void {
    this.backend[slot] = backend;
    this.creator[slot] = creator;
    this.gen[slot] = gen;
    this.created[slot] = created;
    this.lastUsed[slot] = lastUsed;
  }

  /** A use of the entry: newest last use, front of the LRU list. */
  use(slot: number, now: number): void {
    if (now > this.lastUsed[slot]) this.lastUsed[slot] = now;
    this.moveToHead(slot);
  }

  remove(slot: number): void {
    const s = this.svc[slot];
    if (s === 0) return;
    const t = this.tables[s - 1];
    t.index.delete(this.ips[slot]);
    this.unlink(slot);
    this.svc[slot] = 0;
    this.flags[slot] = 0;
    this.ips[slot] = "";
    this.count--;
    this.free.push(slot);
  }

  /**
   * Merges an entry from another node into table `t`. `ttlGraceMs` is the service's TTL with grace;
   * liveness is judged at `now`. Convergent: every node that sees the same live entries ends with the
   * same binding (backend, creator, created, gen) whatever the order they arrive in.
   */
  merge(t: ServiceTable, ip: string, backend: number, creator: number, gen: number, created: number, lastUsed: number, ttlGraceMs: number, now: number): Merge {
    if (now - lastUsed >= ttlGraceMs) return Merge.Stale;
    const slot = t.index.get(ip);
    if (slot === undefined) {
      const s = this.insert(t, ip, backend, creator, gen, created, lastUsed);
      this.written[s] = lastUsed;
      return Merge.New;
    }
    if (now - this.lastUsed[slot] >= ttlGraceMs) {
      this.setBinding(slot, backend, creator, gen, created, lastUsed);
      this.written[slot] = lastUsed;
      this.flags[slot] &= ~QUEUED;
      this.moveToHead(slot);
      return Merge.New;
    }
    const sameBackend = this.backend[slot] === backend;
    const newer = lastUsed > this.lastUsed[slot];
    const sameBinding = sameBackend && this.gen[slot] === gen && this.created[slot] === created && this.creator[slot] === creator;
    const n = this.names.names;
    if (!sameBinding && wins(gen, created, n[creator], n[backend], this.gen[slot], this.created[slot], n[this.creator[slot]], n[this.backend[slot]])) {
      if (sameBackend) {
        // Same backend under another identity: adopt the winning identity, keep the newest use.
        this.setBinding(slot, backend, creator, gen, created, newer ? lastUsed : this.lastUsed[slot]);
        if (lastUsed > this.written[slot]) this.written[slot] = lastUsed;
      } else {
        this.setBinding(slot, backend, creator, gen, created, lastUsed);
        this.written[slot] = lastUsed;
        // A queued write of the losing binding would only be overruled everywhere: not worth sending.
        this.flags[slot] &= ~QUEUED;
      }
      if (newer) this.moveToHead(slot);
      return sameBackend ? Merge.Same : Merge.Won;
    }
    if (!sameBackend) return Merge.Lost;
    // The same backend: a use of it on another node counts, whichever binding carries it.
    if (newer) {
      this.lastUsed[slot] = lastUsed;
      this.moveToHead(slot);
    }
    if (lastUsed > this.written[slot]) this.written[slot] = lastUsed;
    return Merge.Same;
  }

  /**
   * Removes entries past their TTL and all entries of tables `ttlOf` no longer knows (service gone or
   * affinity off). Returns how many were removed. A linear scan of the slot arrays: ~1 ms per 100k.
   */
  sweep(now: number, ttlOf: (t: ServiceTable) => number | null): number {
    const graces = this.tables.map((t) => {
      const ttl = ttlOf(t);
      return ttl === null ? -1 : graceTtl(ttl);
    });
    let removed = 0;
    for (let slot = 0; slot < this.highWater; slot++) {
      const s = this.svc[slot];
      if (s === 0) continue;
      const grace = graces[s - 1];
      if (grace < 0 || now - this.lastUsed[slot] >= grace) {
        this.remove(slot);
        removed++;
      }
    }
    return removed;
  }

  private allocate(): number {
    const reused = this.free.pop();
    if (reused !== undefined) return reused;
    if (this.highWater < this.capacity) return this.highWater++;
    if (this.capacity < this.maxEntries) {
      this.grow(Math.min(this.maxEntries, this.capacity * 2));
      return this.highWater++;
    }
    // Full: the least recently used entry makes room.
    const victim = this.tail;
    this.onEvict?.(victim);
    this.remove(victim);
    this.evictions++;
    return this.free.pop()!;
  }

  private grow(capacity: number): void {
    const copy = <T extends Uint8Array | Uint16Array | Uint32Array | Int32Array | Float64Array>(a: T, make: (n: number) => T): T => {
      const b = make(capacity);
      b.set(a);
      return b;
    };
    this.svc = copy(this.svc, (n) => new Uint16Array(n));
    this.backend = copy(this.backend, (n) => new Uint32Array(n));
    this.creator = copy(this.creator, (n) => new Uint32Array(n));
    this.gen = copy(this.gen, (n) => new Uint32Array(n));
    this.lastUsed = copy(this.lastUsed, (n) => new Float64Array(n));
    this.created = copy(this.created, (n) => new Float64Array(n));
    this.written = copy(this.written, (n) => new Float64Array(n));
    this.flags = copy(this.flags, (n) => new Uint8Array(n));
    this.prev = copy(this.prev, (n) => new Int32Array(n));
    this.next = copy(this.next, (n) => new Int32Array(n));
    this.capacity = capacity;
  }

  private pushHead(slot: number): void {
    this.prev[slot] = NONE;
    this.next[slot] = this.head;
    if (this.head !== NONE) this.prev[this.head] = slot;
    this.head = slot;
    if (this.tail === NONE) this.tail = slot;
  }

  private unlink(slot: number): void {
    const p = this.prev[slot];
    const n = this.next[slot];
    if (p !== NONE) this.next[p] = n;
    else this.head = n;
    if (n !== NONE) this.prev[n] = p;
    else this.tail = p;
  }

  private moveToHead(slot: number): void {
    if (this.head === slot) return;
    this.unlink(slot);
    this.pushHead(slot);
  }

  /** Slots from least to most recently used (tests and debugging). */
  *lruOrder(): IterableIterator<number> {
    for (let s = this.tail; s !== NONE; s = this.prev[s]) yield s;
  }
}
