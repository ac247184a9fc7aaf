// The routing decision, shared by the hot path and `route explain`: affinity entry first (when the
// service has affinity), then the node's zone plan (locality: prefer-zone), then the service's algorithm. Synchronous; never awaits etcd, never throws.
import type { AlgorithmName } from "../../shared/schema.js";
import type { Exclude } from "../lb/algorithm.js";
import { flowHash, hashString } from "../lb/hash.js";
import { chooseZone } from "../lb/zones.js";
import type { ServiceState, Target } from "../model/snapshot.js";

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

/** Why no backend: every routable one is full under a per-backend cap, or there is none to take it. */
export type RouteRefusal = "no-backend" | "max-connections";

/**
 * A routing decision. Its reason is the one string for the `route explain` answer, the refuse counter
 * label (when target is null) and the log field.
 */
export type RouteResult = { readonly target: Target; readonly reason: "affinity" | AlgorithmName | ZoneReason } | { readonly target: null; readonly reason: RouteRefusal };

/** `prefer-zone` reasons: "zone-local", "zone-local: zone a at 50%, keeps 71%", "spillover: zone a at 50% → zone b". */
export type ZoneReason = string;

const NO_BACKEND: RouteResult = Object.freeze({ target: null, reason: "no-backend" });
const FULL: RouteResult = Object.freeze({ target: null, reason: "max-connections" });

export class Router {
  /** `zone`: the node's zone (node config `node.zone`); `prefer-zone` services route by its plan. */
  constructor(
    private readonly affinity: AffinityHook | null,
    readonly zone = "",
  ) {}

  /**
   * `commit` false (route explain) is pure: no affinity entry recorded or counted, and the picker is
   * asked with peek(), so round-robin, least-conn and p2c do not advance.
   */
  route(svc: ServiceState, ip: string, port: number, exclude: Exclude | null, now: number, commit = true): RouteResult {
    const affinity = svc.spec.affinity.mode === "source-ip" ? this.affinity : null;
    if (affinity !== null) {
      const t = commit ? affinity.lookup(svc, ip, now) : affinity.peek(svc, ip, now);
      if (t !== null && (exclude === null || !exclude(t))) {
        if (commit) affinity.record(svc, ip, t, now);
        return { target: t, reason: "affinity" };
      }
    }
    const hash = svc.hashSourceOnly ? hashString(ip) : flowHash(ip, port);
    if (svc.zones !== null && this.zone !== "") {
      const plan = svc.zones.get(this.zone);
      const choice = plan === undefined ? null : chooseZone(plan, hash);
      // A zone whose every backend is excluded (full, ejected) falls through to the whole service.
      // Explain (commit false) peeks, so it never moves a picker's state.
      const zt = choice === null ? null : ((commit ? choice.picker.pick(hash, exclude) : choice.picker.peek(hash, exclude)) as Target | null);
      if (zt !== null) {
        if (commit) {
          if (choice!.local) svc.counters.zoneLocal++;
          else svc.counters.zoneSpillover++;
          if (affinity !== null) affinity.record(svc, ip, zt, now);
        }
        return { target: zt, reason: choice!.reason };
      }
    }
    const t = (commit ? svc.picker.pick(hash, exclude) : svc.picker.peek(hash, exclude)) as Target | null;
    if (t === null) return refusal(svc);
    if (affinity !== null && commit) affinity.record(svc, ip, t, now);
    return { target: t, reason: svc.spec.algorithm };
  }
}

/** Off the hot path (only when nothing was picked): a full backend under the per-backend cap says "max-connections". */
function refusal(svc: ServiceState): RouteResult {
  const max = svc.spec.limits.maxConnectionsPerBackend;
  if (max > 0) for (const t of svc.targets) if (t.stats.active >= max) return FULL;
  return NO_BACKEND;
}
