// The cluster store interface. The etcd implementation (etcd-*.ts, one file per concept) is the only code that imports
// etcd3; memory-store.ts implements the same interface for standalone (YAML) mode and pure-logic tests.

export interface KeyValue {
  key: string;
  value: Buffer;
  modRevision: number;
  /** Lease id as a decimal string, "0" when none. */
  lease: string;
  /**
   * Set when the value alone exceeds what this client may receive in one message, so it was never
   * read (`value` is empty): the key is listed as invalid, never applied.
   */
  unreadable?: string;
}

export interface StoreEvent {
  type: "put" | "delete";
  key: string;
  /** Empty buffer for deletes. */
  value: Buffer;
  modRevision: number;
}

/** Receives the state of one prefix. Calls never overlap and arrive in revision order. */
export interface SyncSink {
  /** The complete state at `revision`: on first sync, and again after a watch was cancelled or compacted away. */
  reset(kvs: KeyValue[], revision: number): void;
  /** Changes, all of revisions ≤ `revision`; after this call the sink has seen everything up to `revision`. */
  events(events: StoreEvent[], revision: number): void;
  /** Connection state changes: `connected=false` while etcd cannot be reached (fail-static: keep serving). */
  status(connected: boolean, error?: string): void;
}

export interface SyncHandle {
  stop(): Promise<void>;
}

export interface Lease {
  readonly id: string;
  /** Resolves/fires when the lease is known to be gone (expired, revoked, keepalive failed for longer than its TTL). */
  onLost(cb: (reason: string) => void): void;
  revoke(): Promise<void>;
}

export interface Leadership {
  /** The leader's own election key; its existence is what fences every write. */
  readonly key: string;
  /** Create revision of the election key: a monotonically increasing term number. */
  readonly term: string;
  /**
   * Writes only while this leadership is current: one etcd transaction that compares the election
   * key's create revision. Returns false (and the leadership is lost) when the compare fails.
   */
  /** `timeoutMs`: this write's own deadline, for writes that a later one repeats (the heartbeat). */
  fencedPut(key: string, value: Buffer | string, opts?: { timeoutMs?: number }): Promise<boolean>;
  fencedDelete(key: string): Promise<boolean>;
  onLost(cb: (reason: string) => void): void;
  resign(): Promise<void>;
}

/** How full the etcd member this node talks to is, and which alarms the cluster has raised. */
export interface SpaceStatus {
  /** Bytes the member's database file holds (what the quota is compared with). */
  dbSize: number;
  /** Bytes of it in use; the rest is free pages a defragmentation would give back. */
  dbSizeInUse: number;
  /** Active alarms, e.g. "NOSPACE" (every write refused until an operator disarms it) or "CORRUPT". */
  alarms: string[];
}

export interface PutOptions {
  lease?: string;
}

/** A transaction's condition: the key's mod revision equals `modRevision` (0: the key does not exist). */
export interface TxnCompare {
  key: string;
  modRevision: number;
}

export type TxnOp = { put: string; value: Buffer | string; lease?: string } | { delete: string };

export interface Store {
  sync(prefix: string, sink: SyncSink): SyncHandle;
  get(key: string): Promise<KeyValue | null>;
  list(prefix: string): Promise<{ kvs: KeyValue[]; revision: number }>;
  put(key: string, value: Buffer | string, opts?: PutOptions): Promise<number>;
  delete(key: string): Promise<boolean>;
  deletePrefix(prefix: string): Promise<number>;
  /**
   * One etcd transaction: when every compare holds, all ops apply at one revision; otherwise none
   * does. For check-then-write decisions that must not race (the drain guard, the rollout lock).
   */
  txn(compares: readonly TxnCompare[], ops: readonly TxnOp[]): Promise<{ succeeded: boolean; revision: number }>;
  /** A lease kept alive until revoked (keepAlive) or left to expire after ttl seconds. */
  grantLease(ttlSeconds: number, keepAlive: boolean): Promise<Lease>;
  /**
   * Campaigns for leadership under `electionPrefix` with a lease of `ttlSeconds`; resolves once
   * elected (may wait indefinitely while another candidate leads). `candidate` is the value stored.
   */
  campaign(electionPrefix: string, candidate: string, ttlSeconds: number): Promise<Leadership>;
  /** etcd's space and alarms; absent for stores without a quota (the memory store). */
  space?(): Promise<SpaceStatus>;
  /** The current leader's value under `electionPrefix`, or null. */
  leader(electionPrefix: string): Promise<string | null>;
  close(): Promise<void>;
}

export type StoreErrorCode = "STORE_UNAVAILABLE" | "STORE_AUTH" | "STORE_FENCED" | "STORE_CLOSED";

/** Stable error codes; `recoverable` says whether retrying later may succeed. */
export class StoreError extends Error {
  constructor(
    readonly code: StoreErrorCode,
    message: string,
    readonly recoverable: boolean,
  ) {
    super(message);
    this.name = "StoreError";
  }
}
