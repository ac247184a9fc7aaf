// The local affinity table's storage: every entry of every service in slots of two typed arrays, an
// index per service from client address to slot, one LRU list across services, and the merge rule.
//
// Why this shape: a million entries as JS objects in a Map<string, …> cost ~200 B each and a hit
// misses the CPU cache a dozen times. Here an IPv4 client is a 32-bit key in an open-addressing
// table (no string kept), a slot's fields sit together (one 32-byte int record, one 32-byte float
// record), and a hit reads and writes numbers in place without allocating. IPv6 clients use a Map.

import { parseIPv4 } from "../../shared/ip.js";

/** Entries live TTL + TTL/4 after the last use a node knows of: other nodes publish uses at most once per TTL/4. */
export const GRACE_FACTOR = 1.25;
/** A live entry's use is published again once it is this fraction of the TTL older than what the cluster knows. */
export const REFRESH_FACTOR = 0.25;

export function graceTtl(ttlMs: number): number {
  return ttlMs * GRACE_FACTOR;
}

const NONE = -1;
/** compactNames scans the slots on one call in this many (it runs after every sweep). */
const COMPACT_EVERY = 8;
const INITIAL_CAPACITY = 1024;

// Int record per slot (I_STRIDE int32s).
const I_STRIDE = 8;
const I_OWNER = 0; // owning table id + 1; 0 = free slot
const I_BACKEND = 1;
const I_CREATOR = 2;
const I_GEN = 3;
const I_PREV = 4;
const I_NEXT = 5;
const I_IP4 = 6; // the IPv4 address (int32), when I_FLAGS has V6 unset
const I_FLAGS = 7;
// Float record per slot (F_STRIDE float64s).
const F_STRIDE = 4;
const F_LAST_USED = 0;
const F_WRITTEN = 1;
const F_CREATED = 2;

/** Slot flag: queued for replication. */
const QUEUED = 1;
/** Slot flag: the client is an IPv6 (or other non-dotted-quad) address, kept as a string. */
const V6 = 2;
/** Slot flag (replication "exception"): queued to be written as an exception by a shard owner. */
const EXC_QUEUED = 4;
/** Slot flag (replication "exception"): the cluster already has this binding as an exception; cleared when the binding changes. */
const EXCEPTED = 8;

export function formatIpv4(ip: number): string {
  const u = ip >>> 0;
  return `${u >>> 24}.${(u >>> 16) & 255}.${(u >>> 8) & 255}.${u & 255}`;
}

function hash32(x: number): number {
  let h = x | 0;
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h;
}

/** IPv4 (int32) → slot: linear probing over [key, slot + 1] pairs, backward-shift deletion, ≤ 1/2 full. */
class Ipv4Index {
  private table = new Int32Array(2 * 16);
  private mask = 15;
  size = 0;

  get(ip: number): number {
    const t = this.table;
    for (let i = hash32(ip) & this.mask; ; i = (i + 1) & this.mask) {
      const v = t[2 * i + 1];
      if (v === 0) return NONE;
      if (t[2 * i] === ip) return v - 1;
    }
  }

  set(ip: number, slot: number): void {
    if (2 * (this.size + 1) > this.mask + 1) this.resize(2 * (this.mask + 1));
    const t = this.table;
    for (let i = hash32(ip) & this.mask; ; i = (i + 1) & this.mask) {
      if (t[2 * i + 1] === 0) {
        t[2 * i] = ip;
        t[2 * i + 1] = slot + 1;
        this.size++;
        return;
      }
      if (t[2 * i] === ip) {
        t[2 * i + 1] = slot + 1;
        return;
      }
    }
  }

  delete(ip: number): void {
    const t = this.table;
    const mask = this.mask;
    let i = hash32(ip) & mask;
    for (; ; i = (i + 1) & mask) {
      if (t[2 * i + 1] === 0) return;
      if (t[2 * i] === ip) break;
    }
    this.size--;
    // Pull later members of the probe run back into the hole, so no tombstones are needed.
    for (let j = (i + 1) & mask; t[2 * j + 1] !== 0; j = (j + 1) & mask) {
      const home = hash32(t[2 * j]) & mask;
      const between = i <= j ? home > i && home <= j : home > i || home <= j;
      if (!between) {
        t[2 * i] = t[2 * j];
        t[2 * i + 1] = t[2 * j + 1];
        i = j;
      }
    }
    t[2 * i] = 0;
    t[2 * i + 1] = 0;
  }

