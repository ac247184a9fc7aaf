// The operator drain of one node: it obeys its key rollout/drains/<id> (`ballast node drain`) as a
// SIGTERM drain does, but stays up: unready at once (anycast withdraws, DNS leaves it out), accepting
// for withdrawDelay, then no listeners, open connections given drainTimeout, then `drained`. The key
// is in etcd, so a restarted process reads it and comes back drained; deleting the key undrains.
import type { DrainReport } from "../shared/api.js";
import type { DrainRequest } from "../shared/rollout.js";
import type { DataPlane } from "./data/plane.js";
import type { EventLog } from "./events.js";
import type { Logger } from "./log.js";

export interface DrainContext {
  readonly id: string;
  readonly log: Logger;
  /** This process's start: a rollout's restart request older than it has been carried out. */
  readonly startedAt: number;
  readonly plane: Pick<DataPlane, "drain" | "resume" | "active">;
  readonly events: Pick<EventLog, "record">;
  /** Read at each drain, so a reload's new values apply (as for SIGTERM). */
  timing(): { withdrawDelay: number; drainTimeout: number };
  /** Whether this process ever said ready (/readyz 200 or its record): only then is there anything to withdraw. */
  announced(): boolean;
  /** Readiness or the drain report changed: the node re-publishes its record. */
  changed(): void;
  /** A rollout without a restart hook asked this process to restart once drained (exit for the supervisor). */
  restart: (() => void) | null;
}

export class NodeDrain {
  private report: DrainReport | null = null;
  private request: DrainRequest | null = null;
  private cancel: AbortController | null = null;
  /** Drains and undrains run one at a time, in the order the key changed. */
  private chain: Promise<void> = Promise.resolve();
  /** What the chain will have done once it settles: drained (true) or serving (false). */
  private wanted = false;
  private restarting = false;

  constructor(private readonly ctx: DrainContext) {}

  /** True from the drain key's arrival until the node serves again after its removal. */
  get active(): boolean {
    return this.report !== null;
  }

  get state(): DrainReport | null {
    return this.report;
  }

  /** The node's drain key as the reconciler last read it (undefined: no key). Called on every cluster change. */
  update(request: DrainRequest | undefined): void {
    this.request = request ?? null;
    const want = request !== undefined;
    if (want !== this.wanted) {
      this.wanted = want;
      if (want) this.chain = this.chain.then(() => this.begin());
      else {
        // Undrain: stop the drain where it is (connections still open carry on), then serve again.
        this.cancel?.abort();
        this.chain = this.chain.then(() => this.end());
      }
      this.chain = this.chain.catch((err: Error) => this.ctx.log.error({ err: err.message }, "operator drain step failed"));
      return;
    }
    this.maybeRestart();
  }

  private async begin(): Promise<void> {
    if (!this.wanted) return;
    const { withdrawDelay, drainTimeout } = this.ctx.timing();
    const cancel = new AbortController();
    this.cancel = cancel;
    const open = this.ctx.plane.active;
    this.report = { state: "draining", since: Date.now(), drainedAt: 0, openAtStart: open, open };
    const by = this.request?.by ? ` by ${this.request.by}` : "";
    this.ctx.log.info({ open, withdrawDelayMs: withdrawDelay, drainTimeoutMs: drainTimeout, by: this.request?.by }, "drain key set: draining");
    this.ctx.events.record("drain", `node draining (drain key${by}; drainTimeout ${drainTimeout} ms)`);
    this.ctx.changed();
    // As on SIGTERM: listeners keep accepting while anycast and DNS withdraw the node. A process that
    // never said ready (a drained node restarting) was never announced: it closes at once.
    if (withdrawDelay > 0 && this.ctx.announced()) await abortableDelay(withdrawDelay, cancel.signal);
    if (cancel.signal.aborted) return;
    const r = await this.ctx.plane.drain(drainTimeout, cancel.signal);
    if (cancel.signal.aborted || this.report === null) return;
    this.report = { ...this.report, state: "drained", drainedAt: Date.now(), open: r.remaining };
    this.ctx.log.info({ cut: r.remaining, ms: this.report.drainedAt - this.report.since }, "drained");
    this.ctx.events.record("drain", `node drained in ${this.report.drainedAt - this.report.since} ms (${this.report.openAtStart} open at start, ${r.remaining} cut at drainTimeout)`);
    this.ctx.changed();
    this.maybeRestart();
  }

  private async end(): Promise<void> {
    if (this.wanted || this.report === null) return;
    this.cancel = null;
    // Ready only once the listeners are bound again: the report stays until then.
    await this.ctx.plane.resume();
    this.report = null;
    this.ctx.log.info("drain key removed: serving again");
    this.ctx.events.record("drain", "node undrained: serving again");
    this.ctx.changed();
  }

  /** A rollout without restart hook: once drained, a process older than the request exits for its supervisor. */
  private maybeRestart(): void {
    const at = this.request?.restartAt ?? null;
    if (this.restarting || at === null || this.report?.state !== "drained" || this.ctx.startedAt >= at || this.ctx.restart === null) return;
    this.restarting = true;
    this.ctx.log.info({ rollout: this.request?.rollout }, "drained for a rollout: exiting so the supervisor restarts this node");
    this.ctx.restart();
  }
}

function abortableDelay(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      signal.removeEventListener("abort", done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal.addEventListener("abort", done);
  });
}
