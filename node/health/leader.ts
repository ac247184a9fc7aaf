// The health-check leader: every node campaigns; the elected one checks every backend and writes
// verdicts (only on change) and a heartbeat, each as a fenced write that fails once another term
// began. A refused write ends the term at once: stop checking, step down, campaign again. A verdict
// or heartbeat that did not reach etcd is retried while the term lasts (issue 19: an etcd outage
// shorter than the lease TTL must not cost a term; the fence keeps a late retry harmless).
import { setTimeout as sleep } from "node:timers/promises";
import { encodeValue, type Observation, parseVerdictValue, type Verdict } from "../../shared/codec.js";
import type { KeySchema } from "../../shared/keys.js";
import type { RecordTable } from "../control/records.js";
import type { Leadership, Store } from "../control/store.js";
import type { Logger } from "../log.js";
import { Checker, type CheckTarget } from "./checker.js";
import type { Probe, ProbeOutcome } from "./checks.js";
import type { HealthMetrics } from "./metrics.js";
import { decide, leaderVote, observerVote, verdictChanged, voteOf } from "./quorum.js";

export interface LeaderContext {
  readonly id: string;
  readonly store: Store;
  readonly keys: KeySchema;
  /** Lease TTL of the election key, in seconds. */
  readonly leaseTtl: number;
  /** Period of heartbeat writes (each one is an etcd revision: the idle cluster's only one). */
  readonly heartbeatMs: number;
  readonly log: Logger;
  readonly metrics: HealthMetrics;
  readonly probe?: Probe;
  /** Targets of the latest snapshot; null before the first one. */
  targets(): readonly CheckTarget[] | null;
  /** The node's record table (verdicts as applied, services and backends for pruning). */
  records(): RecordTable;
  /** Observer quorum: the observers of a service with this node leading, this node first (quorum.ts). */
  observersOf?(service: string, k: number): readonly string[];
  /** Observer quorum: a non-leader observer's record for a service, as read from etcd. */
  observation?(service: string, node: string): Observation | undefined;
  /** This node's own state of a backend changed (null: no longer known), for local avoidance. */
  onOwn?(key: string, verdict: Verdict | null): void;
  /** Every probe result of this leader's checker. */
  onProbe?(target: CheckTarget, outcome: ProbeOutcome): void;
}

/** Writes in flight at once; a mass outage of 1000 backends is written in a few round trips. */
const MAX_INFLIGHT_WRITES = 64;
/** Pruning waits this long after a change, so a burst of snapshots costs one pass. */
const PRUNE_DELAY_MS = 100;
/** Pause before campaigning again after a term ended (a failing store must not make a hot loop). */
const RECAMPAIGN_PAUSE_MS = 200;
/**
 * After stepping down for a local resource shortage, stay out of the election this long (at least two
 * lease TTLs), so a healthy node takes over instead of the starved one winning again at once.
 */
const STARVED_PAUSE_MIN_MS = 5_000;
const STOP_GRACE_MS = 1_000;
/** A heartbeat that failed is tried again this soon (jittered), so it lands as soon as etcd answers. */
const HEARTBEAT_RETRY_MS = 250;
/**
 * A heartbeat write's own deadline (the store's default is 5 s). When etcd's raft leader dies, a write
 * that a follower had forwarded to it is lost and answers only at the deadline; while it is in
 * flight no other heartbeat goes out, so 5 s of a 10 s staleAfter went by without one and every node
 * fell back (chaos 6, one member killed). A heartbeat repeats the last one, so giving up early and
 * trying again (on any live member) loses nothing.
 */
const HEARTBEAT_WRITE_TIMEOUT_MS = 1_500;

export class HealthLeader {
  private stopped = false;
  private readonly stopping = new AbortController();
  private term: Term | null = null;

  constructor(private readonly ctx: LeaderContext) {}

  get leading(): boolean {
    return this.term !== null && !this.term.ended;
  }

  /** The current term (create revision of our election key) while leading. */
  get termId(): string | null {
    return this.leading ? this.term!.leadership.term : null;
  }

  get checking(): number {
    return this.leading ? this.term!.checking : 0;
  }

