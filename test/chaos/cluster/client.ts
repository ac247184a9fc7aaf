// The load client container and what its runs return: load-client.mjs runs inside it, spreading
// connections over many source addresses, and reports every connection (node, backend, times, error).

import type { StartedTestContainer } from "testcontainers";
import type { ChaosCluster } from "./chaos-cluster.js";
import { Member } from "./member.js";

export interface LoadOptions {
  /** "ip:port"; default the VIP (anycast) or the first node (without). */
  target?: string;
  /** How many of the client's source addresses to use (default all). */
  sources?: number;
  concurrency?: number;
  connections?: number;
  durationMs: number;
  timeoutMs?: number;
  requests?: number;
  gapMs?: number;
  holdMs?: number;
  /** Hold of the first request (default holdMs); 0 makes the first answer name node and backend at once. */
  firstHoldMs?: number;
  /** Epoch ms to start at (same clock as the host): lines a fault up with the load, whatever exec's delay. */
  startAt?: number;
}

export interface ConnectionRecord {
  i: number;
  src: string | null;
  /** The client's local port (0 if the socket never got one): with src, the connection's conntrack key. */
  port: number;
  /** ms after the load started */
  start: number;
  connectMs: number;
  end: number;
  ok: boolean;
  err: string | null;
  backends: (string | null)[];
  /** the node each answer came through (the backend's TCP peer) */
  nodes: (string | null)[];
  answered: number;
}

export interface LoadResult {
  /** epoch ms the load started (inside the client container; same host clock) */
  t0: number;
  elapsedMs: number;
  cutShort: boolean;
  total: number;
  ok: number;
  failed: number;
  errors: Record<string, number>;
  connections: ConnectionRecord[];
}

export class Client extends Member {
  constructor(
    cluster: ChaosCluster,
    name: string,
    container: StartedTestContainer,
    readonly sources: string[],
  ) {
    super(cluster, "client", name, container);
  }

  /** Runs the load loop in the container; bounded by count and time (and `timeout` around node). */
  async load(opts: LoadOptions): Promise<LoadResult> {
    const c = this.cluster;
    const target = opts.target ?? (c.vip ? `${c.vip}:8080` : `${c.nodes[0].ip("fabric")}:8080`);
    const sources = c.vip ? this.sources.slice(0, opts.sources ?? this.sources.length) : [];
    const args = { ...opts, target, sources };
    const hold = Math.max(opts.holdMs ?? 0, opts.firstHoldMs ?? 0);
    const wait = Math.max(0, (opts.startAt ?? 0) - Date.now());
    const bound = Math.ceil((wait + opts.durationMs + (opts.timeoutMs ?? 2000) + (hold + (opts.gapMs ?? 0)) * (opts.requests ?? 1)) / 1000) + 10;
    const r = await this.exec(["timeout", String(bound), "node", "/chaos/load-client.mjs", JSON.stringify(args)]);
    if (r.exitCode !== 0) throw new Error(`load client exited ${r.exitCode}: ${r.stderr.slice(0, 2000)}`);
    return JSON.parse(r.stdout) as LoadResult;
  }
}

export function percentile(values: number[], p: number): number {
  if (values.length === 0) return Number.NaN;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}

/** Connections per node (by the node address the backend saw). */
export function byNode(load: LoadResult): Record<string, number> {
  const out: Record<string, number> = {};
  for (const c of load.connections) for (const n of c.nodes) if (n) out[n] = (out[n] ?? 0) + 1;
  return out;
}

/**
 * The node (fabric address) a connection went through. With `nodeIps` (proxy-mode services, where the
 * backend sees the node as its peer), an answer naming one of those nodes wins: it is what carried the
 * connection to the backend. The router's pin comes next — it is the only witness for a connection that
 * failed — but it is sampled from conntrack once a second and keyed by the client's address and port,
 * so a port the client reused for a later connection can carry an earlier connection's pin (one such
 * misattribution failed chaos 11a in CI: a connection the victim answered through another node was
 * counted against the cut node). Without `nodeIps` (DSR, where the peer is the client), the pin first.
 */
export function nodeOf(conn: ConnectionRecord, pinned: Map<string, string>, nodeIps?: ReadonlySet<string>): string | null {
  const answered = conn.nodes.find((n) => n !== null) ?? null;
  if (nodeIps && answered !== null && nodeIps.has(answered)) return answered;
  return (conn.src && conn.port ? pinned.get(`${conn.src}:${conn.port}`) : undefined) ?? answered;
}

/** Connections whose answering node (proxy mode) differs from the router's pin: how often the pin misleads. */
export function pinMismatches(conns: readonly ConnectionRecord[], pinned: Map<string, string>, nodeIps: ReadonlySet<string>): number {
  let n = 0;
  for (const c of conns) {
    const answered = c.nodes.find((x) => x !== null);
    const pin = c.src && c.port ? pinned.get(`${c.src}:${c.port}`) : undefined;
    if (answered && pin && nodeIps.has(answered) && answered !== pin) n++;
  }
  return n;
}

