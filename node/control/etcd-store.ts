// The etcd implementation of Store, and the only module that imports etcd3: list + watch with a
// fresh list after any break, leases, and the etcd election recipe with fenced (transactional) writes.

import { readFileSync } from "node:fs";
import { setTimeout as sleep } from "node:timers/promises";
import {
  ClientClosedError,
  CompareResult,
  CompareTarget,
  Etcd3,
  type Lease as EtcdLease,
  EtcdAuthenticationFailedError,
  EtcdInvalidAuthTokenError,
  EtcdPermissionDeniedError,
  GRPCResourceExhastedError,
  GRPCUnauthenticatedError,
  type IKeyValue,
  type IOptions,
  type IRequestOp,
  type ITxnRequest,
  type ITxnResponse,
  isRecoverableError,
  SortOrder,
  SortTarget,
  type Watcher,
} from "etcd3";
import { LossSignal, type LostCallback } from "./loss.js";
import {
  type KeyValue,
  type Leadership,
  type Lease,
  type PutOptions,
  type Store,
  StoreError,
  type StoreEvent,
  type SyncHandle,
  type SyncSink,
} from "./store.js";

export interface EtcdStoreOptions {
  endpoints: string[];
  username?: string;
  password?: string;
  /** PEM file paths. Without `ca` the system roots are used for https endpoints. */
  tls?: { ca?: string; cert?: string; key?: string };
  /** Deadline of every unary request, connecting included (default 5000 ms). Streams have none. */
  dialTimeoutMs?: number;
  /** Retry backoff of sync and campaign loops: exponential from initialMs to maxMs with jitter (100 ms → 5 s). */
  backoff?: { initialMs?: number; maxMs?: number };
  /** Largest gRPC message this client receives (default 64 MiB); lists page below it. Small in tests. */
  maxReceiveBytes?: number;
}

/** gRPC refused a response larger than the client's receive limit (or etcd refused the request's size). */
function isTooLarge(err: unknown): boolean {
  return err instanceof GRPCResourceExhastedError || (err instanceof Error && /RESOURCE_EXHAUSTED|larger than max/i.test(err.message));
}

interface BackoffConfig {
  initialMs: number;
  maxMs: number;
}

const LIST_PAGE_SIZE = 1_000;
const WATCH_CANCEL_GRACE_MS = 1_000;
/**
 * A silent partition leaves a watch stream open with nothing on it; gRPC keepalive notices after
 * ~15 s. A small read every LIVENESS_MS with its own short deadline notices in a few seconds, so
 * /api/state and the staleness metric tell the truth while the node serves fail-static.
 */
const LIVENESS_MS = 2_000;
const LIVENESS_TIMEOUT_MS = 2_000;
const CLOSE_REVOKE_GRACE_MS = 1_000;

type FaultPolicy = ReturnType<NonNullable<NonNullable<IOptions["faultHandling"]>["host"]>>;

/**
 * etcd3's default fault handling is a per-host circuit breaker (open for 5 s after three failures)
 * plus three immediate retries. The breaker would refuse every call for seconds after etcd comes
 * back, lease keepalives included, so it is replaced: one attempt per endpoint (etcd3 moves to the
 * next endpoint on each attempt) and nothing else; the sync and campaign loops own the retrying.
 */
function tryEachEndpointOnce(endpointCount: number): FaultPolicy {
  const signal = new AbortController().signal;
  const noEvent = () => ({ dispose() {} });
  const policy = {
    onSuccess: noEvent,
    onFailure: noEvent,
    async execute<T>(fn: (context: { signal: AbortSignal }) => PromiseLike<T> | T): Promise<T> {
      let lastError: unknown;
      for (let attempt = 0; attempt < endpointCount; attempt++) {
        try {
          return await fn({ signal });
        } catch (err) {
          lastError = err;
          if (!(err instanceof Error) || !isRecoverableError(err)) break;
        }
      }
      throw lastError;
    },
  };
  return policy as unknown as FaultPolicy;
}

const passThrough = tryEachEndpointOnce(1);

function backoffDelay(cfg: BackoffConfig, failures: number): number {
  const ceiling = Math.min(cfg.maxMs, cfg.initialMs * 2 ** Math.min(failures, 20));
  // "Equal jitter": never less than half the step, so a crowd of nodes spreads out but still backs off.
  return ceiling / 2 + Math.random() * (ceiling / 2);
}