  start(): void {
    void this.run();
  }

  /** The set of targets changed. */
  refresh(): void {
    this.term?.refresh();
  }

  /** Records changed: verdicts of backends that are gone may need removing. */
  schedulePrune(): void {
    this.term?.schedulePrune();
  }

  /** Observer quorum: observations of these services changed (null: any may have; the observers changed). */
  reevaluate(services: ReadonlySet<string> | null): void {
    this.term?.reevaluate(services);
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.stopping.abort();
    const t = this.term;
    // A campaign still waiting is ended by the store's close(); run() sees `stopped` when it returns.
    if (t) await Promise.race([t.end("node stopping", true), sleep(STOP_GRACE_MS, undefined, { ref: false })]);
  }

  private async run(): Promise<void> {
    let failures = 0;
    while (!this.stopped) {
      let leadership: Leadership;
      try {
        leadership = await this.ctx.store.campaign(this.ctx.keys.election, this.ctx.id, this.ctx.leaseTtl);
      } catch (err) {
        if (this.stopped) return;
        this.ctx.log.warn({ err: (err as Error).message }, "health election campaign failed; retrying");
        await this.pause(Math.min(5_000, RECAMPAIGN_PAUSE_MS * 2 ** Math.min(failures++, 5)));
        continue;
      }
      if (this.stopped) {
        await leadership.resign().catch(() => {});
        return;
      }
      failures = 0;
      const term = new Term(this.ctx, leadership);
      this.term = term;
      await term.run();
      this.term = null;
      await this.pause(term.starved ? Math.max(STARVED_PAUSE_MIN_MS, 2_000 * this.ctx.leaseTtl) : RECAMPAIGN_PAUSE_MS);
    }
  }

  private async pause(ms: number): Promise<void> {
    try {
      await sleep(ms, undefined, { signal: this.stopping.signal, ref: false });
    } catch {
      // stopping
    }
  }
}

/** One won election: from the seed read to the step-down. */
class Term {
  ended = false;
  /** Ended because this node could not make its probes (EMFILE…): sit out the next election. */
  starved = false;
  private readonly checker: Checker;
  /** What etcd holds as far as this term knows: the verdicts read at the start plus our own writes. */
  private readonly known = new Map<string, Verdict>();
  /** Latest value to write per key (null = delete); at most one write per key in flight, in order. */
  private readonly pending = new Map<string, Buffer | null>();
  private readonly inflight = new Set<string>();
  private heartbeatTimer: NodeJS.Timeout | null = null;
  private pruneTimer: NodeJS.Timeout | null = null;
  private heartbeatInflight = false;
  /** Pending verdict writes that failed are pumped again when this fires. */
  private retryTimer: NodeJS.Timeout | null = null;
  /** Keys whose last write did not reach etcd (the unwritten-verdicts gauge). */
  private readonly unwritten = new Set<string>();
  /** Pruning waits until the node's records are at least as new as the seed read. */
  private seedRevision = Number.POSITIVE_INFINITY;
  private targetsSeen = false;
  private settled = false;
  private finished!: () => void;
  private readonly done = new Promise<void>((r) => (this.finished = r));
  private resigning: Promise<void> = Promise.resolve();

  constructor(
    private readonly ctx: LeaderContext,
    readonly leadership: Leadership,
  ) {
    this.checker = new Checker(
      ctx.id,
      {
        onChange: (target, verdict) => {
          ctx.onOwn?.(target.key, verdict);
          this.decideTarget(target);
        },
        onResult: (target, outcome, seconds, lagMs) => {
          ctx.metrics.observe(target.service, outcome.result, seconds, lagMs);
          ctx.onProbe?.(target, outcome);
        },
        // A leader that cannot make its probes cannot judge anyone: it steps down (resigning, so
        // another node is elected at once) rather than keep a term in which it writes nothing useful.
        onLocalFault: (target, outcome) => {
          if (this.ended) return;
          this.starved = true;
          void this.end(`local resource shortage: ${outcome.reason} probing ${target.key}`, true);
        },
      },
      ctx.probe,
    );
    leadership.onLost((reason) => void this.end(`leadership lost: ${reason}`, false));
  }

