// Per-service access rules (allow/deny CIDR lists) and per-source connection rate limiting, plus the
// allocation-free IP parsers they (and the PROXY protocol writer) run on every new connection.
//
// IPv4-mapped IPv6 ("::ffff:10.1.2.3", what Node reports on dual-stack sockets) is treated as the IPv4
// address it carries, as nginx does: it matches IPv4 rules, and a rule written in mapped form
// ("::ffff:10.0.0.0/104") is stored as the IPv4 rule it means (10.0.0.0/8). Other IPv6 rules, "::/0"
// included, match only genuine IPv6 clients.

/** readIP result: not an IP address. */
export const IP_INVALID = 0;
/** readIP result: dotted-quad IPv4 text. */
export const IP_V4 = 4;
/** readIP result: IPv6 text (IPv4-mapped included; see isV4Mapped). */
export const IP_V6 = 6;
export type IPFamily = typeof IP_INVALID | typeof IP_V4 | typeof IP_V6;

/**
 * Dotted-quad IPv4 text (or the slice [start, end) of it) → unsigned 32-bit value, or -1. Exactly four
 * decimal parts of 0-255, no leading zeros (as inet_pton and net.isIPv4). Allocates nothing.
 */
export function parseIPv4(text: string, start = 0, end = text.length): number {
  let value = 0;
  let part = 0;
  let digits = 0;
  let dots = 0;
  for (let i = start; i < end; i++) {
    const c = text.charCodeAt(i);
    if (c >= 48 && c <= 57) {
      if (digits === 1 && part === 0) return -1;
      part = part * 10 + (c - 48);
      if (part > 255) return -1;
      digits++;
    } else if (c === 46 && digits > 0 && dots < 3) {
      value = value * 256 + part;
      part = 0;
      digits = 0;
      dots++;
    } else {
      return -1;
    }
  }
  if (digits === 0 || dots !== 3) return -1;
  return value * 256 + part;
}

function hexValue(c: number): number {
  if (c >= 48 && c <= 57) return c - 48;
  if (c >= 97 && c <= 102) return c - 87;
  if (c >= 65 && c <= 70) return c - 55;
  return -1;
}

/**
 * IPv6 text → eight 16-bit groups written into `out`; false if malformed (then `out` holds garbage).
 * Accepts "::" compression, an embedded dotted quad in the last 32 bits, and ignores a "%zone" suffix
 * (a zone does not change which rules an address falls in). Allocates nothing.
 */
export function parseIPv6(text: string, out: Uint16Array): boolean {
  let end = text.length;
  const zone = text.indexOf("%");
  if (zone >= 0) {
    if (zone === end - 1) return false;
    end = zone;
  }
  // The longest form is "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255" (45 characters).
  if (end < 2 || end > 45) return false;
  let n = 0;
  let gap = -1;
  let i = 0;
  if (text.charCodeAt(0) === 58) {
    if (text.charCodeAt(1) !== 58) return false;
    gap = 0;
    i = 2;
  }
  while (i < end) {
    if (n === 8) return false;
    let value = 0;
    let j = i;
    while (j < end) {
      const h = hexValue(text.charCodeAt(j));
      if (h < 0) break;
      value = value * 16 + h;
      j++;
    }
    if (j < end && text.charCodeAt(j) === 46) {
      // Embedded IPv4: must be the last 32 bits.
      if (n > 6) return false;
      const v4 = parseIPv4(text, i, end);
      if (v4 < 0) return false;
      out[n++] = v4 >>> 16;
      out[n++] = v4 & 0xffff;
      break;
    }
    if (j === i || j - i > 4) return false;
    out[n++] = value;
    if (j === end) break;
    if (text.charCodeAt(j) !== 58) return false;
    j++;
    if (j < end && text.charCodeAt(j) === 58) {
      if (gap >= 0) return false;
      gap = n;
      j++;
    } else if (j === end) {
      return false;
    }
    i = j;
  }
  if (gap < 0) return n === 8;
  // "::" stands for at least one zero group.
  if (n === 8) return false;
  const tail = n - gap;
  for (let k = tail - 1; k >= 0; k--) out[8 - tail + k] = out[gap + k];
  for (let k = gap; k < 8 - tail; k++) out[k] = 0;
  return true;
}

/** True when the groups are ::ffff:a.b.c.d; the IPv4 value is then groups[6] * 65536 + groups[7]. */
export function isV4Mapped(groups: Uint16Array): boolean {
  return (
    groups[5] === 0xffff && groups[4] === 0 && groups[3] === 0 && groups[2] === 0 && groups[1] === 0 && groups[0] === 0
  );
}

/**
 * Reads an address into `groups`: IP_V4 (groups then hold its mapped form ::ffff:a.b.c.d, so the value
 * is always groups[6] * 65536 + groups[7]), IP_V6, or IP_INVALID. Never throws, whatever it is given.
 */
