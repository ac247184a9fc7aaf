// Live counters per backend and per service. They outlive snapshots (a config change keeps counts and
// ejection state), are incremented as plain numbers on the hot path and read by /metrics at scrape time.
import type { BackendStats } from "../lb/algorithm.js";

export const CONNECT_FAILURE_REASONS = ["refused", "timeout", "reset", "unreachable", "other"] as const;
export type ConnectFailureReason = (typeof CONNECT_FAILURE_REASONS)[number];

/**
 * fd-budget: the node's descriptor budget (node/model/fd-budget.ts) is spent; local-resources: the
 * upstream socket could not be made (EMFILE, ENOBUFS…), which is this node's shortage, not the backend's.
 * proxy-header: acceptProxy refused a peer that is not a trusted balancer, or whose header was missing or bad.
 */
export const REFUSE_REASONS = ["max-connections", "denied", "rate-limited", "no-backend", "draining", "max-flows", "fd-budget", "local-resources", "proxy-header"] as const;
export type RefuseReason = (typeof REFUSE_REASONS)[number];

/**
 * Why a UDP datagram was discarded rather than relayed (each also counts in `udpDropped`):
 * - source-port-0: a spoofed source no reply can be sent to;
 * - loop: from one of the service's backends or one of this node's own listeners (spoofed to make the
 *   node relay a backend's replies back to itself, or to itself);
 * - send-error: the kernel refused a send (to a backend or back to a client);
 * - queue-full: more datagrams than a new flow queues while its upstream socket connects;
 * - no-socket: the flow's upstream socket could not be made (e.g. out of file descriptors);
 * - listener-closed: a backend reply for a flow whose service listener is gone (moved or removed).
 */
export const UDP_DISCARD_REASONS = ["source-port-0", "loop", "send-error", "queue-full", "no-socket", "listener-closed"] as const;
export type UdpDiscardReason = (typeof UDP_DISCARD_REASONS)[number];

/** Something that can be closed when its backend leaves (a TCP connection or a UDP flow). */
export interface Closable {
  close(reason: string): void;
}

export class BackendCounters implements BackendStats {
  active = 0;
  ejectedUntil = 0;
  /** Consecutive passive failures, for the ejection backoff. */
  ejections = 0;
  connections = 0;
  bytesIn = 0;
  bytesOut = 0;
  connectFailures: Record<ConnectFailureReason, number> = { refused: 0, timeout: 0, reset: 0, unreachable: 0, other: 0 };
  /** Open connections/flows to this backend, so removal or a down verdict can end them after the drain timeout. */
  readonly open = new Set<Closable>();
  /** Timer that closes `open` once the drain timeout passes after the backend left the snapshot. */
  drainTimer: NodeJS.Timeout | null = null;

  constructor(
    readonly service: string,
    readonly id: string,
  ) {}
}

export class ServiceCounters {
  active = 0;
  accepted = 0;
  bytesIn = 0;
  bytesOut = 0;
  retries = 0;
  udpFlows = 0;
  udpDatagramsIn = 0;
  udpDatagramsOut = 0;
  udpDropped = 0;
  /** `locality: prefer-zone` decisions: new clients kept in the node's zone, and those spilled over to another. */
  zoneLocal = 0;
  zoneSpillover = 0;
  udpDiscarded: Record<UdpDiscardReason, number> = { "source-port-0": 0, loop: 0, "send-error": 0, "queue-full": 0, "no-socket": 0, "listener-closed": 0 };
  refused: Record<RefuseReason, number> = { "max-connections": 0, denied: 0, "rate-limited": 0, "no-backend": 0, draining: 0, "max-flows": 0, "fd-budget": 0, "local-resources": 0, "proxy-header": 0 };
  constructor(readonly service: string) {}
}

/**
 * Registry keyed by service and backend id; entries are created on first use (by the snapshot builder)
 * and pruned once their backend or service has left the snapshot and nothing is open on them, so
 * churned ids do not pile up as metric series for the life of the process.
 */
export class StatsRegistry {
  readonly backends = new Map<string, BackendCounters>();
  readonly services = new Map<string, ServiceCounters>();

  backend(service: string, id: string): BackendCounters {
    const key = `${service}/${id}`;
    let s = this.backends.get(key);
    if (!s) {
      s = new BackendCounters(service, id);
      this.backends.set(key, s);
    }
    return s;
  }

  /**
   * Drops the counters of backends and services `snapshot` (the newest built) no longer has, once
   * they hold no open connection or flow. Returns what was dropped, so metrics
   * kept elsewhere (histograms, labelled counters) can drop those series too.
   */
  prune(snapshot: { services: ReadonlyMap<string, { backends: readonly { id: string }[] }> }): { backends: BackendCounters[]; services: string[] } {
    const dropped = { backends: [] as BackendCounters[], services: [] as string[] };
    const ids = new Map<string, Set<string>>();
    for (const [key, b] of this.backends) {
      if (b.active > 0 || b.open.size > 0) continue;
      const svc = snapshot.services.get(b.service);
      if (svc !== undefined) {
        let set = ids.get(b.service);
        if (set === undefined) {
          set = new Set(svc.backends.map((v) => v.id));
          ids.set(b.service, set);
        }
        if (set.has(b.id)) continue;
      }
      // Its drain timer has nothing left to close.
      if (b.drainTimer !== null) {
        clearTimeout(b.drainTimer);
        b.drainTimer = null;
      }
      this.backends.delete(key);
      dropped.backends.push(b);
    }
    for (const [name, s] of this.services) {
      if (s.active > 0 || snapshot.services.has(name)) continue;
      this.services.delete(name);
      dropped.services.push(name);
    }
    return dropped;
  }

  service(name: string): ServiceCounters {
    let s = this.services.get(name);
    if (!s) {
      s = new ServiceCounters(name);
      this.services.set(name, s);
    }
    return s;
  }
}
