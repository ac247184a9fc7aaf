// A won election of the etcd store: fenced writes, and noticing the loss.

import { CompareResult, CompareTarget, type IRequestOp, type ITxnRequest, type ITxnResponse } from "etcd3";
import { storeError, toBuffer } from "./etcd-common.js";
import type { EtcdStoreLease } from "./etcd-lease.js";
import { LossSignal, type LostCallback } from "./loss.js";
import type { Leadership } from "./store.js";

export interface LeadershipOps {
  txn(req: ITxnRequest, timeoutMs?: number): Promise<ITxnResponse>;
  waitGone(key: Buffer, createRevision: string, signal: AbortSignal): Promise<boolean>;
  forget(leadership: EtcdLeadership): void;
}

/**
 * A won election. Every write is one transaction guarded by `create_revision(key) == term`, so a
 * deposed leader (lease expired while it was paused or partitioned, key deleted) cannot write even
 * before it notices. Loss is noticed from the lease, from a watch on the key, or from a failed fence.
 */
export class EtcdLeadership implements Leadership {
  private readonly loss = new LossSignal();
  private resigned = false;
  private readonly keyWatch = new AbortController();

  constructor(
    private readonly ops: LeadershipOps,
    readonly key: string,
    readonly term: string,
    private readonly lease: EtcdStoreLease,
  ) {
    lease.onLost((reason) => void this.end(`lease lost: ${reason}`));
    void ops
      .waitGone(Buffer.from(key), term, this.keyWatch.signal)
      .then((gone) => {
        if (gone) void this.end("election key deleted");
      })
      .catch(() => undefined);
  }

  fencedPut(key: string, value: Buffer | string, opts?: { timeoutMs?: number }): Promise<boolean> {
    return this.fenced({ request_put: { key: Buffer.from(key), value: toBuffer(value) } }, opts?.timeoutMs);
  }

  /** True when the fence held (the key is gone, whether or not it existed). */
  fencedDelete(key: string): Promise<boolean> {
    return this.fenced({ request_delete_range: { key: Buffer.from(key) } });
  }

  onLost(cb: LostCallback): void {
    this.loss.onLost(cb);
  }

  /** Steps down: deletes the election key and revokes the lease so the next candidate leads at once. */
  async resign(): Promise<void> {
    if (this.resigned) return;
    this.resigned = true;
    const wasLeading = this.loss.end();
    this.keyWatch.abort();
    this.ops.forget(this);
    let failure: unknown;
    if (wasLeading) {
      try {
        await this.ops.txn({
          compare: [this.fence()],
          success: [{ request_delete_range: { key: Buffer.from(this.key) } }],
        });
      } catch (err) {
        failure = err;
      }
    }
    try {
      await this.lease.revoke();
    } catch (err) {
      failure ??= err;
    }
    if (failure !== undefined) throw storeError(failure, "resign");
  }

  /** Ends the leadership (idempotent) for loss or close; resolves once the lease revoke settled. */
  end(reason: string): Promise<void> {
    if (!this.loss.lose(reason)) return Promise.resolve();
    this.keyWatch.abort();
    this.ops.forget(this);
    return this.lease.revoke().catch(() => undefined);
  }

  private fence() {
    return {
      key: Buffer.from(this.key),
      target: CompareTarget.Create,
      result: CompareResult.Equal,
      create_revision: this.term,
    };
  }

  private async fenced(op: IRequestOp, timeoutMs?: number): Promise<boolean> {
    if (!this.loss.live) return false;
    const res = await this.ops.txn({ compare: [this.fence()], success: [op], failure: [] }, timeoutMs);
    if (res.succeeded) return true;
    void this.end("fenced write refused: the election key no longer carries our term");
    return false;
  }
}
