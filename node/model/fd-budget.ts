// The node's file-descriptor budget. Client connections, UDP flows and health probes all draw on one
// process limit (RLIMIT_NOFILE); a flood that spends it all makes probes fail with EMFILE, and a
// leader that took those for backend failures would write `down` for every backend of the cluster.
// So the data plane admits new connections and flows only within a budget that leaves headroom for
// probes (one per check target), listeners, etcd, the admin API and logs.
import { readdirSync, readFileSync } from "node:fs";

/**
 * Errors that say this node ran short (descriptors, kernel buffers, memory, local ports), not that
 * the peer failed: never a verdict, never a reason to eject a backend.
 */
const LOCAL_RESOURCE_CODES = new Set(["EMFILE", "ENFILE", "ENOBUFS", "ENOMEM", "EADDRNOTAVAIL"]);

export function isLocalResourceError(code: string | undefined): boolean {
  return code !== undefined && LOCAL_RESOURCE_CODES.has(code);
}

/** The soft RLIMIT_NOFILE (`ulimit -n`) from /proc/self/limits; Infinity where that cannot be read. */
export function readFdLimit(path = "/proc/self/limits"): number {
  try {
    const m = /^Max open files\s+(\d+|unlimited)\s/m.exec(readFileSync(path, "utf8"));
    if (m === null || m[1] === "unlimited") return Number.POSITIVE_INFINITY;
    return Number(m[1]);
  } catch {
    return Number.POSITIVE_INFINITY;
  }
}

/** Descriptors open in this process now (0 where /proc is not available). */
export function countOpenFds(): number {
  try {
    return readdirSync("/proc/self/fd").length;
  } catch {
    return 0;
  }
}

/** Descriptors a TCP connection holds (client + upstream) and a UDP flow holds (its upstream socket). */
export const FDS_PER_CONNECTION = 2;
export const FDS_PER_FLOW = 1;

export class FdBudget {
  /** Held by the data plane now: FDS_PER_CONNECTION per TCP connection, FDS_PER_FLOW per UDP flow. */
  inUse = 0;
  /** What the data plane may hold at most (recomputed when a reserve changes, not per take). */
  capacity: number;
  /** Fixed headroom for etcd, the admin API, logs and short-lived work: max(64, 10% of the limit). */
  readonly headroom: number;
  private readonly reserves = new Map<string, number>();

  constructor(
    /** RLIMIT_NOFILE (soft). */
    readonly limit: number = readFdLimit(),
    /** Descriptors the process already held when the budget was made (stdio, epoll, etcd, admin). */
    readonly baseline: number = countOpenFds(),
  ) {
    this.headroom = Number.isFinite(limit) ? Math.max(64, Math.ceil(limit / 10)) : 0;
    this.capacity = this.compute();
  }

  /** Sets a named reserve (probes: one per check target; listeners: one per listener). */
  reserve(name: string, fds: number): void {
    if (this.reserves.get(name) === fds) return;
    this.reserves.set(name, fds);
    this.capacity = this.compute();
  }

  /** Admits `fds` more descriptors for the data plane, or refuses (the hot path: no allocation). */
  take(fds: number): boolean {
    if (this.inUse + fds > this.capacity) return false;
    this.inUse += fds;
    return true;
  }

  release(fds: number): void {
    this.inUse -= fds;
  }

  private compute(): number {
    if (!Number.isFinite(this.limit)) return Number.POSITIVE_INFINITY;
    let reserved = this.baseline + this.headroom;
    for (const n of this.reserves.values()) reserved += n;
    return Math.max(0, this.limit - reserved);
  }
}
