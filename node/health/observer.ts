// The observer role (observer quorum, issue 17): a node chosen as one of a service's observers (and
// not its leader) probes that service's backends with the same check engine and publishes what it
// sees as one record per service, health/observations/<service>/<node>, leased to this node (gone
// within the lease TTL of its death). Written only when its pass/fail state of a backend changes
// (after rise/fall), batched: a mass outage is one write per service, not one per backend or probe.
import { encodeValue, type Verdict } from "../../shared/codec.js";
import type { KeySchema } from "../../shared/keys.js";
import type { Lease, Store } from "../control/store.js";
import type { Logger } from "../log.js";
import { Checker, type CheckTarget } from "./checker.js";
import type { Probe, ProbeOutcome } from "./checks.js";
import type { HealthMetrics } from "./metrics.js";

export interface ObserverContext {
  readonly id: string;
  readonly store: Store;
  readonly keys: KeySchema;
  /** Lease TTL of the observation records, in seconds. */
  readonly leaseTtl: number;
  readonly log: Logger;
  readonly metrics: HealthMetrics;
  readonly probe?: Probe;
  /** This node's own state of a backend (`service/id`) changed (null: no longer observed by this role). */
  onOwn(key: string, verdict: Verdict | null): void;
  /** Every probe result (metrics, renewing local avoidance). */
  onResult(target: CheckTarget, outcome: ProbeOutcome): void;
}

/** Changes within this window go out in one write per service. */
const BATCH_MS = 100;
/** A failed write is retried after this long. */
const RETRY_MS = 1_000;
/** After a local resource shortage, the observer's records say `local` (no vote) for at least this long. */
const STARVED_MIN_MS = 5_000;

export class ObserverRole {
  private readonly checker: Checker;
  /** Services this node observes now. */
  private services: ReadonlySet<string> = new Set();
  /** Own state per service and backend (only known states). */
  private readonly states = new Map<string, Map<string, Verdict>>();
  /** Services whose record must be (re)written or deleted. */
  private readonly dirty = new Set<string>();
  /** Services with a record of ours in etcd (as far as we know). */
  private readonly published = new Set<string>();
  private flushTimer: NodeJS.Timeout | null = null;
  private flushing = false;
  private lease: Lease | null = null;
  private starvedUntil = 0;
  private starvedReason = "";
  private stopped = false;

  constructor(private readonly ctx: ObserverContext) {
    this.checker = new Checker(
      ctx.id,
      {
        onChange: (target, verdict) => {
          let m = this.states.get(target.service);
          if (!m) {
            m = new Map();
            this.states.set(target.service, m);
          }
          m.set(target.id, verdict);
          this.markDirty(target.service);
          ctx.onOwn(target.key, verdict);
        },
        onResult: (target, outcome, seconds, lagMs) => {
          ctx.metrics.observe(target.service, outcome.result, seconds, lagMs);
          ctx.onResult(target, outcome);
        },
        // A node that cannot make its probes has no vote: its records say so (the leader counts it
        // as `local`, not as a failure) until it has gone STARVED_MIN_MS without another shortage.
        onLocalFault: (target, outcome) => {
          const first = Date.now() >= this.starvedUntil;
          this.starvedUntil = Date.now() + Math.max(STARVED_MIN_MS, 2_000 * ctx.leaseTtl);
          this.starvedReason = `local resource shortage: ${outcome.reason}`;
          if (!first) return;
          ctx.log.warn({ backend: target.key, reason: outcome.reason }, "observer short of local resources: its observations are no vote");
          for (const s of this.services) this.markDirty(s);
          const t = setTimeout(() => {
            for (const s of this.services) this.markDirty(s);
          }, this.starvedUntil - Date.now() + 10);
          t.unref();
        },
      },
      ctx.probe,
    );
  }

  /** Backends this role probes now. */
  get checking(): number {
    return this.checker.size;
  }

  /** Services this node observes (for /api/state and tests). */
  observing(): ReadonlySet<string> {
    return this.services;
  }

  /**
   * Observes the backends of `services` among `targets` (the snapshot's): new ones from unknown,
   * gone ones stop (and their own state is cleared); a service left behind has its record deleted.
   */
  set(targets: readonly CheckTarget[], services: ReadonlySet<string>): void {
    if (this.stopped) return;
    const mine = targets.filter((t) => services.has(t.service));
    this.checker.setTargets(mine);
    const keep = new Set(mine.map((t) => t.key));
    for (const [service, m] of this.states) {
      for (const id of m.keys()) {
        if (keep.has(`${service}/${id}`)) continue;
        m.delete(id);
        this.markDirty(service);
        this.ctx.onOwn(`${service}/${id}`, null);
      }
      if (m.size === 0) this.states.delete(service);
    }
    for (const s of this.services) if (!services.has(s)) this.markDirty(s);
    for (const s of services) if (!this.services.has(s)) this.markDirty(s);
    this.services = services;
    this.ctx.metrics.checking.set({ role: "observer" }, this.checker.size);
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.checker.stop();
    if (this.flushTimer) clearTimeout(this.flushTimer);
    this.ctx.metrics.checking.set({ role: "observer" }, 0);
    // The lease takes every record of ours with it.
    if (this.lease) await this.lease.revoke().catch(() => {});
  }

  private markDirty(service: string): void {
    this.dirty.add(service);
    this.schedule(BATCH_MS);
  }

  private schedule(ms: number): void {
    if (this.stopped || this.flushTimer !== null) return;
    this.flushTimer = setTimeout(() => {
      this.flushTimer = null;
      void this.flush();
    }, ms);
    this.flushTimer.unref();
  }

  private async flush(): Promise<void> {
    if (this.stopped || this.flushing) return;
    this.flushing = true;
    const batch = [...this.dirty];
    this.dirty.clear();
    try {
      const lease = await this.leaseFor();
      for (const service of batch) {
        const key = this.ctx.keys.observation(service, this.ctx.id);
        if (!this.services.has(service)) {
          if (this.published.delete(service)) await this.ctx.store.delete(key);
          continue;
        }
        await this.ctx.store.put(key, this.encode(service), { lease: lease.id });
        this.published.add(service);
      }
    } catch (err) {
      for (const s of batch) this.dirty.add(s);
      this.ctx.log.debug({ err: (err as Error).message }, "observation write failed; retrying");
      this.flushing = false;
      this.schedule(RETRY_MS);
      return;
    }
    this.flushing = false;
    if (this.dirty.size > 0) this.schedule(BATCH_MS);
  }

  private encode(service: string): Buffer {
    const pass: string[] = [];
    // No prototype: a backend may be named "__proto__" (the id rules allow it).
    const fail: Record<string, string> = Object.create(null);
    for (const [id, v] of this.states.get(service) ?? []) {
      if (v.state === "up") pass.push(id);
      else fail[id] = v.reason;
    }
    const value: Record<string, unknown> = { node: this.ctx.id, at: Date.now(), pass, fail };
    if (Date.now() < this.starvedUntil) value.local = this.starvedReason;
    return encodeValue(value);
  }

  private async leaseFor(): Promise<Lease> {
    if (this.lease) return this.lease;
    const lease = await this.ctx.store.grantLease(this.ctx.leaseTtl, true);
    this.lease = lease;
    lease.onLost((reason) => {
      if (this.lease !== lease || this.stopped) return;
      this.ctx.log.warn({ reason }, "observation lease lost; publishing again");
      this.lease = null;
      this.published.clear();
      for (const s of this.services) this.markDirty(s);
    });
    return lease;
  }
}