  get checking(): number {
    return this.checker.size;
  }

  /** Resolves when the term is over. */
  async run(): Promise<void> {
    const l = this.leadership;
    this.ctx.log.info({ term: l.term }, "elected health-check leader");
    this.ctx.metrics.leader.set(1);
    try {
      // Continue from the verdicts in etcd (no reset to unknown, so no flap on failover). Read after
      // winning: a deposed leader's writes are fenced out by now, so this is the final word.
      const { kvs, revision } = await this.ctx.store.list(this.ctx.keys.verdicts);
      for (const kv of kvs) {
        const k = this.ctx.keys.parse(kv.key);
        if (k?.kind !== "verdict") continue;
        try {
          this.known.set(`${k.service}/${k.id}`, parseVerdictValue(kv.value));
        } catch {
          // an unreadable verdict is rewritten at the next transition
        }
      }
      this.seedRevision = revision;
    } catch (err) {
      void this.end(`reading verdicts failed: ${(err as Error).message}`, true);
    }
    if (!this.ended) {
      this.heartbeat();
      this.refresh();
    }
    await this.done;
  }

  refresh(): void {
    if (this.ended || this.seedRevision === Number.POSITIVE_INFINITY) return;
    const targets = this.ctx.targets();
    if (targets === null) return;
    this.targetsSeen = true;
    this.checker.setTargets(targets, (key) => this.known.get(key));
    this.ctx.metrics.checking.set({ role: "leader" }, this.checker.size);
    this.schedulePrune();
    this.reevaluate(null);
  }

  /** Decides again the targets of these services (null: all), from own states and observations. */
  reevaluate(services: ReadonlySet<string> | null): void {
    if (this.ended || this.seedRevision === Number.POSITIVE_INFINITY || !this.targetsSeen) return;
    const targets = this.ctx.targets();
    if (targets === null) return;
    for (const t of targets) if ((services === null || services.has(t.service)) && t.settings.observers > 1) this.decideTarget(t);
  }

  schedulePrune(): void {
    if (this.ended || this.pruneTimer !== null) return;
    this.pruneTimer = setTimeout(() => {
      this.pruneTimer = null;
      this.prune();
    }, PRUNE_DELAY_MS);
    this.pruneTimer.unref();
  }

  /**
   * Deletes verdicts whose backend record is gone or whose service no longer checks. Drained and
   * disabled backends keep theirs: they are not checked, and checking resumes from it if they return.
   */
  private prune(): void {
    if (this.ended) return;
    const records = this.ctx.records();
    if (records.revision < this.seedRevision) return;
    let services: ReturnType<RecordTable["serviceSpecs"]> | null = null;
    let backends: ReturnType<RecordTable["backendSpecs"]> | null = null;
    for (const key of records.sharedVerdicts().keys()) {
      const slash = key.indexOf("/");
      const service = key.slice(0, slash);
      const id = key.slice(slash + 1);
      const etcdKey = this.ctx.keys.verdict(service, id);
      if (this.pending.has(etcdKey) || this.inflight.has(etcdKey)) continue;
      services ??= records.serviceSpecs();
      backends ??= records.backendSpecs();
      const spec = services.get(service);
      if (spec !== undefined && spec.health.type !== "none" && backends.get(service)?.has(id)) continue;
      this.known.delete(key);
      this.ctx.log.info({ service, backend: id }, "removing the verdict of a backend that is gone or unchecked");
      this.write(etcdKey, null);
    }
  }

