// Per-source new-connection rate limiting: a listener's own state, kept across snapshot swaps.
import { clientAddress } from "../../shared/ip.js";

interface Bucket {
  tokens: number;
  /** nowMs of the last take; the map's insertion order is least recently used first. */
  last: number;
}

/**
 * Token bucket per source IP for new connections: `burst` at once, refilled at `ratePerSec`. At most
 * `maxSources` buckets are kept; the least recently used goes first, and a bucket that has refilled to
 * full (no different from a new one) is dropped when a new source arrives. Rate 0 means unlimited.
 */
export class SourceRateLimiter {
  private readonly buckets = new Map<string, Bucket>();
  private readonly perMs: number;
  /** Time after which an untouched bucket is full again. */
  private readonly refillMs: number;

  constructor(
    readonly ratePerSec: number,
    readonly burst: number,
    readonly maxSources = 100_000,
  ) {
    if (!(Number.isFinite(ratePerSec) && ratePerSec >= 0)) throw new Error(`sourceRate must be a number >= 0, got ${ratePerSec}`);
    if (!(Number.isFinite(burst) && burst >= 1)) throw new Error(`sourceBurst must be a number >= 1, got ${burst}`);
    if (!(Number.isInteger(maxSources) && maxSources >= 1)) throw new Error(`maxSources must be an integer >= 1, got ${maxSources}`);
    this.perMs = ratePerSec / 1000;
    this.refillMs = ratePerSec > 0 ? (burst * 1000) / ratePerSec : Number.POSITIVE_INFINITY;
  }

  /** Buckets currently held. */
  get size(): number {
    return this.buckets.size;
  }

  /** Takes one token for a new connection from `ip` at `nowMs` (a coarse clock is fine); false = over the rate. */
  take(ip: string | undefined, nowMs: number): boolean {
    if (this.perMs === 0) return true;
    // A socket already gone reports no address; it cannot be counted, so it is not let in.
    if (typeof ip !== "string") return false;
    // One bucket per client whether the socket reports it as IPv4 or IPv4-mapped IPv6.
    const key = clientAddress(ip);
    const buckets = this.buckets;
    let bucket = buckets.get(key);
    if (bucket === undefined) {
      bucket = this.evictForNew(nowMs) ?? { tokens: 0, last: 0 };
      bucket.tokens = this.burst - 1;
      bucket.last = nowMs;
      buckets.set(key, bucket);
      return true;
    }
    // Refresh recency: move to the end of the insertion order.
    buckets.delete(key);
    buckets.set(key, bucket);
    const elapsed = nowMs - bucket.last;
    if (elapsed > 0) {
      bucket.tokens = Math.min(this.burst, bucket.tokens + elapsed * this.perMs);
      bucket.last = nowMs;
    }
    if (bucket.tokens < 1) return false;
    bucket.tokens -= 1;
    return true;
  }

  /** Makes room for one new source; returns an evicted bucket to reuse, if any. */
  private evictForNew(nowMs: number): Bucket | undefined {
    const buckets = this.buckets;
    let reuse: Bucket | undefined;
    // Up to two full (stale) buckets go per new source, so the map shrinks back after a burst of sources.
    for (let k = 0; k < 2 && buckets.size > 0; k++) {
      const oldestKey = buckets.keys().next().value as string;
      const oldest = buckets.get(oldestKey)!;
      if (buckets.size < this.maxSources && nowMs - oldest.last < this.refillMs) break;
      buckets.delete(oldestKey);
      reuse = oldest;
    }
    return reuse;
  }
}

/**
 * The limiter for a service's settings across snapshot swaps: the current one while rate and burst
 * are unchanged (its buckets survive a config change), a new one when they change, null when off.
 */
export function limiterFor(current: SourceRateLimiter | null, ratePerSec: number, burst: number): SourceRateLimiter | null {
  if (ratePerSec <= 0) return null;
  if (current !== null && current.ratePerSec === ratePerSec && current.burst === burst) return current;
  return new SourceRateLimiter(ratePerSec, burst);
}
