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

/**
 * One prefix kept in step with a sink: list at one revision, reset, watch from the next revision.
 * Any break (disconnect, server cancel, compaction, a throwing sink) ends that watch for good and
 * starts over with a new list after a backoff; etcd3's own resume is never used, because the list
 * is the truth and a resumed watch can fall behind a compaction.
 */
export class PrefixSync implements SyncHandle {
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
