// Events: what changed and when, for operators ("the verdict that flapped at 03:12"). Each node keeps a
// small in-memory ring (/api/events) and writes events to etcd under events/<node>/<seq>, leased so they
// expire (bounded in time), at a bounded rate (bounded in count); `ballast events [--follow]` reads them
// for the whole cluster. Facts every node sees alike (verdicts, invalid records) are written by the
// health leader only, so the cluster log has each once.
import type { EventView } from "../shared/api.js";
import type { KeySchema } from "../shared/keys.js";
import type { Lease, Store } from "./control/store.js";
import type { Logger } from "./log.js";
import type { Snapshot } from "./model/snapshot.js";

/** One event; `at` is ms epoch on the node that saw it. The shape is the admin API's (shared/api.ts). */
export type BallastEvent = EventView;
export type EventKind = EventView["kind"];

/** Events kept in memory per node. */
const RING = 500;
/** Cluster events expire this long after being written (one lease per window, see below). */
export const EVENT_TTL_S = 3600;
/** A new lease every window, so events live between EVENT_TTL_S and EVENT_TTL_S + window. */
const LEASE_WINDOW_MS = 10 * 60_000;
/** At most this many events per second go to etcd from one node; the rest stay local (counted). */
const WRITES_PER_SECOND = 20;

export function eventsPrefix(keys: KeySchema): string {
  return keys.events;
}

export class EventLog {
  private readonly ring: BallastEvent[] = [];
  private seq = 0;
  private lease: { lease: Promise<Lease>; until: number } | null = null;
  private windowStart = 0;
  private windowCount = 0;
  dropped = 0;
  written = 0;
  private closed = false;

  constructor(
    private readonly nodeId: string,
    private readonly keys: KeySchema,
    private readonly store: Store,
    private readonly log: Logger,
    /** Whether this node writes cluster-wide facts (it is the health leader, or standalone). */
    private readonly writesShared: () => boolean,
  ) {}

  recent(limit = RING): BallastEvent[] {
    return this.ring.slice(-limit);
  }

  record(kind: EventKind, message: string, fields: { service?: string; backend?: string } = {}, shared = false): void {
    const e: BallastEvent = { at: Date.now(), node: this.nodeId, kind, message, ...fields };
    this.ring.push(e);
    if (this.ring.length > RING) this.ring.splice(0, this.ring.length - RING);
    this.log.info({ event: kind, service: e.service, backend: e.backend }, message);
    if (shared && !this.writesShared()) return;
    this.publish(e);
  }

  /** Verdict and administrative state changes between two snapshots. */
  diff(prev: Snapshot | null, next: Snapshot): void {
    if (prev === null) return;
    for (const svc of next.services.values()) {
      const before = prev.services.get(svc.name);
      if (before === undefined) continue;
      const old = new Map(before.backends.map((b) => [b.id, b]));
      for (const b of svc.backends) {
        const o = old.get(b.id);
        if (o === undefined) continue;
        const was = o.verdict?.state ?? "unknown";
        const is = b.verdict?.state ?? "unknown";
        if (was !== is && is !== "unknown") {
          this.record("verdict", `backend ${svc.name}/${b.id} ${is}${b.verdict?.reason ? `: ${b.verdict.reason}` : ""}`, { service: svc.name, backend: b.id }, true);
        }
        if (o.spec.state !== b.spec.state) {
          this.record("backend-state", `backend ${svc.name}/${b.id} ${o.spec.state} → ${b.spec.state}`, { service: svc.name, backend: b.id }, true);
        }
      }
    }
  }

  private publish(e: BallastEvent): void {
    if (this.closed) return;
    const now = e.at;
    if (now - this.windowStart >= 1000) {
      this.windowStart = now;
      this.windowCount = 0;
    }
    if (this.windowCount >= WRITES_PER_SECOND) {
      this.dropped++;
      return;
    }
    this.windowCount++;
    const key = `${eventsPrefix(this.keys)}${this.nodeId}/${String(now).padStart(15, "0")}-${String(this.seq++).padStart(6, "0")}`;
    void this.leaseFor(now)
      .then((lease) => this.store.put(key, JSON.stringify(e), { lease: lease.id }))
      .then(
        () => {
          this.written++;
        },
        (err: Error) => {
          this.dropped++;
          this.log.debug({ err: err.message }, "event not written to etcd");
        },
      );
  }

  private leaseFor(now: number): Promise<Lease> {
    if (this.lease !== null && now < this.lease.until) return this.lease.lease;
    const lease = this.store.grantLease(EVENT_TTL_S, false);
    this.lease = { lease, until: now + LEASE_WINDOW_MS };
    // A failed grant is asked again with the next event.
    lease.catch(() => {
      if (this.lease?.lease === lease) this.lease = null;
    });
    return lease;
  }

  close(): void {
    this.closed = true;
  }
}
