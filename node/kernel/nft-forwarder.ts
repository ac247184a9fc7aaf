// What the two nftables forwarders (NAT: forwarder.ts, DSR: dsr.ts) share: one table per cluster
// named by tableName(), snapshots applied one transaction at a time with later ones coalescing into
// the newest, apply() that never rejects, "is nft usable here" asked until it is, and the per-service
// status every forwarder reports. Each subclass renders and loads its own ruleset in applyNow().
import type { Logger } from "pino";
import { type Forwarder, type ForwarderServiceStatus, type ForwardingMode, forwardingOf } from "../model/forwarder.js";
import type { ServiceState, Snapshot } from "../model/snapshot.js";
import { type NftRunner, nftRunner, nftUnavailable } from "./nft.js";
import { tableName } from "./ruleset.js";

/** The transaction figures both forwarders keep (and /api/state shows). */
export interface NftApplyStats {
  applies: number;
  failures: number;
  lastError: string | null;
  lastApplyMs: number;
}

export interface NftForwarderOptions {
  cluster: string;
  /** nftables family of the table: "inet" for NAT, "netdev" for DSR (two tables of one name). */
  family: "inet" | "netdev";
  seed: number;
  log: Logger;
  runner?: NftRunner;
  /** The error log line of an apply that threw, e.g. "dsr apply failed". */
  failedMessage: string;
}

export abstract class NftForwarder<S extends NftApplyStats> implements Forwarder<Snapshot> {
  abstract readonly name: string;
  abstract readonly stats: S;
  readonly table: string;
  readonly seed: number;
  protected readonly runner: NftRunner;
  protected readonly log: Logger;
  protected readonly statuses = new Map<string, ForwarderServiceStatus>();
  /** Why nft cannot be used here (asked again at each apply until it can), null when it can, undefined before asking. */
  protected unavailable: string | null | undefined;
  private readonly family: "inet" | "netdev";
  private readonly failedMessage: string;
  private pending: Snapshot | null = null;
  private running: Promise<void> | null = null;

  constructor(opts: NftForwarderOptions) {
    this.table = tableName(opts.cluster);
    this.seed = opts.seed;
    this.runner = opts.runner ?? nftRunner();
    this.log = opts.log;
    this.family = opts.family;
    this.failedMessage = opts.failedMessage;
  }

  abstract handles(mode: ForwardingMode): boolean;

  /** Renders and loads one snapshot; may throw (apply() counts and logs it). */
  protected abstract applyNow(snap: Snapshot): Promise<void>;

  status(service: string): ForwarderServiceStatus | undefined {
    return this.statuses.get(service);
  }

  /**
   * Applies snapshots in order, one nft transaction at a time. Snapshots that arrive while one is
   * being applied coalesce: only the newest is programmed next (a flapping verdict costs one update).
   */
  apply(snap: Snapshot): Promise<void> {
    this.pending = snap;
    this.running ??= this.applyPending();
    return this.running;
  }

  /** An apply is in progress (or queued). */
  protected get applying(): boolean {
    return this.running !== null;
  }

  private async applyPending(): Promise<void> {
    while (this.pending !== null) {
      const snap = this.pending;
      this.pending = null;
      try {
        await this.applyNow(snap);
      } catch (err) {
        // apply() never rejects: the previous programming keeps serving.
        this.recordFailure((err as Error).message);
        this.log.error({ err: (err as Error).message }, this.failedMessage);
      }
    }
    this.running = null;
  }

  /** The services of `snap` this forwarder carries; statuses of services that left are dropped. */
  protected carried(snap: Snapshot): ServiceState[] {
    const mine = [...snap.services.values()].filter((s) => this.handles(forwardingOf(s.spec)));
    for (const name of [...this.statuses.keys()]) if (!mine.some((s) => s.name === name)) this.statuses.delete(name);
    return mine;
  }

  /** Whether nft can be used here; if not, every service in `services` is marked unprogrammed with the reason. */
  protected async usable(services: readonly ServiceState[]): Promise<boolean> {
    if (this.unavailable === undefined || this.unavailable !== null) this.unavailable = await nftUnavailable(this.runner);
    if (this.unavailable === null) return true;
    this.refuseAll(services, this.unavailable);
    return false;
  }

  protected refuseAll(services: readonly ServiceState[], reason: string): void {
    for (const s of services) this.statuses.set(s.name, { programmed: false, reason, revision: 0 });
  }

  protected async tableExists(): Promise<boolean> {
    const r = await this.runner.run(["list", "tables", this.family]);
    return r.ok && r.stdout.split("\n").some((l) => l.trim() === `table ${this.family} ${this.table}`);
  }

  protected recordFailure(error: string): void {
    this.stats.failures++;
    this.stats.lastError = error;
  }

  protected recordApplied(ms: number): void {
    this.stats.applies++;
    this.stats.lastApplyMs = ms;
    this.stats.lastError = null;
  }

  /**
   * After a failed transaction: each service keeps what it had (the previous ruleset still serves)
   * with the failure as its reason; a service in `refused` shows its own reason instead.
   */
  protected markFailed(services: readonly ServiceState[], error: string, refused: ReadonlyMap<string, string> | null): void {
    for (const svc of services) {
      const prev = this.statuses.get(svc.name);
      const why = refused?.get(svc.name);
      this.statuses.set(svc.name, why !== undefined ? { programmed: false, reason: why, revision: 0 } : { programmed: prev?.programmed ?? false, reason: `apply failed: ${error}`, revision: prev?.revision ?? 0 });
    }
  }

  /** After a successful transaction at `revision`: programmed, or refused with the reason. */
  protected markApplied(services: readonly ServiceState[], refused: ReadonlyMap<string, string>, revision: number): void {
    for (const svc of services) {
      const why = refused.get(svc.name);
      this.statuses.set(svc.name, why === undefined ? { programmed: true, reason: null, revision } : { programmed: false, reason: why, revision: 0 });
    }
  }

  /** The kernel keeps forwarding while the node drains: anycast withdraws the route first. */
  async drain(_timeoutMs: number): Promise<{ remaining: number }> {
    return { remaining: 0 };
  }

  abstract close(): Promise<void>;
}
