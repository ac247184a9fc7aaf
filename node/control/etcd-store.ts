// The etcd implementation of Store. node/control/ is the only folder that imports etcd3 (biome's
// noRestrictedImports); the concepts live one per file:
//   etcd-store.ts     the client, key/value calls, list paging, the election recipe (campaign)
//   etcd-sync.ts      one prefix kept in step: list, then watch from the next revision
//   etcd-lease.ts     a lease with a local deadline
//   etcd-election.ts  a won election and its fenced (transactional) writes
//   etcd-common.ts    error mapping, backoff, key ranges shared by the four

import { readFileSync } from "node:fs";
import {
  CompareResult,
  CompareTarget,
  Etcd3,
  GRPCResourceExhastedError,
  type IOptions,
  isRecoverableError,
  type Lease as EtcdLease,
  SortOrder,
  SortTarget,
} from "etcd3";
import {
  type BackoffConfig,
  backoffDelay,
  closedError,
  describe,
  detach,
  type FaultPolicy,
  faultPolicy,
  pause,
  prefixEnd,
  storeError,
  toBuffer,
  toKeyValue,
  withGrace,
} from "./etcd-common.js";
import { EtcdLeadership } from "./etcd-election.js";
import { type EndpointChange, type EndpointState, EtcdEndpoints } from "./etcd-endpoints.js";
import { EtcdStoreLease } from "./etcd-lease.js";
import { PrefixSync } from "./etcd-sync.js";
import type { KeyValue, Leadership, Lease, PutOptions, SpaceStatus, Store, SyncHandle, SyncSink, TxnCompare, TxnOp } from "./store.js";

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
  /**
   * Probe each endpoint once a second and move calls off one that does not answer while another
   * does (etcd-endpoints.ts). Default true; short-lived clients (the CLI) turn it off.
   */
  probeEndpoints?: boolean;
  /** An endpoint became avoided or usable again (the node logs it). */
  onEndpointChange?: EndpointChange;
}

/** gRPC refused a response larger than the client's receive limit (or etcd refused the request's size). */
function isTooLarge(err: unknown): boolean {
  return err instanceof GRPCResourceExhastedError || (err instanceof Error && /RESOURCE_EXHAUSTED|larger than max/i.test(err.message));
}


const LIST_PAGE_SIZE = 1_000;
/** Deadline of the liveness read (see LIVENESS_MS in etcd-sync.ts). */
const LIVENESS_TIMEOUT_MS = 2_000;
const CLOSE_REVOKE_GRACE_MS = 1_000;

/**
 * How the store came through etcd outages, for metrics (and the scale bench): what recovery cost.
 * Counters only grow; `revokesPending` is the number of leases waiting for etcd to take their revoke.
 */
export interface StoreRecoveryStats {
  /** Leases whose revoke failed while etcd was unreachable and was retried (successfully or not yet). */
  revokesDeferred: number;
  /** Deferred revokes that reached etcd later. */
  revokesRetried: number;
  revokesPending: number;
  /** Kept-alive leases lost (etcd said expired, or no keepalive answer for 2 × TTL). */
  leasesLost: number;
  /** Election keys of this candidate's own earlier attempts deleted instead of waited for. */
  staleElectionKeys: number;
  /** Full re-lists of a synced prefix after its watch broke (the first list of each sync not counted). */
  relists: number;
  /** Watches resumed after a break from the last revision taken, without a list. */
  resumes: number;
}

/**
 * etcd3's default fault handling is a per-host circuit breaker (open for 5 s after three failures)
 * plus three immediate retries. The breaker would refuse every call for seconds after etcd comes
 * back, lease keepalives included, so it is replaced: one attempt per endpoint (etcd3 moves to the
 * next endpoint on each attempt) and nothing else; the sync and campaign loops own the retrying.
 */
function tryEachEndpointOnce(endpointCount: number): FaultPolicy {
  return faultPolicy(async (fn) => {
    let lastError: unknown;
    for (let attempt = 0; attempt < endpointCount; attempt++) {
      try {
        return await fn();
      } catch (err) {
        lastError = err;
        if (!(err instanceof Error) || !isRecoverableError(err)) break;
      }
    }
    throw lastError;
  });
}