  private resize(buckets: number): void {
    const old = this.table;
    this.table = new Int32Array(2 * buckets);
    this.mask = buckets - 1;
    this.size = 0;
    for (let i = 0; i < old.length; i += 2) if (old[i + 1] !== 0) this.set(old[i], old[i + 1] - 1);
  }
}

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

/** One service's entries: its address index and the counters /api/state and metrics read. */
export class ServiceTable {
  readonly v4 = new Ipv4Index();
  readonly v6 = new Map<string, number>();
  /** Slots waiting to be written (a slot may be stale: the writer checks its flag and owner). */
  queue: number[] = [];
  /** Replication "exception": slots a shard owner writes as exceptions (only to the broadcast prefix). */
  exceptions: number[] = [];
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
    return this.v4.size + this.v6.size;
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
  /** Replaced (not grown for ever) by compactNames once most of its names are no longer referenced. */
  names = new Interner();
  readonly tables: ServiceTable[] = [];
  private readonly byName = new Map<string, ServiceTable>();
  private capacity = 0;
  private ints = new Int32Array(0);
  private floats = new Float64Array(0);
  /** Client strings of non-IPv4 slots. */
  private readonly v6ips = new Map<number, string>();
  /** LRU list: head is the most recently used slot, tail the next to evict. */
  private head = NONE;
  private tail = NONE;
  private free: number[] = [];
  private compactCalls = 0;
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
      this.tables.push(t);
      this.byName.set(name, t);
    }
    return t;
  }

  /** The client's slot in table `t`, or -1. */
  find(t: ServiceTable, ip: string): number {
    const v4 = parseIPv4(ip);
    if (v4 >= 0) return t.v4.get(v4 | 0);
    return t.v6.get(ip) ?? NONE;
  }

  // Slot fields.
  ownedBy(slot: number, t: ServiceTable): boolean {
    return this.ints[slot * I_STRIDE + I_OWNER] === t.id + 1;
  }
  backend(slot: number): number {
    return this.ints[slot * I_STRIDE + I_BACKEND];
  }
  creator(slot: number): number {
    return this.ints[slot * I_STRIDE + I_CREATOR];
  }
  gen(slot: number): number {
    return this.ints[slot * I_STRIDE + I_GEN];
  }
  lastUsed(slot: number): number {
    return this.floats[slot * F_STRIDE + F_LAST_USED];
  }
  created(slot: number): number {
    return this.floats[slot * F_STRIDE + F_CREATED];
  }
  /** The last use the cluster knows of (written by us or received): refreshes are due TTL/4 after it. */
  written(slot: number): number {
    return this.floats[slot * F_STRIDE + F_WRITTEN];
  }
  setWritten(slot: number, at: number): void {
    this.floats[slot * F_STRIDE + F_WRITTEN] = at;
  }
  queued(slot: number): boolean {
    return (this.ints[slot * I_STRIDE + I_FLAGS] & QUEUED) !== 0;
  }
  setQueued(slot: number, on: boolean): void {
    const i = slot * I_STRIDE + I_FLAGS;
    this.ints[i] = on ? this.ints[i] | QUEUED : this.ints[i] & ~QUEUED;
  }
  /** Queued by a shard owner to be written as an exception (replication "exception"). */
  excQueued(slot: number): boolean {
    return (this.ints[slot * I_STRIDE + I_FLAGS] & EXC_QUEUED) !== 0;
  }
  setExcQueued(slot: number, on: boolean): void {
    const i = slot * I_STRIDE + I_FLAGS;
    this.ints[i] = on ? this.ints[i] | EXC_QUEUED : this.ints[i] & ~EXC_QUEUED;
  }
  /** Whether every node has (or is being sent) this binding as an exception. */
  excepted(slot: number): boolean {
    return (this.ints[slot * I_STRIDE + I_FLAGS] & EXCEPTED) !== 0;
  }
  setExcepted(slot: number, on: boolean): void {
    const i = slot * I_STRIDE + I_FLAGS;
    this.ints[i] = on ? this.ints[i] | EXCEPTED : this.ints[i] & ~EXCEPTED;
  }
  ip(slot: number): string {
    const i = slot * I_STRIDE;
    return (this.ints[i + I_FLAGS] & V6) !== 0 ? this.v6ips.get(slot)! : formatIpv4(this.ints[i + I_IP4]);
  }
  backendName(slot: number): string {
    return this.names.names[this.backend(slot)];
  }
  creatorName(slot: number): string {
    return this.names.names[this.creator(slot)];
  }

  /** A new binding for a client with no slot yet; evicts the least recently used entry when full. */
  insert(t: ServiceTable, ip: string, backend: number, creator: number, gen: number, created: number, lastUsed: number): number {
    const slot = this.allocate();
    const i = slot * I_STRIDE;
    this.ints[i + I_OWNER] = t.id + 1;
    const v4 = parseIPv4(ip);
    if (v4 >= 0) {
      this.ints[i + I_IP4] = v4 | 0;
      this.ints[i + I_FLAGS] = 0;
      t.v4.set(v4 | 0, slot);
    } else {
      this.ints[i + I_FLAGS] = V6;
      this.v6ips.set(slot, ip);
      t.v6.set(ip, slot);
    }
    this.floats[slot * F_STRIDE + F_WRITTEN] = 0;
    this.setBinding(slot, backend, creator, gen, created, lastUsed);
    this.count++;
    this.pushHead(slot);
    return slot;
  }

  setBinding(slot: number, backend: number, creator: number, gen: number, created: number, lastUsed: number): void {
    const i = slot * I_STRIDE;
    // Another binding: whether the cluster holds it as an exception is to be judged again.
    this.ints[i + I_FLAGS] &= ~EXCEPTED;
    this.ints[i + I_BACKEND] = backend;
    this.ints[i + I_CREATOR] = creator;
    this.ints[i + I_GEN] = gen;
    const f = slot * F_STRIDE;
    this.floats[f + F_CREATED] = created;
    this.floats[f + F_LAST_USED] = lastUsed;
  }

  /** A use of the entry: newest last use, front of the LRU list. */
  use(slot: number, now: number): void {
    const f = slot * F_STRIDE + F_LAST_USED;
    if (now > this.floats[f]) this.floats[f] = now;
    this.moveToHead(slot);
  }

  remove(slot: number): void {
    const i = slot * I_STRIDE;
    const owner = this.ints[i + I_OWNER];
    if (owner === 0) return;
    const t = this.tables[owner - 1];
    if ((this.ints[i + I_FLAGS] & V6) !== 0) {
      t.v6.delete(this.v6ips.get(slot)!);
      this.v6ips.delete(slot);
    } else t.v4.delete(this.ints[i + I_IP4]);
    this.unlink(slot);
    this.ints[i + I_OWNER] = 0;
    this.ints[i + I_FLAGS] = 0;
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
    const slot = this.find(t, ip);
    if (slot === NONE) {
      const s = this.insert(t, ip, backend, creator, gen, created, lastUsed);
      this.setWritten(s, lastUsed);
      return Merge.New;
    }
    const localLastUsed = this.lastUsed(slot);
    if (now - localLastUsed >= ttlGraceMs) {
      this.setBinding(slot, backend, creator, gen, created, lastUsed);
      this.setWritten(slot, lastUsed);
      this.setQueued(slot, false);
      this.moveToHead(slot);
      return Merge.New;
    }
    const localBackend = this.backend(slot);
    const sameBackend = localBackend === backend;
    const newer = lastUsed > localLastUsed;
    const sameBinding = sameBackend && this.gen(slot) === gen && this.created(slot) === created && this.creator(slot) === creator;
    const n = this.names.names;
    if (!sameBinding && wins(gen, created, n[creator], n[backend], this.gen(slot), this.created(slot), n[this.creator(slot)], n[localBackend])) {
      if (sameBackend) {
        // Same backend under another identity: adopt the winning identity, keep the newest use.
        this.setBinding(slot, backend, creator, gen, created, newer ? lastUsed : localLastUsed);
        if (lastUsed > this.written(slot)) this.setWritten(slot, lastUsed);
      } else {
        this.setBinding(slot, backend, creator, gen, created, lastUsed);
        this.setWritten(slot, lastUsed);
        // A queued write of the losing binding would only be overruled everywhere: not worth sending.
        this.setQueued(slot, false);
      }
      if (newer) this.moveToHead(slot);
      return sameBackend ? Merge.Same : Merge.Won;
    }
    if (!sameBackend) return Merge.Lost;
    // The same backend: a use of it on another node counts, whichever binding carries it.
    if (newer) {
      this.floats[slot * F_STRIDE + F_LAST_USED] = lastUsed;
      this.moveToHead(slot);
    }
    if (lastUsed > this.written(slot)) this.setWritten(slot, lastUsed);
    return Merge.Same;
  }

  /**
   * Removes entries past their TTL and all entries of tables `ttlOf` no longer knows (service gone or
   * affinity off). Returns how many were removed. A linear scan of the slot records.
   */
  sweep(now: number, ttlOf: (t: ServiceTable) => number | null): number {
    const graces = this.tables.map((t) => {
      const ttl = ttlOf(t);
      return ttl === null ? -1 : graceTtl(ttl);
    });
    let removed = 0;
    for (let slot = 0; slot < this.highWater; slot++) {
      const owner = this.ints[slot * I_STRIDE + I_OWNER];
      if (owner === 0) continue;
      const grace = graces[owner - 1];
      if (grace < 0 || now - this.floats[slot * F_STRIDE + F_LAST_USED] >= grace) {
        this.remove(slot);
        removed++;
      }
    }
    return removed;
  }

  /**
   * Frees interned names no slot refers to any more (backends removed, creators whose entries
   * expired): the interner only grows, and a stream of entries naming ever new ids would otherwise
   * hold every name for the life of the process. Runs when fewer than half the names are in use;
   * renumbers the slots' references. `pinned` names keep an index (the node's own id). Returns
   * whether it compacted (callers re-intern indexes they hold).
   */
  compactNames(pinned: readonly string[], minNames = 1024): boolean {
    const old = this.names.names;
    // Amortised: a slot scan on one call in COMPACT_EVERY (a sweep is a slot scan already).
    if (old.length < minNames || ++this.compactCalls % COMPACT_EVERY !== 0) return false;
    const used = new Uint8Array(old.length);
    let inUse = 0;
    const ints = this.ints;
    for (let slot = 0; slot < this.highWater; slot++) {
      const i = slot * I_STRIDE;
      if (ints[i + I_OWNER] === 0) continue;
      const b = ints[i + I_BACKEND];
      const c = ints[i + I_CREATOR];
      if (used[b] === 0) inUse += used[b] = 1;
      if (used[c] === 0) inUse += used[c] = 1;
    }
    if (2 * (inUse + pinned.length) > old.length) return false;
    const fresh = new Interner();
    for (const p of pinned) fresh.intern(p);
    const remap = new Int32Array(old.length).fill(NONE);
    for (let slot = 0; slot < this.highWater; slot++) {
      const i = slot * I_STRIDE;
      if (ints[i + I_OWNER] === 0) continue;
      const b = ints[i + I_BACKEND];
      if (remap[b] === NONE) remap[b] = fresh.intern(old[b]);
      ints[i + I_BACKEND] = remap[b];
      const c = ints[i + I_CREATOR];
      if (remap[c] === NONE) remap[c] = fresh.intern(old[c]);
      ints[i + I_CREATOR] = remap[c];
    }
    this.names = fresh;
    return true;
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
    const ints = new Int32Array(capacity * I_STRIDE);
    ints.set(this.ints);
    const floats = new Float64Array(capacity * F_STRIDE);
    floats.set(this.floats);
    this.ints = ints;
    this.floats = floats;
    this.capacity = capacity;
  }

  private pushHead(slot: number): void {
    const i = slot * I_STRIDE;
    this.ints[i + I_PREV] = NONE;
    this.ints[i + I_NEXT] = this.head;
    if (this.head !== NONE) this.ints[this.head * I_STRIDE + I_PREV] = slot;
    this.head = slot;
    if (this.tail === NONE) this.tail = slot;
  }

  private unlink(slot: number): void {
    const i = slot * I_STRIDE;
    const p = this.ints[i + I_PREV];
    const n = this.ints[i + I_NEXT];
    if (p !== NONE) this.ints[p * I_STRIDE + I_NEXT] = n;
    else this.head = n;
    if (n !== NONE) this.ints[n * I_STRIDE + I_PREV] = p;
    else this.tail = p;
  }

  private moveToHead(slot: number): void {
    if (this.head === slot) return;
    this.unlink(slot);
    this.pushHead(slot);
  }

  /** Slots from least to most recently used (tests and debugging). */
  *lruOrder(): IterableIterator<number> {
    for (let s = this.tail; s !== NONE; s = this.ints[s * I_STRIDE + I_PREV]) yield s;
  }
}