/** Sleeps unless/until the signal aborts; never rejects. */
async function pause(ms: number, signal: AbortSignal): Promise<void> {
  if (signal.aborted) return;
  try {
    await sleep(ms, undefined, { signal });
  } catch {
    // aborted
  }
}

function describe(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/** First key after every key starting with `prefix` (etcd's range_end for a prefix). */
function prefixEnd(prefix: Buffer): Buffer {
  for (let i = prefix.length - 1; i >= 0; i--) {
    if (prefix[i] < 0xff) {
      const end = Buffer.from(prefix.subarray(0, i + 1));
      end[i]++;
      return end;
    }
  }
  return Buffer.from([0]); // "" or all 0xff: to the end of the keyspace
}

function toKeyValue(kv: IKeyValue): KeyValue {
  return {
    key: kv.key.toString(),
    value: kv.value,
    modRevision: Number(kv.mod_revision),
    lease: kv.lease || "0",
  };
}

function toBuffer(value: Buffer | string): Buffer {
  return typeof value === "string" ? Buffer.from(value) : value;
}

/** Maps etcd3/gRPC errors onto the stable StoreError codes. */
function storeError(err: unknown, what: string): StoreError {
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

function closedError(): StoreError {
  return new StoreError("STORE_CLOSED", "the store is closed", false);
}

/**
 * Detaches an etcd3 watcher without waiting for the server. While the watch stream is down the
 * detach is synchronous, which keeps etcd3 from resubscribing the watcher on its own.
 */
function detach(watcher: Watcher): Promise<void> {
  try {
    return watcher.cancel().catch(() => undefined);
  } catch {
    return Promise.resolve(); // the stream is already gone
  }
}

function withGrace(promise: Promise<unknown>, ms: number): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    timer.unref();
    void promise.finally(() => {
      clearTimeout(timer);
      resolve();
    });
  });
}

export class EtcdStore implements Store {
  private readonly client: Etcd3;
  private readonly backoff: BackoffConfig;
  private closed = false;
  private readonly closing = new AbortController();
  private readonly syncs = new Set<PrefixSync>();
  private readonly leases = new Set<EtcdStoreLease>();
  private readonly leaderships = new Set<EtcdLeadership>();

  constructor(opts: EtcdStoreOptions) {
    if (opts.endpoints.length === 0) throw new RangeError("EtcdStore: endpoints must not be empty");
    const requestTimeoutMs = opts.dialTimeoutMs ?? 5_000;
    this.backoff = { initialMs: opts.backoff?.initialMs ?? 100, maxMs: opts.backoff?.maxMs ?? 5_000 };
    const tls = opts.tls;
    this.client = new Etcd3({
      hosts: opts.endpoints,
      auth:
        opts.username === undefined ? undefined : { username: opts.username, password: opts.password ?? "" },
      credentials:
        tls === undefined
          ? undefined
          : {
              // grpc uses the system roots when the CA is absent; etcd3's type insists on a Buffer.
              rootCertificate: (tls.ca === undefined ? undefined : readFileSync(tls.ca)) as Buffer,
              certChain: tls.cert === undefined ? undefined : readFileSync(tls.cert),
              privateKey: tls.key === undefined ? undefined : readFileSync(tls.key),
            },
      // etcd3 1.1.2 declares `dialTimeout` but never reads it: the deadline is set per call here.
      defaultCallOptions: (context) => (context.isStream ? {} : { deadline: Date.now() + requestTimeoutMs }),
      grpcOptions: {
        // Notice a silent (paused, partitioned) server on open streams; etcd allows pings every 5 s.
        "grpc.keepalive_time_ms": 10_000,
        "grpc.keepalive_timeout_ms": 5_000,
        // gRPC's default reconnect backoff grows to 120 s; etcd coming back must be seen quickly.
        "grpc.initial_reconnect_backoff_ms": 100,
        "grpc.max_reconnect_backoff_ms": 2_000,
        "grpc.max_receive_message_length": opts.maxReceiveBytes ?? 64 * 1024 * 1024,
      },
      faultHandling: {
        host: () => passThrough,
        global: tryEachEndpointOnce(opts.endpoints.length),
      },
    });
  }