export function readIP(text: unknown, groups: Uint16Array): IPFamily {
  if (typeof text !== "string") return IP_INVALID;
  if (text.indexOf(":") < 0) {
    const v4 = parseIPv4(text);
    if (v4 < 0) return IP_INVALID;
    groups.fill(0, 0, 5);
    groups[5] = 0xffff;
    groups[6] = v4 >>> 16;
    groups[7] = v4 & 0xffff;
    return IP_V4;
  }
  return parseIPv6(text, groups) ? IP_V6 : IP_INVALID;
}

// Scratch for the per-connection lookups: JS runs one lookup at a time, so one buffer serves them all.
const scratchGroups = new Uint16Array(8);
const scratchWords = new Uint32Array(4);

/** Compares the 128-bit value at ranges[at..at+4) with `words`, most significant word first. */
function compare128(ranges: Uint32Array, at: number, words: Uint32Array): number {
  for (let k = 0; k < 4; k++) {
    const a = ranges[at + k];
    const b = words[k];
    if (a !== b) return a < b ? -1 : 1;
  }
  return 0;
}

interface Range4 {
  lo: number;
  hi: number;
}

interface Range6 {
  lo: Uint32Array;
  hi: Uint32Array;
}

function compareWords(a: Uint32Array, b: Uint32Array): number {
  for (let k = 0; k < 4; k++) if (a[k] !== b[k]) return a[k] < b[k] ? -1 : 1;
  return 0;
}

/**
 * A set of CIDR blocks ("10.0.0.0/8", "2001:db8::/32") and single addresses ("192.168.1.5", "::1").
 * Built once per snapshot: entries become sorted, merged ranges, so `contains` is a binary search that
 * neither allocates nor throws.
 */
export class CidrList {
  /** Number of entries the list was built from. */
  readonly size: number;
  // IPv4 ranges as parallel arrays of inclusive bounds; IPv6 ranges as 8 words each (lo[4], hi[4]).
  private readonly lo4: Float64Array;
  private readonly hi4: Float64Array;
  private readonly ranges6: Uint32Array;
  private readonly count6: number;

  /**
   * Throws an Error naming the bad entry (prefixed by `field`, e.g. "access.deny") when one is not an
   * address or CIDR, has a prefix out of range, or has bits set past its prefix ("10.0.0.1/8").
   */
  constructor(entries: readonly string[], field = "cidr") {
    this.size = entries.length;
    const v4: Range4[] = [];
    const v6: Range6[] = [];
    entries.forEach((entry, index) => {
      const problem = addRule(entry, v4, v6);
      if (problem !== null) throw new Error(`${field}[${index}]: invalid CIDR ${JSON.stringify(entry)}: ${problem}`);
    });

    v4.sort((a, b) => a.lo - b.lo);
    const merged4: Range4[] = [];
    for (const r of v4) {
      const last = merged4[merged4.length - 1];
      if (last !== undefined && r.lo <= last.hi + 1) last.hi = Math.max(last.hi, r.hi);
      else merged4.push({ lo: r.lo, hi: r.hi });
    }
    this.lo4 = Float64Array.from(merged4, (r) => r.lo);
    this.hi4 = Float64Array.from(merged4, (r) => r.hi);

    v6.sort((a, b) => compareWords(a.lo, b.lo));
    const merged6: Range6[] = [];
    for (const r of v6) {
      const last = merged6[merged6.length - 1];
      // Overlapping ranges merge; adjacent ones may stay apart, which the search handles.
      if (last !== undefined && compareWords(r.lo, last.hi) <= 0) {
        if (compareWords(r.hi, last.hi) > 0) last.hi = r.hi;
      } else {
        merged6.push({ lo: r.lo, hi: r.hi });
      }
    }
    this.count6 = merged6.length;
    this.ranges6 = new Uint32Array(merged6.length * 8);
    merged6.forEach((r, i) => {
      this.ranges6.set(r.lo, i * 8);
      this.ranges6.set(r.hi, i * 8 + 4);
    });
  }

  /** Whether the address falls in any entry. False for anything that is not an IP address. */
  contains(ip: string | undefined): boolean {
    return readIP(ip, scratchGroups) !== IP_INVALID && this.containsGroups(scratchGroups);
  }

  /** `contains` for an address already read by readIP (so a policy reads each address once). */
  containsGroups(g: Uint16Array): boolean {
    if (isV4Mapped(g)) return this.contains4(g[6] * 65536 + g[7]);
    if (this.count6 === 0) return false;
    const w = scratchWords;
    w[0] = g[0] * 65536 + g[1];
    w[1] = g[2] * 65536 + g[3];
    w[2] = g[4] * 65536 + g[5];
    w[3] = g[6] * 65536 + g[7];
    // Last range whose lower bound is <= ip, then check its upper bound.
    let low = 0;
    let high = this.count6 - 1;
    let found = -1;
    while (low <= high) {
      const mid = (low + high) >>> 1;
      if (compare128(this.ranges6, mid * 8, w) <= 0) {
        found = mid;
        low = mid + 1;
      } else {
        high = mid - 1;
      }
    }
    return found >= 0 && compare128(this.ranges6, found * 8 + 4, w) >= 0;
  }

