// Shared by the etcd store's files: error mapping onto StoreError codes, retry backoff, key ranges,
// and detaching watchers without waiting for a server that may be gone.

import { setTimeout as sleep } from "node:timers/promises";
import {
  ClientClosedError,
  EtcdAuthenticationFailedError,
  EtcdInvalidAuthTokenError,
  EtcdPermissionDeniedError,
  GRPCUnauthenticatedError,
  type IKeyValue,
  type IOptions,
  isRecoverableError,
  type Watcher,
} from "etcd3";
import { type KeyValue, StoreError } from "./store.js";

export interface BackoffConfig {
  initialMs: number;
  maxMs: number;
}

export function backoffDelay(cfg: BackoffConfig, failures: number): number {
  const ceiling = Math.min(cfg.maxMs, cfg.initialMs * 2 ** Math.min(failures, 20));
  // "Equal jitter": never less than half the step, so a crowd of nodes spreads out but still backs off.
  return ceiling / 2 + Math.random() * (ceiling / 2);
}

/** Sleeps unless/until the signal aborts; never rejects. */
export async function pause(ms: number, signal: AbortSignal): Promise<void> {
  if (signal.aborted) return;
  try {
    await sleep(ms, undefined, { signal });
  } catch {
    // aborted
  }
}

export function describe(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/** First key after every key starting with `prefix` (etcd's range_end for a prefix). */
export function prefixEnd(prefix: Buffer): Buffer {
  for (let i = prefix.length - 1; i >= 0; i--) {
    if (prefix[i] < 0xff) {
      const end = Buffer.from(prefix.subarray(0, i + 1));
      end[i]++;
      return end;
    }
  }
  return Buffer.from([0]); // "" or all 0xff: to the end of the keyspace
}

export function toKeyValue(kv: IKeyValue): KeyValue {
  return {
    key: kv.key.toString(),
    value: kv.value,
    modRevision: Number(kv.mod_revision),
    lease: kv.lease || "0",
  };
}

export function toBuffer(value: Buffer | string): Buffer {
  return typeof value === "string" ? Buffer.from(value) : value;
}

/** Maps etcd3/gRPC errors onto the stable StoreError codes. */
export function storeError(err: unknown, what: string): StoreError {
  if (err instanceof StoreError) return err;
  const message = `${what}: ${describe(err)}`;
  let mapped: StoreError;
  if (err instanceof ClientClosedError) {
    mapped = new StoreError("STORE_CLOSED", message, false);
  } else if (
    err instanceof EtcdAuthenticationFailedError ||
    err instanceof EtcdPermissionDeniedError ||
    err instanceof EtcdInvalidAuthTokenError ||
    err instanceof GRPCUnauthenticatedError
  ) {
    mapped = new StoreError("STORE_AUTH", message, false);
  } else {
    // Network, deadline and server-side unavailability are recoverable, and so is a paged read that
    // lost its revision to a compaction (read again); anything else is a request etcd refused.
    const recoverable =
      err instanceof Error && (isRecoverableError(err) || err.message.includes("required revision has been compacted"));
    mapped = new StoreError("STORE_UNAVAILABLE", message, recoverable);
  }
  mapped.cause = err;
  return mapped;
}

export function closedError(): StoreError {
  return new StoreError("STORE_CLOSED", "the store is closed", false);
}

/**
 * Detaches an etcd3 watcher without waiting for the server. While the watch stream is down the
 * detach is synchronous, which keeps etcd3 from resubscribing the watcher on its own.
 */
export function detach(watcher: Watcher): Promise<void> {
  try {
    return watcher.cancel().catch(() => undefined);
  } catch {
    return Promise.resolve(); // the stream is already gone
  }
}

export function withGrace(promise: Promise<unknown>, ms: number): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    timer.unref();
    void promise.finally(() => {
      clearTimeout(timer);
      resolve();
    });
  });
}

/** etcd3's fault-handling policy type (a cockatiel policy; only `execute` is ever called). */
export type FaultPolicy = ReturnType<NonNullable<NonNullable<IOptions["faultHandling"]>["host"]>>;

/** A fault policy that runs every call through `execute`: etcd3 needs nothing more of one. */
export function faultPolicy(execute: <T>(fn: () => PromiseLike<T> | T) => Promise<T>): FaultPolicy {
  const signal = new AbortController().signal;
  const noEvent = () => ({ dispose() {} });
  const policy = {
    onSuccess: noEvent,
    onFailure: noEvent,
    execute: <T>(fn: (context: { signal: AbortSignal }) => PromiseLike<T> | T): Promise<T> => execute(() => fn({ signal })),
  };
  return policy as unknown as FaultPolicy;
}