  sync(prefix: string, sink: SyncSink): SyncHandle {
    this.assertOpen();
    const sync = new PrefixSync(
      {
        list: (p) => this.list(p),
        watch: (p, fromRevision) =>
          this.client.watch().prefix(p).startRevision(String(fromRevision)).watcher(),
        probe: async (p) => {
          await this.call("liveness", () => this.client.kv.range({ key: Buffer.from(p), limit: 1, count_only: true }, { deadline: Date.now() + LIVENESS_TIMEOUT_MS }));
        },
      },
      prefix,
      sink,
      this.backoff,
      () => this.syncs.delete(sync),
    );
    this.syncs.add(sync);
    return sync;
  }

  async get(key: string): Promise<KeyValue | null> {
    const res = await this.call("get", () => this.client.kv.range({ key: Buffer.from(key) }));
    const kv = res.kvs[0];
    return kv === undefined ? null : toKeyValue(kv);
  }

  /**
   * All keys under `prefix` at one revision, read in pages so a large table never exceeds a message.
   * Pages are counted in keys but sized by what fits: a page the client may not receive (affinity
   * batches are up to 512 KiB each, so 1000 of them would never fit in 64 MiB) is asked again at half
   * the keys, and the page size grows back after each success. A value that alone exceeds the limit
   * is listed by key (keys_only) as `unreadable` and stepped over: one bad key must not keep the node
   * from ever syncing.
   */
  async list(prefix: string): Promise<{ kvs: KeyValue[]; revision: number }> {
    this.assertOpen();
    const rangeEnd = prefixEnd(Buffer.from(prefix));
    const kvs: KeyValue[] = [];
    let from = Buffer.from(prefix);
    let revision: string | undefined;
    let limit = LIST_PAGE_SIZE;
    for (;;) {
      let res: Awaited<ReturnType<Etcd3["kv"]["range"]>>;
      try {
        res = await this.client.kv.range({ key: from, range_end: rangeEnd, limit, revision });
      } catch (err) {
        if (this.closed || !isTooLarge(err)) throw storeError(err, "list");
        if (limit > 1) {
          limit = Math.max(1, limit >>> 1);
          continue;
        }
        const keyOnly = await this.call("list", () =>
          this.client.kv.range({ key: from, range_end: rangeEnd, limit: 1, revision, keys_only: true }),
        );
        revision ??= keyOnly.header.revision;
        const kv = keyOnly.kvs[0];
        if (kv === undefined) break;
        kvs.push({ ...toKeyValue(kv), value: Buffer.alloc(0), unreadable: `value larger than this node may receive in one message (${describe(err)})` });
        if (!keyOnly.more) break;
        from = Buffer.concat([kv.key, Buffer.from([0])]);
        continue;
      }
      revision ??= res.header.revision;
      for (const kv of res.kvs) kvs.push(toKeyValue(kv));
      const last = res.kvs[res.kvs.length - 1];
      if (!res.more || last === undefined) break;
      from = Buffer.concat([last.key, Buffer.from([0])]);
      limit = Math.min(LIST_PAGE_SIZE, limit * 2);
    }
    return { kvs, revision: Number(revision) };
  }

  async put(key: string, value: Buffer | string, opts?: PutOptions): Promise<number> {
    const res = await this.call("put", () =>
      this.client.kv.put({ key: Buffer.from(key), value: toBuffer(value), lease: opts?.lease }),
    );
    return Number(res.header.revision);
  }

  async delete(key: string): Promise<boolean> {
    const res = await this.call("delete", () => this.client.kv.deleteRange({ key: Buffer.from(key) }));
    return Number(res.deleted) > 0;
  }

  async deletePrefix(prefix: string): Promise<number> {
    if (prefix === "") throw new RangeError("deletePrefix: refusing to delete the whole keyspace");
    const start = Buffer.from(prefix);
    const res = await this.call("deletePrefix", () =>
      this.client.kv.deleteRange({ key: start, range_end: prefixEnd(start) }),
    );
    return Number(res.deleted);
  }

  async grantLease(ttlSeconds: number, keepAlive: boolean): Promise<Lease> {
    return this.grant(ttlSeconds, keepAlive);
  }

