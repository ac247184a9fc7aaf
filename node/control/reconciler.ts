// Reconcile: the store's view of the cluster prefix → record table → pure snapshot builder → swap.
// Also keeps the cluster view (nodes, health heartbeat) and hands affinity records to their table.
import { type HealthHeartbeat, type NodeRecord, parseHeartbeat, parseNodeRecord } from "../../shared/codec.js";
import type { RolloutView } from "../../shared/api.js";
import type { KeySchema } from "../../shared/keys.js";
import { type MemberRecord, parseMember } from "../../shared/members.js";
import { type DrainRequest, parseDrainValue, parseRolloutValue } from "../../shared/rollout.js";
import { ObservationTable } from "../model/observations.js";
import type { Logger } from "../log.js";
import { buildSnapshot, type InvalidRecord, type ResolvedName, type Snapshot, type VerdictView } from "../model/snapshot.js";
import type { StatsRegistry } from "../model/stats.js";
import { DnsRecordSlot } from "./dns-record.js";
import { MAX_VALUE_BYTES, RecordTable } from "./records.js";
import { isHostName } from "./resolver.js";
import type { KeyValue, StoreEvent, SyncSink } from "./store.js";

/** Receives the affinity records of the prefix (implemented by the affinity table). */
export interface AffinitySink {
  reset(kvs: KeyValue[]): void;
  events(events: StoreEvent[]): void;
}

export interface ReconcilerHooks {
  onSnapshot(snapshot: Snapshot): void;
  /** Which verdicts route: the shared ones from etcd unless health says otherwise (local fallback). */
  routingVerdicts?(shared: ReadonlyMap<string, VerdictView>): ReadonlyMap<string, VerdictView>;
  onStatus?(connected: boolean, error?: string): void;
  onInvalid?(fresh: InvalidRecord[]): void;
  onClusterChange?(): void;
  /**
   * Answers for host-name backends (node/control/resolver.ts): told before each build which names the
   * records use, read synchronously during it. Its answers arrive later; the node calls namesChanged().
   */
  resolver?: {
    track(names: ReadonlySet<string>): void;
    get(name: string): ResolvedName | undefined;
  };
  /** Observer records (health/observations/…) of these services changed. */
  onObservations?(services: ReadonlySet<string>): void;
}

export class Reconciler implements SyncSink {
  readonly records: RecordTable;
  readonly nodes = new Map<string, NodeRecord>();
  heartbeat: HealthHeartbeat | null = null;
  /** Observer-quorum observations (issue 17), read by the health leader. */
  readonly observations = new ObservationTable();
  /** The cluster's `dns` record (zone and names for the DNS responder). */
  readonly dns = new DnsRecordSlot();
  /** Drain keys (rollout/drains/<node>): a node drains while its key exists. */
  readonly drains = new Map<string, DrainRequest>();
  /** Members (members/<node>, unleased): a member without a node record is down. Bad ones are listed as invalid. */
  readonly members = new Map<string, MemberRecord>();
  /** The rollout record (rollout/state), for /api/state and the status page. */
  rollout: RolloutView | null = null;
  /** Highest revision this node has processed (whether or not routing changed). */
  appliedRevision = 0;
  snapshot: Snapshot | null = null;
  connected = false;
  lastError: string | null = null;
  private seenInvalid = new Set<string>();
  private rebuildPending: NodeJS.Immediate | null = null;
  private pendingRevision = 0;
  private stopped = false;

  constructor(
    readonly keys: KeySchema,
    private readonly stats: StatsRegistry,
    private readonly hooks: ReconcilerHooks,
    private readonly log: Logger,
    /** Receives the affinity records of the prefix; null = they are ignored. */
    private readonly affinity: AffinitySink | null = null,
  ) {
    this.records = new RecordTable(keys);
  }

