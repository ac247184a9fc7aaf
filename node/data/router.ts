// The routing decision, shared by the hot path and `route explain`: affinity entry first (when the
// service has affinity), then the service's algorithm. Synchronous; never awaits etcd, never throws.
import type { Exclude } from "../lb/algorithm.js";
import { flowHash, hashString } from "../lb/hash.js";
import type { ServiceState, Target } from "../snapshot.js";

/** Session affinity as the router sees it (implemented by the affinity table). */
export interface AffinityHook {
  /** The backend of a live entry for this client if it may still take the session, else null. */
  lookup(svc: ServiceState, ip: string, now: number): Target | null;
  /** As lookup, for route explain: counts nothing and caches nothing. */
  peek(svc: ServiceState, ip: string, now: number): Target | null;
  /** Records (or refreshes) the client's entry after a pick. */
  record(svc: ServiceState, ip: string, target: Target, now: number): void;
  /** For explain: where the entry came from and when it was last used. */
  describe?(svc: ServiceState, ip: string, now: number): { backend: string; node: string; lastUsed: number } | null;
}

export class Router {
  /** Why the last route() chose what it chose: doubles as a metric label and the explain answer. */
  reason = "";
  affinity: AffinityHook | null = null;

  /**
   * `commit` false (route explain) is pure: no affinity entry recorded or counted, and the picker is
   * asked with peek(), so round-robin, least-conn and p2c do not advance.
   */
  route(svc: ServiceState, ip: string, port: number, exclude: Exclude | null, now: number, commit = true): Target | null {
    const sticky = svc.spec.affinity.mode === "source-ip" && this.affinity !== null;
    if (sticky) {
      const t = commit ? this.affinity!.lookup(svc, ip, now) : this.affinity!.peek(svc, ip, now);
      if (t !== null && (exclude === null || !exclude(t))) {
        if (commit) this.affinity!.record(svc, ip, t, now);
        this.reason = "affinity";
        return t;
      }
    }
    const hash = svc.hashSourceOnly ? hashString(ip) : flowHash(ip, port);
    const t = (commit ? svc.picker.pick(hash, exclude) : svc.picker.peek(hash, exclude)) as Target | null;
    if (t === null) {
      this.reason = svc.targets.length === 0 ? "no-backend" : "all-excluded";
      return null;
    }
    if (sticky && commit) this.affinity!.record(svc, ip, t, now);
    this.reason = svc.spec.algorithm;
    return t;
  }
}