  /**
   * The verdict of one target from this leader's own state and, with observer quorum (K > 1), the
   * observers' votes (quorum.ts); written when it changed. With K = 1 it is the leader's own verdict.
   */
  private decideTarget(target: CheckTarget): void {
    if (this.ended) return;
    const own = this.checker.stateOf(target.key);
    if (own === null && target.settings.observers <= 1) return;
    const observers = target.settings.observers > 1 && this.ctx.observersOf ? this.ctx.observersOf(target.service, target.settings.observers) : [this.ctx.id];
    const previous = this.known.get(target.key) ?? null;
    // A new term keeps what is written until its own probes have settled: during a failover the
    // observers come and go (the dead leader's record lingers for its lease TTL) while this leader has
    // no state of its own, and deciding then rewrote verdicts without changing them (chaos scenario 2:
    // 9 writes, no state change). Settling takes rise/fall probes, as it always did for a lone leader.
    if (own === null && previous !== null) return;
    const votes = new Map<string, ReturnType<typeof voteOf>>();
    const mine = leaderVote(own, previous, this.ctx.id);
    votes.set(this.ctx.id, mine);
    for (let i = 1; i < observers.length; i++) votes.set(observers[i], observerVote(voteOf(this.ctx.observation?.(target.service, observers[i]), target.id), previous, observers[i], mine.vote));
    const verdict = decide({ observers, votes, previous, own, checker: this.ctx.id, now: Date.now() });
    // K > 1 with no other ready node: the leader judges alone for now (verdictChanged says what it writes).
    const alone = observers.length === 1 && target.settings.observers > 1;
    if (verdict === null || !verdictChanged(previous, verdict, alone)) return;
    this.known.set(target.key, verdict);
    if (previous?.state !== verdict.state || (previous?.partial ?? false) !== (verdict.partial ?? false)) {
      if (previous?.state !== verdict.state) this.ctx.metrics.verdictChanges.inc({ service: target.service, state: verdict.state, source: "shared" });
      this.ctx.log.info(
        { service: target.service, backend: target.id, state: verdict.state, partial: verdict.partial ?? false, quorum: verdict.quorum, votes: verdict.votes, reason: verdict.reason, count: verdict.count, term: this.leadership.term },
        `backend ${verdict.partial ? "partial" : verdict.state}`,
      );
    }
    this.write(this.ctx.keys.verdict(target.service, target.id), encodeValue({ ...verdict }));
  }

  private write(key: string, value: Buffer | null): void {
    if (this.ended) return;
    this.pending.set(key, value);
    this.pump();
  }

  private pump(): void {
    for (const [key, value] of this.pending) {
      if (this.ended || this.inflight.size >= MAX_INFLIGHT_WRITES) return;
      if (this.inflight.has(key)) continue;
      this.pending.delete(key);
      this.inflight.add(key);
      const write = value === null ? this.leadership.fencedDelete(key) : this.leadership.fencedPut(key, value);
      write.then(
        (ok) => {
          this.inflight.delete(key);
          if (ok && this.unwritten.delete(key)) this.ctx.metrics.unwrittenVerdicts.set(this.unwritten.size);
          if (this.fenced(ok)) this.pump();
        },
        (err: Error) => {
          this.inflight.delete(key);
          this.writeFailed(key, value, err);
        },
      );
    }
  }

  /**
   * A verdict write that did not reach etcd (unavailable, timed out) is tried again while the term
   * lasts, as the heartbeat is: an etcd outage shorter than the lease TTL must not cost a term, and a
   * verdict decided during one must still land. A newer value queued for the key meanwhile wins; the
   * fence keeps a late retry harmless (a deposed term's write is refused). Other errors end the term.
   */
  private writeFailed(key: string, value: Buffer | null, err: Error): void {
    if (!unreachable(err)) {
      this.failed(err);
      return;
    }
    this.ctx.metrics.fencedWrites.inc({ result: "error" });
    if (this.ended) return;
    if (!this.pending.has(key)) this.pending.set(key, value);
    this.unwritten.add(key);
    this.ctx.metrics.unwrittenVerdicts.set(this.unwritten.size);
    this.ctx.log.debug({ err: err.message, key, term: this.leadership.term }, "verdict write did not reach etcd; retrying");
    if (this.retryTimer !== null) return;
    this.retryTimer = setTimeout(() => {
      this.retryTimer = null;
      this.pump();
    }, HEARTBEAT_RETRY_MS * (0.5 + Math.random()));
    this.retryTimer.unref();
  }