  reset(kvs: KeyValue[], revision: number): void {
    const routing: KeyValue[] = [];
    const affinity: KeyValue[] = [];
    this.nodes.clear();
    this.heartbeat = null;
    this.observations.clear();
    this.dns.delete();
    this.drains.clear();
    this.members.clear();
    this.rollout = null;
    this.records.cluster.clear();
    const oversized: Array<[string, string]> = [];
    for (const kv of kvs) {
      const k = this.keys.parse(kv.key);
      const tooLarge = kv.unreadable ?? (kv.value.length > MAX_VALUE_BYTES ? oversizeReason(kv.value.length) : undefined);
      if (tooLarge !== undefined) {
        oversized.push([kv.key, tooLarge]);
        continue;
      }
      // Unrecognised keys go to the record table, which lists them as invalid.
      if (!k) routing.push(kv);
      else if (k.kind === "affinity") affinity.push(kv);
      else if (k.kind === "node") this.putNode(k.node!, kv.value);
      else if (k.kind === "heartbeat") this.putHeartbeat(kv.value);
      else if (k.kind === "observation") this.putObservation(k.service!, k.node!, kv.value);
      else if (k.kind === "dns") this.putDns(kv.value, kv.modRevision);
      else if (k.kind === "drain") this.putDrain(k.node!, kv.value);
      else if (k.kind === "rollout") this.putRollout(k.id!, kv.value);
      else if (k.kind === "member") this.putMember(k.node!, kv.value);
      // Events are for `ballast events`; they never route.
      else if (k.kind !== "event") routing.push(kv);
    }
    this.records.reset(routing, revision);
    for (const [key, reason] of oversized) this.records.markOversized(key, reason);
    this.affinity?.reset(affinity);
    this.appliedRevision = revision;
    this.rebuild();
    this.hooks.onClusterChange?.();
    this.hooks.onObservations?.(new Set(kvs.flatMap((kv) => { const k = this.keys.parse(kv.key); return k?.kind === "observation" ? [k.service!] : []; })));
  }

  events(events: StoreEvent[], revision: number): void {
    const routing: StoreEvent[] = [];
    let affinity: StoreEvent[] | null = null;
    let cluster = false;
    let observed: Set<string> | null = null;
    let invalidChanged = false;
    for (const e of events) {
      const k = this.keys.parse(e.key);
      if (e.type === "put" && e.value.length > MAX_VALUE_BYTES) {
        // Not applied: a routing record keeps its last good value; the key is listed as invalid.
        invalidChanged = this.records.markOversized(e.key, oversizeReason(e.value.length)) || invalidChanged;
        continue;
      }
      invalidChanged = this.records.clearOversized(e.key) || invalidChanged;
      if (!k) routing.push(e);
      else if (k.kind === "affinity") {
        if (affinity === null) affinity = [];
        affinity.push(e);
      }
      else if (k.kind === "node") {
        if (e.type === "put") invalidChanged = this.putNode(k.node!, e.value) || invalidChanged;
        else {
          this.nodes.delete(k.node!);
          invalidChanged = this.records.cluster.delete(e.key) || invalidChanged;
        }
        cluster = true;
      } else if (k.kind === "heartbeat") {
        if (e.type === "put") invalidChanged = this.putHeartbeat(e.value) || invalidChanged;
        else {
          this.heartbeat = null;
          invalidChanged = this.records.cluster.delete(e.key) || invalidChanged;
        }
        cluster = true;
      } else if (k.kind === "observation") {
        if (e.type === "put") invalidChanged = this.putObservation(k.service!, k.node!, e.value) || invalidChanged;
        else {
          this.observations.delete(k.service!, k.node!);
          invalidChanged = this.records.cluster.delete(e.key) || invalidChanged;
        }
        if (observed === null) observed = new Set();
        observed.add(k.service!);
      } else if (k.kind === "dns") {
        if (e.type === "put") this.putDns(e.value, e.modRevision);
        else this.dns.delete();
        cluster = true;
      } else if (k.kind === "member") {
        if (e.type === "put") invalidChanged = this.putMember(k.node!, e.value) || invalidChanged;
        else {
          this.members.delete(k.node!);
          invalidChanged = this.records.cluster.delete(e.key) || invalidChanged;
        }
        cluster = true;
      } else if (k.kind === "drain" || k.kind === "rollout") {
        if (e.type === "put") invalidChanged = (k.kind === "drain" ? this.putDrain(k.node!, e.value) : this.putRollout(k.id!, e.value)) || invalidChanged;
        else {
          if (k.kind === "drain") this.drains.delete(k.node!);
          else if (k.id === "state") this.rollout = null;
          invalidChanged = this.records.cluster.delete(e.key) || invalidChanged;
        }
        cluster = true;
      } else if (k.kind !== "election" && k.kind !== "event") routing.push(e);
    }
    if (affinity) this.affinity?.events(affinity);
    // A node record or heartbeat turning bad (or good again) changes the invalid list: rebuild for it.
    const changed = this.records.apply(routing, revision) || invalidChanged;
    if (changed || this.rebuildPending !== null) {
      // One rebuild per event-loop turn, however many watch responses arrived in it: a mass verdict
      // change (1000 backends down) would otherwise rebuild the whole snapshot once per backend.
      // appliedRevision advances with the rebuild, so "applied ≥ r" still means "snapshot has r".
      this.pendingRevision = revision;
      this.rebuildPending ??= setImmediate(() => this.rebuild());
    } else this.appliedRevision = revision;
    if (cluster) this.hooks.onClusterChange?.();
    if (observed) this.hooks.onObservations?.(observed);
  }