  /**
   * The etcd election recipe (clientv3/concurrency): a key `${electionPrefix}${leaseIdHex}` on our
   * own lease; the candidate whose key has the lowest create revision leads, and each candidate
   * waits only for its immediate predecessor to disappear. Transient failures restart the attempt
   * with a new lease (and so a new term) after a backoff; only auth errors and close() end it.
   */
  async campaign(electionPrefix: string, candidate: string, ttlSeconds: number): Promise<Leadership> {
    if (!(ttlSeconds >= 1)) throw new RangeError(`campaign: lease TTL must be at least 1 second, got ${ttlSeconds}`);
    let failures = 0;
    for (;;) {
      this.assertOpen();
      let lease: EtcdStoreLease | undefined;
      try {
        lease = await this.grant(ttlSeconds, true);
        const leadership = await this.elect(electionPrefix, candidate, lease);
        if (leadership !== null) return leadership;
      } catch (err) {
        const mapped = storeError(err, "campaign");
        if (this.closed) throw closedError();
        if (mapped.code === "STORE_AUTH" || mapped.code === "STORE_CLOSED") throw mapped;
      }
      if (lease !== undefined) void lease.revoke().catch(() => undefined);
      await pause(backoffDelay(this.backoff, failures++), this.closing.signal);
    }
  }

  async leader(electionPrefix: string): Promise<string | null> {
    const start = Buffer.from(electionPrefix);
    const res = await this.call("leader", () =>
      this.client.kv.range({
        key: start,
        range_end: prefixEnd(start),
        sort_target: SortTarget.Create,
        sort_order: SortOrder.Ascend,
        limit: 1,
      }),
    );
    const kv = res.kvs[0];
    return kv === undefined ? null : kv.value.toString();
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.closing.abort();
    await Promise.all([...this.syncs].map((s) => s.stop()));
    // Revoking hands leadership over in milliseconds instead of a TTL; bounded, etcd may be gone.
    const revoking: Promise<unknown>[] = [];
    for (const leadership of this.leaderships) revoking.push(leadership.end("store closed"));
    // Only kept-alive leases (registration, leadership) die with the node. TTL-only leases carry data
    // that must outlive its writer (affinity entries): etcd expires them on their own.
    for (const lease of this.leases) {
      if (lease.keepAlive) revoking.push(lease.revoke().catch(() => undefined));
      else lease.detach();
    }
    await withGrace(Promise.all(revoking), CLOSE_REVOKE_GRACE_MS);
    this.client.close();
  }

  private assertOpen(): void {
    if (this.closed) throw closedError();
  }

  private async call<T>(what: string, fn: () => Promise<T>): Promise<T> {
    this.assertOpen();
    try {
      return await fn();
    } catch (err) {
      throw storeError(err, what);
    }
  }

  private async grant(ttlSeconds: number, keepAlive: boolean): Promise<EtcdStoreLease> {
    this.assertOpen();
    const inner = this.client.lease(ttlSeconds, { autoKeepAlive: keepAlive });
    let id: string;
    try {
      id = await inner.grant();
    } catch (err) {
      inner.release();
      throw storeError(err, "grant lease");
    }
    const lease = new EtcdStoreLease(inner, id, ttlSeconds, keepAlive, () => this.leases.delete(lease));
    this.leases.add(lease);
    return lease;
  }

  private async elect(prefix: string, candidate: string, lease: EtcdStoreLease): Promise<EtcdLeadership | null> {
    const key = Buffer.from(`${prefix}${BigInt(lease.id).toString(16)}`);
    const created = await this.client.kv.txn({
      compare: [{ key, target: CompareTarget.Create, result: CompareResult.Equal, create_revision: 0 }],
      success: [{ request_put: { key, value: Buffer.from(candidate), lease: lease.id } }],
      failure: [{ request_range: { key } }],
    });
    // The key is new (our lease is new), so the compare holds; the else branch covers a txn that
    // was retried on another endpoint after an ambiguous failure (it may have applied the first time).
    const term = created.succeeded
      ? created.header.revision
      : created.responses[0]?.response_range.kvs[0]?.create_revision;
    if (term === undefined) return null;

    const start = Buffer.from(prefix);
    const rangeEnd = prefixEnd(start);
    const stop = AbortSignal.any([lease.signal, this.closing.signal]);
    for (;;) {
      if (stop.aborted) return null;
      const predecessor = await this.client.kv.range({
        key: start,
        range_end: rangeEnd,
        max_create_revision: (BigInt(term) - 1n).toString(),
        sort_target: SortTarget.Create,
        sort_order: SortOrder.Descend,
        limit: 1,
      });
      const ahead = predecessor.kvs[0];
      if (ahead === undefined) break;
      if (!(await this.waitGone(ahead.key, ahead.create_revision, stop))) return null;
    }
    // Our own key may have expired while we waited: only a live key with our term makes us leader.
    const own = await this.client.kv.range({ key });
    if (own.kvs[0]?.create_revision !== term || this.closed) return null;
    const leadership = new EtcdLeadership(
      {
        txn: (req) => this.call("fenced write", () => this.client.kv.txn(req)),
        waitGone: (k, rev, signal) => this.waitGone(k, rev, signal),
        forget: (l) => this.leaderships.delete(l),
      },
      key.toString(),
      term,
      lease,
    );
    this.leaderships.add(leadership);
    return leadership;
  }

