// Host-name backends: every name the backend records use is looked up here, off the hot path, and kept
// until its TTL (or the configured interval) runs out. The snapshot build reads the answers
// synchronously; an answer that changes asks for a rebuild. Connections and probes dial the addresses
// the snapshot holds, never the name, so no connection, datagram or probe waits on DNS.
import dns from "node:dns";
import net from "node:net";
import type { Logger } from "../log.js";
import type { ResolvedName } from "../model/snapshot.js";

export interface ResolverOptions {
  /** DNS servers ("10.0.0.53", "127.0.0.1:5353", "[::1]:53"); empty: the system resolver (getaddrinfo). */
  servers: readonly string[];
  /** Re-resolve at least this often (ms); the system resolver reports no TTL, so exactly this often. */
  interval: number;
  /** Per query to `servers` (ms). */
  timeout: number;
  /** A name's answer changed (addresses or error): the snapshot must be rebuilt. */
  onChange(): void;
  log?: Logger;
}

/** A name answered less than this ago is not asked again, whatever its TTL says (TTL 0 would spin). */
const MIN_REFRESH_MS = 1000;
/** A failed lookup is retried this soon (or at `interval`, if shorter). */
const RETRY_MS = 5000;

/** Errors that say the name has no address (the answer is authoritative); anything else is transient. */
const ABSENT = new Set(["ENOTFOUND", "ENODATA"]);

interface Entry {
  readonly name: string;
  result: ResolvedName | null;
  timer: NodeJS.Timeout | null;
  running: boolean;
  removed: boolean;
}

interface Answer {
  addresses: string[];
  /** Lowest TTL of the answer in ms; null when the resolver does not report one (getaddrinfo). */
  ttlMs: number | null;
  /** Error code of a family that failed (ENOTFOUND, ENODATA, ETIMEOUT…), for the reason. */
  codes: string[];
}

/** IPv4 before IPv6, then code-unit order: the same address set sorts the same on every node. */
export function compareAddresses(a: string, b: string): number {
  const fa = net.isIPv6(a) ? 6 : 4;
  const fb = net.isIPv6(b) ? 6 : 4;
  if (fa !== fb) return fa - fb;
  return a < b ? -1 : a > b ? 1 : 0;
}

/** Whether a backend address is a host name to resolve (not an IPv4/IPv6 literal). */
export function isHostName(address: string): boolean {
  return net.isIP(address) === 0;
}

export class NameResolver {
  private readonly entries = new Map<string, Entry>();
  private readonly resolver: dns.promises.Resolver | null;
  private closed = false;
  /** Lookups started (A+AAAA to servers count once): tests read it to see no lookup happens per connection. */
  lookups = 0;

  constructor(private readonly opts: ResolverOptions) {
    if (opts.servers.length > 0) {
      this.resolver = new dns.promises.Resolver({ timeout: opts.timeout, tries: 2 });
      this.resolver.setServers([...opts.servers]);
    } else this.resolver = null;
  }

  /** The last answer for `name`, or undefined before the first one. Synchronous: the snapshot build calls it. */
  get(name: string): ResolvedName | undefined {
    return this.entries.get(name)?.result ?? undefined;
  }

  /** Makes `names` the set kept resolved: new names are looked up now, names no longer used are dropped. */
  track(names: ReadonlySet<string>): void {
    if (this.closed) return;
    for (const name of names) {
      if (this.entries.has(name)) continue;
      const e: Entry = { name, result: null, timer: null, running: false, removed: false };
      this.entries.set(name, e);
      this.lookup(e);
    }
    for (const [name, e] of this.entries) {
      if (names.has(name)) continue;
      e.removed = true;
      if (e.timer !== null) clearTimeout(e.timer);
      this.entries.delete(name);
    }
  }

  close(): void {
    this.closed = true;
    for (const e of this.entries.values()) {
      e.removed = true;
      if (e.timer !== null) clearTimeout(e.timer);
    }
    this.entries.clear();
    this.resolver?.cancel();
  }