  status(connected: boolean, error?: string): void {
    this.connected = connected;
    this.lastError = error ?? null;
    if (connected) this.log.info("store connected");
    else this.log.warn({ err: error }, "store unreachable: serving the last snapshot (fail-static)");
    this.hooks.onStatus?.(connected, error);
  }

  /** No more rebuilds (node shutdown): a rebuild queued for this turn must not reopen listeners. */
  stop(): void {
    if (this.rebuildPending !== null) clearImmediate(this.rebuildPending);
    this.rebuildPending = null;
    this.stopped = true;
  }

  /** Rebuilds from the current records (also called when the verdict source changes). */
  rebuild(): void {
    if (this.stopped) return;
    if (this.rebuildPending !== null) {
      clearImmediate(this.rebuildPending);
      this.rebuildPending = null;
      this.appliedRevision = Math.max(this.appliedRevision, this.pendingRevision);
    }
    const shared = new Map<string, VerdictView>();
    for (const [k, v] of this.records.sharedVerdicts()) shared.set(k, { ...v, source: "shared" });
    const input = this.records.input(this.hooks.routingVerdicts?.(shared) ?? shared);
    const resolver = this.hooks.resolver;
    if (resolver !== undefined) {
      // Only backends of proxied services: the kernel modes take IP addresses (their records say so
      // as invalid), and a name nobody can route to is not worth a query.
      const names = new Set<string>();
      for (const [service, m] of input.backends) {
        const spec = input.services.get(service) as { forwarding?: string } | undefined;
        if (spec === undefined || (spec.forwarding ?? "proxy") !== "proxy") continue;
        for (const b of m.values()) {
          if (isHostName(b.address)) names.add(b.address);
          if (b.checkAddress !== undefined && isHostName(b.checkAddress)) names.add(b.checkAddress);
        }
      }
      resolver.track(names);
      input.resolve = (name) => resolver.get(name);
    }
    const next = buildSnapshot(input, this.stats, this.snapshot);
    // Log each invalid record once per key and reason, not on every revision.
    const fresh = next.invalid.filter((r) => !this.seenInvalid.has(`${r.key}\n${r.reason}`));
    this.seenInvalid = new Set(next.invalid.map((r) => `${r.key}\n${r.reason}`));
    for (const r of fresh) this.log.warn({ key: r.key, reason: r.reason, keptLastGood: r.keptLastGood ?? false }, "invalid record skipped");
    if (fresh.length > 0) this.hooks.onInvalid?.(fresh);
    this.snapshot = next;
    this.hooks.onSnapshot(next);
  }