const passThrough = tryEachEndpointOnce(1);

export class EtcdStore implements Store {
  private readonly client: Etcd3;
  private readonly endpoints: EtcdEndpoints;
  private readonly backoff: BackoffConfig;
  private closed = false;
  private readonly closing = new AbortController();
  private readonly syncs = new Set<PrefixSync>();
  private readonly leases = new Set<EtcdStoreLease>();
  private readonly leaderships = new Set<EtcdLeadership>();
  /** Leases whose revoke did not reach etcd: revoked again once it answers (issue 19). */
  private readonly unrevoked = new Map<EtcdLease, true>();
  private revokeLoop = false;
  readonly recovery: StoreRecoveryStats = { revokesDeferred: 0, revokesRetried: 0, revokesPending: 0, leasesLost: 0, staleElectionKeys: 0, relists: 0, resumes: 0 };

  constructor(opts: EtcdStoreOptions) {
    if (opts.endpoints.length === 0) throw new RangeError("EtcdStore: endpoints must not be empty");
    const requestTimeoutMs = opts.dialTimeoutMs ?? 5_000;
    this.backoff = { initialMs: opts.backoff?.initialMs ?? 100, maxMs: opts.backoff?.maxMs ?? 5_000 };
    const tls = opts.tls;
    const base = (hosts: string[], channelFactoryOverride?: unknown): IOptions => ({
      hosts,
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
        ...(channelFactoryOverride === undefined ? {} : { channelFactoryOverride }),
      },
    });
    // Each endpoint's probe has a client (and connection) of its own, so a probe never waits behind
    // the store's calls and never lands on another endpoint.
    this.endpoints = new EtcdEndpoints(
      opts.endpoints,
      (endpoint) => new Etcd3({ ...base([endpoint]), faultHandling: { host: () => passThrough, global: passThrough } }),
      opts.onEndpointChange,
    );
    const endpoints = this.endpoints;
    this.client = new Etcd3({
      ...base(opts.endpoints, endpoints.channelFactory()),
      faultHandling: {
        host: (host) => endpoints.hostPolicy(host),
        global: tryEachEndpointOnce(opts.endpoints.length),
      },
    });
    if (opts.probeEndpoints !== false) endpoints.start();
  }

  /** Each endpoint, and whether calls avoid it (see etcd-endpoints.ts). */
  endpointStates(): EndpointState[] {
    return this.endpoints.states();
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
      () => {
        this.recovery.relists++;
      },
      () => {
        this.recovery.resumes++;
      },
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

  async txn(compares: readonly TxnCompare[], ops: readonly TxnOp[]): Promise<{ succeeded: boolean; revision: number }> {
    const res = await this.call("txn", () =>
      this.client.kv.txn({
        // etcd compares a missing key as mod_revision 0, so 0 means "does not exist".
        compare: compares.map((c) => ({ key: Buffer.from(c.key), target: CompareTarget.Mod, result: CompareResult.Equal, mod_revision: String(c.modRevision) })),
        success: ops.map((op) =>
          "put" in op
            ? { request_put: { key: Buffer.from(op.put), value: toBuffer(op.value), lease: op.lease } }
            : { request_delete_range: { key: Buffer.from(op.delete) } },
        ),
        failure: [],
      }),
    );
    return { succeeded: res.succeeded, revision: Number(res.header.revision) };
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

  async space(): Promise<SpaceStatus> {
    this.assertOpen();
    const [status, alarms] = await Promise.all([
      this.call("status", () => this.client.maintenance.status()),
      this.call("alarms", () => this.client.maintenance.alarm({ action: "Get", memberID: 0, alarm: "None" })),
    ]);
    // etcd3's typings predate dbSizeInUse (etcd 3.4); the proto it loads carries it.
    const inUse = (status as { dbSizeInUse?: string }).dbSizeInUse;
    return {
      dbSize: Number(status.dbSize),
      dbSizeInUse: inUse === undefined ? Number(status.dbSize) : Number(inUse),
      // etcd3 names them after its enum ("Nospace"); etcd and etcdctl say NOSPACE, CORRUPT.
      alarms: [...new Set((alarms.alarms ?? []).map((a) => String(a.alarm).toUpperCase()).filter((a) => a !== "NONE"))].sort(),
    };
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
    // Revokes still owed from an outage: one last try within the same grace.
    for (const inner of this.unrevoked.keys()) revoking.push(inner.revoke().catch(() => undefined));
    await withGrace(Promise.all(revoking), CLOSE_REVOKE_GRACE_MS);
    this.endpoints.close();
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
    const lease = new EtcdStoreLease(
      inner,
      id,
      ttlSeconds,
      keepAlive,
      () => this.leases.delete(lease),
      (l) => this.revokeLater(l),
    );
    if (keepAlive) {
      inner.on("lost", () => {
        this.recovery.leasesLost++;
      });
    }
    this.leases.add(lease);
    return lease;
  }

  /**
   * A revoke that did not reach etcd. etcd still holds the lease (and extends it by its TTL when it
   * restarts), so its keys would linger: an abandoned election key makes every later candidate wait
   * for it. Retried with jittered backoff until etcd takes it (or no longer knows the lease: etcd3
   * treats that as done) or the store closes.
   */
  private revokeLater(inner: EtcdLease): void {
    if (this.closed || this.unrevoked.has(inner)) return;
    this.unrevoked.set(inner, true);
    this.recovery.revokesDeferred++;
    this.recovery.revokesPending = this.unrevoked.size;
    if (!this.revokeLoop) void this.retryRevokes();
  }

  private async retryRevokes(): Promise<void> {
    this.revokeLoop = true;
    let failures = 0;
    try {
      while (this.unrevoked.size > 0 && !this.closed) {
        await pause(backoffDelay(this.backoff, failures), this.closing.signal);
        let failed = false;
        for (const inner of [...this.unrevoked.keys()]) {
          if (this.closed) return;
          try {
            await inner.revoke();
            this.unrevoked.delete(inner);
            this.recovery.revokesRetried++;
          } catch (err) {
            // etcd still away: try the rest later. Anything else will not get better by retrying.
            if (err instanceof Error && isRecoverableError(err)) {
              failed = true;
              break;
            }
            this.unrevoked.delete(inner);
          }
        }
        this.recovery.revokesPending = this.unrevoked.size;
        failures = failed ? failures + 1 : 0;
      }
    } finally {
      this.revokeLoop = false;
    }
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
      if (ahead.value.toString() === candidate && !this.ownsLease(ahead.lease)) {
        // An earlier attempt of this same candidate (abandoned while etcd failed, or this node's
        // before it restarted): nobody lives behind it, so waiting for its lease TTL would only delay
        // the next leader (issue 19). Deleted only if it is still that same key instance.
        const removed = await this.client.kv.txn({
          compare: [{ key: ahead.key, target: CompareTarget.Create, result: CompareResult.Equal, create_revision: ahead.create_revision }],
          success: [{ request_delete_range: { key: ahead.key } }],
          failure: [],
        });
        if (removed.succeeded) this.recovery.staleElectionKeys++;
        continue;
      }
      if (!(await this.waitGone(ahead.key, ahead.create_revision, stop))) return null;
    }
    // Our own key may have expired while we waited: only a live key with our term makes us leader.
    const own = await this.client.kv.range({ key });
    if (own.kvs[0]?.create_revision !== term || this.closed) return null;
    const leadership = new EtcdLeadership(
      {
        txn: (req, timeoutMs) => this.call("fenced write", () => this.client.kv.txn(req, timeoutMs === undefined ? undefined : { deadline: Date.now() + timeoutMs })),
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

  /** Whether `leaseId` (decimal, as etcd3 reports it) is a lease this store holds now. */
  private ownsLease(leaseId: string): boolean {
    for (const l of this.leases) if (l.id === leaseId) return true;
    return false;
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