  private heartbeat(): void {
    if (this.ended) return;
    let next = this.ctx.heartbeatMs;
    if (!this.heartbeatInflight) {
      // `settled`: every target has been probed max(rise, fall) times in this term, so these verdicts
      // are this leader's own observations; nodes in local fallback wait for it before trusting them.
      if (!this.settled && this.targetsSeen) this.settled = this.checker.settled();
      const value = encodeValue({ leader: this.ctx.id, at: Date.now(), term: this.leadership.term, settled: this.settled, checking: this.checker.size });
      this.heartbeatInflight = true;
      this.leadership.fencedPut(this.ctx.keys.heartbeat, value, { timeoutMs: Math.min(HEARTBEAT_WRITE_TIMEOUT_MS, this.ctx.heartbeatMs) }).then(
        (ok) => {
          this.heartbeatInflight = false;
          this.fenced(ok);
        },
        (err: Error) => {
          this.heartbeatInflight = false;
          this.heartbeatFailed(err);
        },
      );
    } else next = HEARTBEAT_RETRY_MS;
    this.armHeartbeat(next);
  }

  private armHeartbeat(ms: number): void {
    if (this.ended) return;
    if (this.heartbeatTimer) clearTimeout(this.heartbeatTimer);
    this.heartbeatTimer = setTimeout(() => this.heartbeat(), ms);
    this.heartbeatTimer.unref();
  }

  /**
   * A heartbeat that did not reach etcd (unavailable, timed out): whether it landed does not matter,
   * the next one says the same. The term goes on while the leadership lives (its lease and election
   * key are the proof), and the heartbeat is tried again soon, so that after a short etcd outage the
   * nodes read a fresh one at once instead of a term change. Other errors end the term as before.
   */
  private heartbeatFailed(err: Error): void {
    if (!unreachable(err)) {
      this.failed(err);
      return;
    }
    this.ctx.metrics.fencedWrites.inc({ result: "error" });
    this.ctx.log.debug({ err: err.message, term: this.leadership.term }, "heartbeat did not reach etcd; retrying");
    this.armHeartbeat(Math.min(this.ctx.heartbeatMs, HEARTBEAT_RETRY_MS * (0.5 + Math.random())));
  }

  /** Counts a fenced write; a refused one ends the term (the leadership already knows it is lost). */
  private fenced(ok: boolean): boolean {
    this.ctx.metrics.fencedWrites.inc({ result: ok ? "ok" : "refused" });
    if (!ok) void this.end("fenced write refused: another term has begun", false);
    return ok;
  }

  /** A write that failed other than by etcd being unreachable: step down rather than guess. */
  private failed(err: Error): void {
    this.ctx.metrics.fencedWrites.inc({ result: "error" });
    void this.end(`write failed: ${err.message}`, true);
  }

  end(reason: string, resign: boolean): Promise<void> {
    if (this.ended) return this.resigning;
    this.ended = true;
    if (this.heartbeatTimer) clearTimeout(this.heartbeatTimer);
    if (this.retryTimer) clearTimeout(this.retryTimer);
    // What this term could not write, the next term decides and writes again.
    this.unwritten.clear();
    this.ctx.metrics.unwrittenVerdicts.set(0);
    if (this.pruneTimer) clearTimeout(this.pruneTimer);
    // This node's own states end with the term: nothing avoids a backend on their account any more.
    for (const [key, v] of this.checker.verdicts()) if (v.state === "down") this.ctx.onOwn?.(key, null);
    this.checker.stop();
    this.pending.clear();
    this.ctx.metrics.leader.set(0);
    this.ctx.metrics.checking.set({ role: "leader" }, 0);
    const fields = { term: this.leadership.term, reason };
    if (reason === "node stopping") this.ctx.log.info(fields, "health-check leader stepping down");
    else this.ctx.log.warn(fields, "health-check leader stepped down");
    if (resign) this.resigning = this.leadership.resign().catch(() => {});
    this.finished();
    return this.resigning;
  }
}

/** etcd did not answer (StoreError's `recoverable`; health shares only types with control/: no instanceof here). */
function unreachable(err: Error): boolean {
  return (err as { recoverable?: unknown }).recoverable === true;
}
