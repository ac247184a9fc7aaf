// A service's compiled access policy (allow/deny CIDR lists), built once at snapshot time and read by
// every listener on each new connection.
//
// IPv4-mapped IPv6 ("::ffff:10.1.2.3", what Node reports on dual-stack sockets) is treated as the IPv4
// address it carries, as nginx does: it matches IPv4 rules, and a rule written in mapped form
// ("::ffff:10.0.0.0/104") is stored as the IPv4 rule it means (10.0.0.0/8). Other IPv6 rules, "::/0"
// included, match only genuine IPv6 clients.
import { IP_INVALID, IP_V6, isV4Mapped, readIP } from "../../shared/ip.js";

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
