// Per-source new-connection rate limiting: a listener's own state, kept across snapshot swaps.
import { clientAddress, parseIPv6 } from "../../shared/ip.js";

/** Scratch for parsing IPv6 sources: JS runs one take() at a time. */
const scratchGroups = new Uint16Array(8);

interface Bucket {
  tokens: number;
  /** nowMs of the last take; the map's insertion order is least recently used first. */
  last: number;
}

/**
 * Token bucket per source for new connections: `burst` at once, refilled at `ratePerSec`. A source is
 * an IPv4 address, or an IPv6 network of `ipv6Prefix` bits (default /64: one subscriber gets a /64, so
 * per-address buckets would let it take 2^64 bursts). At most `maxSources` buckets are kept.
 *
 * Eviction spares the buckets that are limiting someone: buckets holding at least one token ("open")
 * go first, oldest first (one that refilled to full is no different from a new one, and forgetting a
 * partly used one gives its source at most `burst` tokens early); a bucket with less than a token
 * ("held": its source is being turned away) goes only when no open bucket is left. So a flood of new
 * sources (100k spoofed or owned addresses) cannot evict the bucket of the client it is limiting.
 * Rate 0 means unlimited.
 */
export class SourceRateLimiter {
  private readonly open = new Map<string, Bucket>();
  private readonly held = new Map<string, Bucket>();
  private readonly perMs: number;
  /** Time after which an untouched bucket is full again. */
  private readonly refillMs: number;

  constructor(
    readonly ratePerSec: number,
    readonly burst: number,
    readonly maxSources = 100_000,
    readonly ipv6Prefix = 64,
  ) {
    if (!(Number.isFinite(ratePerSec) && ratePerSec >= 0)) throw new Error(`sourceRate must be a number >= 0, got ${ratePerSec}`);
    if (!(Number.isFinite(burst) && burst >= 1)) throw new Error(`sourceBurst must be a number >= 1, got ${burst}`);
    if (!(Number.isInteger(maxSources) && maxSources >= 1)) throw new Error(`maxSources must be an integer >= 1, got ${maxSources}`);
    if (!(Number.isInteger(ipv6Prefix) && ipv6Prefix >= 1 && ipv6Prefix <= 128)) throw new Error(`sourceIpv6Prefix must be an integer 1-128, got ${ipv6Prefix}`);
    this.perMs = ratePerSec / 1000;
    this.refillMs = ratePerSec > 0 ? (burst * 1000) / ratePerSec : Number.POSITIVE_INFINITY;
  }

  /** Buckets currently held. */
  get size(): number {
    return this.open.size + this.held.size;
  }

  /** The bucket key of a source address: IPv4 as is, IPv6 cut to its network (e.g. "2001:db8:0:1/64"). */
  sourceKey(ip: string): string {
    // One bucket per client whether the socket reports it as IPv4 or IPv4-mapped IPv6.
    const client = clientAddress(ip);
    if (client.indexOf(":") < 0) return client;
    const g = scratchGroups;
    if (this.ipv6Prefix === 128 || !parseIPv6(ip, g)) return ip;
    // Only on services with a rate limit, once per new connection: a short string is the price of a Map key.
    const full = this.ipv6Prefix >>> 4;
    let key = "";
    for (let i = 0; i < full; i++) key += `${g[i].toString(16)}:`;
    const rest = this.ipv6Prefix & 15;
    if (rest > 0) key += (g[full] & ((0xffff << (16 - rest)) & 0xffff)).toString(16);
    return `${key}/${this.ipv6Prefix}`;
  }

  /** Takes one token for a new connection from `ip` at `nowMs` (a coarse clock is fine); false = over the rate. */
  take(ip: string | undefined, nowMs: number): boolean {
    if (this.perMs === 0) return true;
    // A socket already gone reports no address; it cannot be counted, so it is not let in.
    if (typeof ip !== "string") return false;
    const key = this.sourceKey(ip);
    let from = this.held;
    let bucket = from.get(key);
    if (bucket === undefined) {
      from = this.open;
      bucket = from.get(key);
    }
    if (bucket === undefined) {
      bucket = this.evictForNew(nowMs) ?? { tokens: 0, last: 0 };
      bucket.tokens = this.burst - 1;
      bucket.last = nowMs;
      (bucket.tokens < 1 ? this.held : this.open).set(key, bucket);
      return true;
    }
    // Refresh recency (the end of the insertion order), in the map that matches its tokens.
    from.delete(key);
    const elapsed = nowMs - bucket.last;
    if (elapsed > 0) {
      bucket.tokens = Math.min(this.burst, bucket.tokens + elapsed * this.perMs);
      bucket.last = nowMs;
    }
    let ok = false;
    if (bucket.tokens >= 1) {
      bucket.tokens -= 1;
      ok = true;
    }
    (bucket.tokens < 1 ? this.held : this.open).set(key, bucket);
    return ok;
  }

  /** Makes room for one new source; returns an evicted bucket to reuse, if any. */
  private evictForNew(nowMs: number): Bucket | undefined {
    const open = this.open;
    let reuse: Bucket | undefined;
    // Up to two open buckets that refilled to full go per new source, so the map shrinks back after a burst of sources.
    for (let k = 0; k < 2 && open.size > 0; k++) {
      const oldestKey = open.keys().next().value as string;
      const oldest = open.get(oldestKey)!;
      if (nowMs - oldest.last < this.refillMs) break;
      open.delete(oldestKey);
      reuse = oldest;
    }
    if (this.size >= this.maxSources) {
      const from = open.size > 0 ? open : this.held;
      const oldestKey = from.keys().next().value as string;
      reuse = from.get(oldestKey)!;
      from.delete(oldestKey);
    }
    return reuse;
  }
}

/**
 * The limiter for a service's settings across snapshot swaps: the current one while rate, burst and
 * IPv6 prefix are unchanged (its buckets survive a config change), a new one when they change, null when off.
 */
export function limiterFor(current: SourceRateLimiter | null, ratePerSec: number, burst: number, ipv6Prefix = 64): SourceRateLimiter | null {
  if (ratePerSec <= 0) return null;
  if (current !== null && current.ratePerSec === ratePerSec && current.burst === burst && current.ipv6Prefix === ipv6Prefix) return current;
  return new SourceRateLimiter(ratePerSec, burst, undefined, ipv6Prefix);
}
