// A lease of the etcd store, and when it counts as lost.

import type { Lease as EtcdLease } from "etcd3";
import { describe, storeError } from "./etcd-common.js";
import { LossSignal, type LostCallback } from "./loss.js";
import type { Lease } from "./store.js";

/**
 * etcd3's Lease plus a local deadline: etcd3 only reports 'lost' after 2×TTL without a keepalive
 * answer, while etcd expires the lease after 1×TTL. Losing it here after TTL without an answer is
 * conservative (etcd's clock for the lease started no later than our last answer).
 */
export class EtcdStoreLease implements Lease {
  private readonly loss = new LossSignal();
  private timer: NodeJS.Timeout | undefined;
  private readonly ended = new AbortController();

  constructor(
    private readonly inner: EtcdLease,
    readonly id: string,
    ttlSeconds: number,
    readonly keepAlive: boolean,
    private readonly onEnded: () => void,
  ) {
    inner.on("lost", (err) => this.lose(describe(err)));
    if (keepAlive) {
      // The answer carries the TTL etcd actually applies (it raises TTLs below its minimum).
      inner.on("keepaliveSucceeded", (res) => this.arm(Number(res.TTL) || ttlSeconds, "no keepalive acknowledged"));
      this.arm(ttlSeconds, "no keepalive acknowledged");
    } else {
      this.arm(ttlSeconds, "expired");
    }
  }

  /** Aborts when the lease is lost or revoked. */
  get signal(): AbortSignal {
    return this.ended.signal;
  }

  onLost(cb: LostCallback): void {
    this.loss.onLost(cb);
  }

  async revoke(): Promise<void> {
    if (!this.loss.end()) return; // a lost lease was already revoked, best effort, by lose()
    this.end();
    try {
      await this.inner.revoke();
    } catch (err) {
      throw storeError(err, "revoke lease");
    }
  }

  /** Forgets the lease locally without revoking it: etcd lets it expire at its TTL. */
  detach(): void {
    if (this.loss.end()) this.end();
  }

  private arm(ttlSeconds: number, reason: string): void {
    if (!this.loss.live) return;
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.lose(`${reason} within its ${ttlSeconds}s TTL`), ttlSeconds * 1_000);
    this.timer.unref();
  }

  private lose(reason: string): void {
    if (!this.loss.lose(reason)) return; // listeners hear in a microtask, after the cleanup below
    this.end();
    // Stop keepalives, and if etcd still has the lease, free its keys now rather than at expiry.
    void this.inner.revoke().catch(() => undefined);
  }

  private end(): void {
    clearTimeout(this.timer);
    this.ended.abort();
    this.onEnded();
  }
}