  private contains4(ip: number): boolean {
    const lo = this.lo4;
    let low = 0;
    let high = lo.length - 1;
    let found = -1;
    while (low <= high) {
      const mid = (low + high) >>> 1;
      if (lo[mid] <= ip) {
        found = mid;
        low = mid + 1;
      } else {
        high = mid - 1;
      }
    }
    return found >= 0 && ip <= this.hi4[found];
  }
}

/** Parses one rule into v4 or v6; returns why it is invalid, or null. */
function addRule(entry: unknown, v4: Range4[], v6: Range6[]): string | null {
  if (typeof entry !== "string") return "not a string";
  const slash = entry.indexOf("/");
  const address = slash < 0 ? entry : entry.slice(0, slash);
  if (address.includes("%")) return "zone index not allowed";
  let prefix = -1;
  if (slash >= 0) {
    const text = entry.slice(slash + 1);
    if (!/^\d{1,3}$/.test(text)) return "prefix length must be a number";
    prefix = Number(text);
  }
  const groups = new Uint16Array(8);
  const family = readIP(address, groups);
  if (family === IP_INVALID) return "not an IPv4 or IPv6 address";
  if (family === IP_V6 && !(isV4Mapped(groups) && (prefix < 0 || prefix >= 96))) {
    if (prefix < 0) prefix = 128;
    if (prefix > 128) return `prefix length ${prefix} is over 128`;
    const lo = new Uint32Array(4);
    const hi = new Uint32Array(4);
    for (let k = 0; k < 4; k++) {
      const word = groups[k * 2] * 65536 + groups[k * 2 + 1];
      const bits = Math.min(32, Math.max(0, prefix - k * 32));
      const mask = bits === 0 ? 0 : (0xffffffff << (32 - bits)) >>> 0;
      lo[k] = (word & mask) >>> 0;
      hi[k] = (lo[k] | ~mask) >>> 0;
      if (lo[k] !== word) return `address has bits set past the /${prefix} prefix`;
    }
    v6.push({ lo, hi });
    return null;
  }
  // IPv4, or IPv4-mapped IPv6 with a prefix inside ::ffff:0:0/96 (stored as the IPv4 rule it means).
  const mappedOffset = family === IP_V6 ? 96 : 0;
  if (prefix < 0) prefix = 32 + mappedOffset;
  if (prefix > 32 + mappedOffset) return `prefix length ${prefix} is over ${32 + mappedOffset}`;
  const bits = prefix - mappedOffset;
  const value = groups[6] * 65536 + groups[7];
  const mask = bits === 0 ? 0 : (0xffffffff << (32 - bits)) >>> 0;
  const lo = (value & mask) >>> 0;
  if (lo !== value) return `address has bits set past the /${prefix} prefix`;
  v4.push({ lo, hi: (lo | ~mask) >>> 0 });
  return null;
}

/** Why a connection was let in or turned away; doubles as a metric label. */
export type AccessDecision = "allowed" | "denied" | "not-allowed" | "unreadable-address";

/** A service's allow and deny lists. Deny wins; an empty allow list allows everything not denied. */
export class AccessPolicy {
  readonly allow: CidrList;
  readonly deny: CidrList;
  /** No rules at all: every connection is allowed without looking at its address. */
  readonly open: boolean;

  /** Throws (at snapshot time) naming the bad entry, e.g. `access.allow[2]: invalid CIDR "10.0.0.0/33": …`. */
  constructor(allow: readonly string[], deny: readonly string[], field = "access") {
    this.allow = new CidrList(allow, `${field}.allow`);
    this.deny = new CidrList(deny, `${field}.deny`);
    this.open = allow.length === 0 && deny.length === 0;
  }

  /**
   * An address that cannot be read (a socket already gone reports `undefined`) is turned away when the
   * policy has any rule: it cannot be shown not to be denied.
   */
  decide(ip: string | undefined): AccessDecision {
    if (this.open) return "allowed";
    const g = scratchGroups;
    if (readIP(ip, g) === IP_INVALID) return "unreadable-address";
    if (this.deny.containsGroups(g)) return "denied";
    if (this.allow.size > 0 && !this.allow.containsGroups(g)) return "not-allowed";
    return "allowed";
  }

  permits(ip: string | undefined): boolean {
    return this.decide(ip) === "allowed";
  }
}

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
    if (ip.indexOf(":") < 0) return ip;
    // One bucket per client whether the socket reports it as IPv4 or IPv4-mapped IPv6.
    if (ip.startsWith("::ffff:") && ip.indexOf(".") > 0) return ip.slice(7);
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
