// A lease of the etcd store, and when it counts as lost.

import { isRecoverableError, type Lease as EtcdLease } from "etcd3";
import { describe, storeError } from "./etcd-common.js";
import { LossSignal, type LostCallback } from "./loss.js";
import type { Lease } from "./store.js";

/**
 * etcd3's Lease, and when it counts as lost.
 *
 * A kept-alive lease (registration, election, observer) is lost when etcd says so (a keepalive
 * answered with TTL 0: it expired) or when etcd3 has had no answer for 2 × TTL; not merely because
 * one TTL passed without an answer. That local deadline used to drop the lease during any etcd
 * outage longer than about 2/3 TTL (the last answer is up to TTL/3 old when it starts), and every
 * node then registered again and every candidate campaigned again when etcd came back, although
 * etcd still held their leases: it extends every lease by its TTL when it restarts (issue 19: a 4 s
 * restart sent 40 of 40 nodes through recovery). Whatever a lease guards stays safe meanwhile: the
 * leader's writes are fenced on its election key, which disappears with the lease in etcd.
 *
 * A TTL-only lease (affinity batches) expires locally at its TTL, as etcd expires it.
 *
 * A revoke that cannot reach etcd is handed to `retryRevoke`: the store revokes it once etcd answers,
 * so keys (election keys above all) do not linger for a TTL after an outage.
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
    private readonly retryRevoke: (inner: EtcdLease) => void = () => {},
  ) {
    inner.on("lost", (err) => this.lose(describe(err)));
    if (!keepAlive) this.arm(ttlSeconds, "expired");
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
      this.revokeLater(err);
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
    void this.inner.revoke().catch((err: unknown) => this.revokeLater(err));
  }

  /** etcd did not answer the revoke: the store tries again once it does (etcd may still hold the lease). */
  private revokeLater(err: unknown): void {
    if (err instanceof Error && isRecoverableError(err)) this.retryRevoke(this.inner);
  }

  private end(): void {
    clearTimeout(this.timer);
    this.ended.abort();
    this.onEnded();
  }
}