  /**
   * Resolves true once the key instance with `createRevision` no longer exists (deleted, expired,
   * or replaced), false if `signal` aborts first. Connection trouble means "look again later".
   */
  private async waitGone(key: Buffer, createRevision: string, signal: AbortSignal): Promise<boolean> {
    let failures = 0;
    while (!signal.aborted && !this.closed) {
      try {
        const res = await this.client.kv.range({ key });
        const kv = res.kvs[0];
        if (kv === undefined || kv.create_revision !== createRevision) return true;
        const outcome = await this.watchDelete(key, BigInt(res.header.revision) + 1n, signal);
        if (outcome === "deleted") return true;
        if (outcome === "aborted") return false;
        if (outcome === "broken-after-connect") failures = 0;
      } catch {
        // unavailable: look again after the backoff
      }
      await pause(backoffDelay(this.backoff, failures++), signal);
    }
    return false;
  }

  private watchDelete(
    key: Buffer,
    fromRevision: bigint,
    signal: AbortSignal,
  ): Promise<"deleted" | "aborted" | "broken" | "broken-after-connect"> {
    if (signal.aborted) return Promise.resolve("aborted");
    return new Promise((resolve) => {
      const watcher = this.client.watch().key(key).startRevision(fromRevision.toString()).only("delete").watcher();
      let settled = false;
      let connected = false;
      const finish = (outcome: "deleted" | "aborted" | "broken", cancel: boolean) => {
        if (settled) return;
        settled = true;
        signal.removeEventListener("abort", onAbort);
        if (cancel) void detach(watcher);
        resolve(outcome === "broken" && connected ? "broken-after-connect" : outcome);
      };
      const onAbort = () => finish("aborted", true);
      signal.addEventListener("abort", onAbort);
      watcher.on("connected", () => {
        connected = true;
      });
      watcher.on("delete", () => finish("deleted", true));
      watcher.on("disconnected", () => finish("broken", true));
      // A server-side cancel (e.g. compaction) already removed the watcher from etcd3's manager.
      watcher.on("error", () => finish("broken", false));
      watcher.on("end", () => finish("broken", false));
    });
  }
}

interface SyncSource {
  list(prefix: string): Promise<{ kvs: KeyValue[]; revision: number }>;
  /** An etcd3 watcher not yet attached to the stream, so every listener is in place before any event. */
  watch(prefix: string, fromRevision: number): Watcher;
  /** A cheap read with a short deadline: rejects when etcd does not answer. */
  probe(prefix: string): Promise<void>;
}

/**
 * One prefix kept in step with a sink: list at one revision, reset, watch from the next revision.
 * Any break (disconnect, server cancel, compaction, a throwing sink) ends that watch for good and
 * starts over with a new list after a backoff; etcd3's own resume is never used, because the list
 * is the truth and a resumed watch can fall behind a compaction.
 */
class PrefixSync implements SyncHandle {
  private stopped = false;
  private connected: boolean | undefined;
  private readonly stopping = new AbortController();
  private endWatch: (() => Promise<void>) | null = null;

