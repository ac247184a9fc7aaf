// One prefix kept in step with a sink (the sync half of the etcd store).

import type { Watcher } from "etcd3";
import { type BackoffConfig, backoffDelay, describe, detach, pause, withGrace } from "./etcd-common.js";
import type { KeyValue, StoreEvent, SyncHandle, SyncSink } from "./store.js";

const WATCH_CANCEL_GRACE_MS = 1_000;
/**
 * A silent partition leaves a watch stream open with nothing on it; gRPC keepalive notices after
 * ~15 s. A small read every LIVENESS_MS with its own short deadline notices in a few seconds, so
 * /api/state and the staleness metric tell the truth while the node serves fail-static.
 */
const LIVENESS_MS = 2_000;

export interface SyncSource {
  list(prefix: string): Promise<{ kvs: KeyValue[]; revision: number }>;
  /** An etcd3 watcher not yet attached to the stream, so every listener is in place before any event. */
  watch(prefix: string, fromRevision: number): Watcher;
  /** A cheap read with a short deadline: rejects when etcd does not answer. */
  probe(prefix: string): Promise<void>;
}

/** How a watch ended: why, and whether the sink needs a fresh list (else the watch may resume). */
interface WatchEnd {
  reason: string;
  relist: boolean;
}

/**
 * One prefix kept in step with a sink: list at one revision, reset, watch from the next revision.
 * Any break ends that watch for good (etcd3's own resubscription is never used) and, after a
 * jittered backoff, starts a new one. A connection break (etcd restarted, paused, unreachable)
 * resumes from the revision after the last one the sink took: etcd replays what changed meanwhile,
 * and if it has compacted that history it cancels the watch, which then re-lists. A cancel by etcd
 * or a throwing sink re-lists at once. Resuming is what keeps a short outage cheap: N nodes each
 * re-listing the whole prefix (affinity included) at the same moment is what a restart used to
 * cost (issue 19).
 */
export class PrefixSync implements SyncHandle {
  private stopped = false;
  private connected: boolean | undefined;
  private readonly stopping = new AbortController();
  private endWatch: (() => Promise<void>) | null = null;
  /** Revision the next watch may resume from (0: the sink needs a list first). */
  private resumeFrom = 0;

  constructor(
    private readonly source: SyncSource,
    private readonly prefix: string,
    private readonly sink: SyncSink,
    private readonly backoff: BackoffConfig,
    private readonly onStopped: () => void,
    /** Called after each successful list but the first (a re-list: recovery cost, counted by the store). */
    private readonly onRelist: () => void = () => {},
    /** Called when a watch resumed after a break without a list (counted by the store). */
    private readonly onResume: () => void = () => {},
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
    let first = true;
    const connected = () => {
      failures = 0;
    };
    while (!this.stopped) {
      let end: WatchEnd;
      try {
        if (this.resumeFrom > 0) {
          end = await this.watchFrom(this.resumeFrom, () => {
            connected();
            this.onResume();
          });
        } else {
          const { kvs, revision } = await this.source.list(this.prefix);
          if (this.stopped) return;
          if (!first) this.onRelist();
          first = false;
          const sinkError = this.deliver("reset", () => this.sink.reset(kvs, revision));
          if (sinkError !== null) end = { reason: sinkError, relist: true };
          else {
            this.resumeFrom = revision + 1;
            end = await this.watchFrom(revision + 1, connected);
          }
        }
      } catch (err) {
        end = { reason: describe(err), relist: true };
      }
      if (this.stopped) return;
      if (end.relist) this.resumeFrom = 0;
      this.report(false, end.reason);
      await pause(backoffDelay(this.backoff, failures++), this.stopping.signal);
    }
  }

  /** Resolves with how the watch ended; the watcher is detached by then. */
  private watchFrom(fromRevision: number, onConnected: () => void): Promise<WatchEnd> {
    return new Promise((resolve) => {
      const watcher = this.source.watch(this.prefix, fromRevision);
      let settled = false;
      let liveness: NodeJS.Timeout | undefined;
      const finish = (reason: string, cancel: boolean, relist = false): Promise<void> => {
        if (settled) return Promise.resolve();
        settled = true;
        clearInterval(liveness);
        this.endWatch = null;
        const cancelling = cancel ? detach(watcher) : Promise.resolve();
        resolve({ reason, relist });
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
        if (sinkError !== null) void finish(sinkError, true, true);
        else this.resumeFrom = Math.max(this.resumeFrom, events[events.length - 1].modRevision + 1);
      });
      watcher.on("disconnected", (err) => void finish(`watch disconnected: ${describe(err)}`, true));
      // etcd cancelled the watch (compacted past our revision, or otherwise); it is already detached.
      watcher.on("error", (err) => void finish(`watch cancelled by etcd (compaction or cancel): ${describe(err)}`, false, true));
      watcher.on("end", () => void finish("watch ended", false, true));
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