  /** A host name's answer changed: one rebuild this turn, from the same records. */
  namesChanged(): void {
    if (this.stopped || this.snapshot === null) return;
    this.rebuildPending ??= setImmediate(() => this.rebuild());
  }

  /**
   * Node records are validated like any record: their admin address is where status pages and the CLI
   * send the token, and a bad one must not reach /api/state. A bad record drops the node from the view
   * (its previous value is not vouched for either) and is listed under invalid. Returns whether the
   * invalid list changed.
   */
  private putNode(id: string, value: Buffer): boolean {
    const key = this.keys.node(id);
    try {
      this.nodes.set(id, parseNodeRecord(id, value));
      return this.records.cluster.delete(key);
    } catch (err) {
      this.nodes.delete(id);
      return this.setClusterInvalid(key, `node record: ${(err as Error).message}`);
    }
  }

  /**
   * A drain key drains its node whatever its value: the operator asked for it. A value that does not
   * parse is listed under invalid (with its reason) and read as a plain drain.
   */
  private putDrain(node: string, value: Buffer): boolean {
    const key = this.keys.drain(node);
    try {
      this.drains.set(node, parseDrainValue(value));
      return this.records.cluster.delete(key);
    } catch (err) {
      this.drains.set(node, { by: "", at: 0, reason: "", rollout: null, restartAt: null });
      return this.setClusterInvalid(key, `drain request (obeyed as a plain drain): ${(err as Error).message}`);
    }
  }

  /** A bad member record is skipped (listed with its key and reason): that node is not known as a member. */
  private putMember(node: string, value: Buffer): boolean {
    const key = this.keys.member(node);
    try {
      this.members.set(node, parseMember(node, value));
      return this.records.cluster.delete(key);
    } catch (err) {
      this.members.delete(node);
      return this.setClusterInvalid(key, `member record: ${(err as Error).message}`);
    }
  }

  /** rollout/state is shown, never acted on by nodes; the lock and guard keys carry nothing to read. */
  private putRollout(id: string, value: Buffer): boolean {
    if (id !== "state") return false;
    const key = this.keys.rolloutState;
    try {
      this.rollout = parseRolloutValue(value);
      return this.records.cluster.delete(key);
    } catch (err) {
      this.rollout = null;
      return this.setClusterInvalid(key, `rollout record: ${(err as Error).message}`);
    }
  }

  private putDns(value: Buffer, modRevision: number): void {
    this.dns.put(value, modRevision);
    if (this.dns.error) this.log.warn({ key: this.keys.dns, reason: this.dns.error, keptLastGood: this.dns.spec !== null }, "invalid record skipped");
  }

  /** A bad observation is listed as invalid and no longer counts (its node then has no vote). */
  private putObservation(service: string, node: string, value: Buffer): boolean {
    const key = this.keys.observation(service, node);
    try {
      this.observations.put(service, node, value);
      return this.records.cluster.delete(key);
    } catch (err) {
      return this.setClusterInvalid(key, `observation: ${(err as Error).message}`);
    }
  }

  private putHeartbeat(value: Buffer): boolean {
    const key = this.keys.heartbeat;
    try {
      this.heartbeat = parseHeartbeat(value);
      return this.records.cluster.delete(key);
    } catch (err) {
      // The last good heartbeat stays, as a record's last good value does.
      return this.setClusterInvalid(key, `heartbeat: ${(err as Error).message}`);
    }
  }

  private setClusterInvalid(key: string, reason: string): boolean {
    if (this.records.cluster.get(key) === reason) return false;
    this.records.cluster.set(key, reason);
    return true;
  }
}

function oversizeReason(bytes: number): string {
  return `value of ${bytes} bytes exceeds the ${MAX_VALUE_BYTES}-byte limit for values under the prefix`;
}