  constructor(
    private readonly source: SyncSource,
    private readonly prefix: string,
    private readonly sink: SyncSink,
    private readonly backoff: BackoffConfig,
    private readonly onStopped: () => void,
  ) {
    void this.run();
  }

  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    this.stopping.abort();
    const cancelling = this.endWatch?.();
    if (cancelling !== undefined) await withGrace(cancelling, WATCH_CANCEL_GRACE_MS);
    this.onStopped();
  }

  private async run(): Promise<void> {
    let failures = 0;
    while (!this.stopped) {
      let reason: string;
      try {
        const { kvs, revision } = await this.source.list(this.prefix);
        if (this.stopped) return;
        reason =
          this.deliver("reset", () => this.sink.reset(kvs, revision)) ??
          (await this.watchFrom(revision + 1, () => {
            failures = 0;
          }));
      } catch (err) {
        reason = describe(err);
      }
      if (this.stopped) return;
      this.report(false, reason);
      await pause(backoffDelay(this.backoff, failures++), this.stopping.signal);
    }
  }

  /** Resolves with the reason the watch ended; the watcher is detached by then. */
  private watchFrom(fromRevision: number, onConnected: () => void): Promise<string> {
    return new Promise((resolve) => {
      const watcher = this.source.watch(this.prefix, fromRevision);
      let settled = false;
      let liveness: NodeJS.Timeout | undefined;
      const finish = (reason: string, cancel: boolean): Promise<void> => {
        if (settled) return Promise.resolve();
        settled = true;
        clearInterval(liveness);
        this.endWatch = null;
        const cancelling = cancel ? detach(watcher) : Promise.resolve();
        resolve(reason);
        return cancelling;
      };
      this.endWatch = () => finish("stopped", true);
      watcher.on("connected", () => {
        if (settled) return;
        onConnected();
        this.report(true);
        if (liveness !== undefined) return;
        let probing = false;
        liveness = setInterval(() => {
          if (probing || settled) return;
          probing = true;
          this.source.probe(this.prefix).then(
            () => {
              probing = false;
            },
            (err: unknown) => {
              probing = false;
              void finish(`etcd not answering: ${describe(err)}`, true);
            },
          );
        }, LIVENESS_MS);
        liveness.unref();
      });
      watcher.on("data", (res) => {
        if (settled || res.events.length === 0) return; // empty: progress notification
        const events: StoreEvent[] = res.events.map((ev) => ({
          type: ev.type === "Put" ? "put" : "delete",
          key: ev.kv.key.toString(),
          value: ev.type === "Put" ? ev.kv.value : Buffer.alloc(0),
          modRevision: Number(ev.kv.mod_revision),
        }));
        const sinkError = this.deliver("events", () => this.sink.events(events, Number(res.header.revision)));
        if (sinkError !== null) void finish(sinkError, true);
      });
      watcher.on("disconnected", (err) => void finish(`watch disconnected: ${describe(err)}`, true));
      // etcd cancelled the watch (compacted past our revision, or otherwise); it is already detached.
      watcher.on("error", (err) => void finish(`watch cancelled by etcd (compaction or cancel): ${describe(err)}`, false));
      watcher.on("end", () => void finish("watch ended", false));
    });
  }

  /** Runs one sink call; a throwing sink gets a fresh list rather than a half-applied stream. */
  private deliver(what: string, call: () => void): string | null {
    if (this.stopped) return null;
    try {
      call();
      return null;
    } catch (err) {
      return `sink.${what} threw: ${describe(err)}`;
    }
  }

  /** Reports transitions only; the first outcome (either way) counts as one. */
  private report(connected: boolean, reason?: string): void {
    if (this.stopped || this.connected === connected) return;
    this.connected = connected;
    try {
      this.sink.status(connected, reason);
    } catch {
      // status is informational; a throwing sink must not break the loop
    }
  }
}

/**
 * etcd3's Lease plus a local deadline: etcd3 only reports 'lost' after 2×TTL without a keepalive
 * answer, while etcd expires the lease after 1×TTL. Losing it here after TTL without an answer is
 * conservative (etcd's clock for the lease started no later than our last answer).
 */
class EtcdStoreLease implements Lease {
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

interface LeadershipOps {
  txn(req: ITxnRequest): Promise<ITxnResponse>;
  waitGone(key: Buffer, createRevision: string, signal: AbortSignal): Promise<boolean>;
  forget(leadership: EtcdLeadership): void;
}

/**
 * A won election. Every write is one transaction guarded by `create_revision(key) == term`, so a
 * deposed leader (lease expired while it was paused or partitioned, key deleted) cannot write even
 * before it notices. Loss is noticed from the lease, from a watch on the key, or from a failed fence.
 */
class EtcdLeadership implements Leadership {
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

  fencedPut(key: string, value: Buffer | string): Promise<boolean> {
    return this.fenced({ request_put: { key: Buffer.from(key), value: toBuffer(value) } });
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

  private async fenced(op: IRequestOp): Promise<boolean> {
    if (!this.loss.live) return false;
    const res = await this.ops.txn({ compare: [this.fence()], success: [op], failure: [] });
    if (res.succeeded) return true;
    void this.end("fenced write refused: the election key no longer carries our term");
    return false;
  }
}