  private lookup(e: Entry): void {
    if (e.running || e.removed || this.closed) return;
    e.running = true;
    this.lookups++;
    const ask = this.resolver !== null ? this.askServers(e.name, this.resolver) : this.askSystem(e.name);
    ask.then(
      (answer) => this.settle(e, answer),
      (err: Error) => this.settle(e, { addresses: [], ttlMs: null, codes: [err.message] }),
    );
  }

  /** A and AAAA from the configured servers, with TTLs; a family that fails gives its error code. */
  private async askServers(name: string, r: dns.promises.Resolver): Promise<Answer> {
    const [a, aaaa] = await Promise.allSettled([r.resolve4(name, { ttl: true }), r.resolve6(name, { ttl: true })]);
    const addresses: string[] = [];
    const codes: string[] = [];
    let ttl = Number.POSITIVE_INFINITY;
    for (const res of [a, aaaa]) {
      if (res.status === "fulfilled") {
        for (const rec of res.value) {
          addresses.push(rec.address);
          ttl = Math.min(ttl, rec.ttl * 1000);
        }
      } else codes.push((res.reason as NodeJS.ErrnoException).code ?? (res.reason as Error).message);
    }
    return { addresses, ttlMs: Number.isFinite(ttl) ? ttl : null, codes };
  }

  /** getaddrinfo, as every other program on the host resolves (hosts file included); no TTL. */
  private async askSystem(name: string): Promise<Answer> {
    try {
      const all = await dns.promises.lookup(name, { all: true, family: 0 });
      return { addresses: all.map((x) => x.address), ttlMs: null, codes: [] };
    } catch (err) {
      return { addresses: [], ttlMs: null, codes: [(err as NodeJS.ErrnoException).code ?? (err as Error).message] };
    }
  }

  private settle(e: Entry, answer: Answer): void {
    e.running = false;
    if (e.removed || this.closed) return;
    const now = Date.now();
    const found = [...new Set(answer.addresses)].sort(compareAddresses);
    const transient = answer.codes.some((c) => !ABSENT.has(c));
    const prev = e.result;
    let addresses: string[];
    let error: string | null;
    if (transient && prev !== null && prev.addresses.length > 0) {
      // A server that times out or fails says nothing about the name: keep serving the last answer
      // (as the cluster does with its last snapshot when etcd is away), and show why it is stale.
      addresses = prev.addresses as string[];
      error = `${answer.codes.join(", ")}; keeping the last answer`;
    } else if (found.length > 0) {
      addresses = found;
      error = transient ? answer.codes.join(", ") : null;
    } else {
      addresses = [];
      if (transient) error = answer.codes.join(", ");
      else if (this.resolver === null) error = "not found (getaddrinfo ENOTFOUND)";
      else error = answer.codes.length === 2 && answer.codes.every((c) => c === "ENOTFOUND") ? "NXDOMAIN" : "no A or AAAA records";
    }
    const changed = prev === null || prev.error !== error || !sameList(prev.addresses, addresses);
    if (changed) {
      e.result = Object.freeze({ addresses: Object.freeze(addresses), error, since: now, ttlMs: answer.ttlMs });
      if (error !== null) this.opts.log?.warn({ name: e.name, reason: error, addresses }, "backend name did not resolve");
      else this.opts.log?.info({ name: e.name, addresses }, "backend name resolved");
    }
    const interval = Math.max(MIN_REFRESH_MS, this.opts.interval);
    // Failing (nothing, or a stale answer): ask again soon. Answered: when the TTL runs out, capped by
    // the interval so a long TTL still notices a change within it. getaddrinfo: every interval.
    let next = interval;
    if (error !== null) next = Math.min(interval, RETRY_MS);
    else if (answer.ttlMs !== null) next = Math.min(interval, Math.max(MIN_REFRESH_MS, answer.ttlMs));
    e.timer = setTimeout(() => {
      e.timer = null;
      this.lookup(e);
    }, next);
    e.timer.unref();
    if (changed) this.opts.onChange();
  }
}

function sameList(a: readonly string[], b: readonly string[]): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}
