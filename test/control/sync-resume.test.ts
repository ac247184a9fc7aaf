// PrefixSync's choice between resuming a broken watch and re-listing (issue 19), driven by a scripted
// source so each break is exactly the one named: a connection break resumes from the revision after
// the last event the sink took, with no list; a cancel by etcd (compaction) or a throwing sink lists again.
import { EventEmitter } from "node:events";
import { afterEach, describe, expect, it } from "vitest";
import { PrefixSync, type SyncSource } from "../../node/control/etcd-sync.js";
import type { KeyValue, StoreEvent, SyncSink } from "../../node/control/store.js";
import { waitFor } from "../helpers/wait.js";

class ScriptedWatcher extends EventEmitter {
  cancelled = false;
  constructor(readonly from: number) {
    super();
  }
  cancel(): Promise<void> {
    this.cancelled = true;
    return Promise.resolve();
  }
  put(key: string, revision: number): void {
    this.emit("data", { header: { revision: String(revision) }, events: [{ type: "Put", kv: { key: Buffer.from(key), value: Buffer.from("v"), mod_revision: String(revision) } }] });
  }
}

function scriptedSource(revision: () => number) {
  const calls: string[] = [];
  const watchers: ScriptedWatcher[] = [];
  const source: SyncSource = {
    list: async () => {
      calls.push(`list@${revision()}`);
      return { kvs: [] as KeyValue[], revision: revision() };
    },
    watch: (_prefix, from) => {
      calls.push(`watch from ${from}`);
      const w = new ScriptedWatcher(from);
      watchers.push(w);
      return w as unknown as ReturnType<SyncSource["watch"]>;
    },
    probe: async () => {},
  };
  return { source, calls, watchers, last: () => watchers[watchers.length - 1] };
}

class Sink implements SyncSink {
  throwNext = false;
  readonly seen: string[] = [];
  reset(_kvs: KeyValue[], revision: number): void {
    this.seen.push(`reset@${revision}`);
  }
  events(events: StoreEvent[]): void {
    if (this.throwNext) {
      this.throwNext = false;
      throw new Error("sink bug");
    }
    for (const e of events) this.seen.push(`${e.key}@${e.modRevision}`);
  }
  status(): void {}
}

const syncs: PrefixSync[] = [];
afterEach(async () => {
  for (const s of syncs.splice(0)) await s.stop();
});

describe("PrefixSync after a break", () => {
  it("resumes after a disconnect from the revision after the last event taken; lists again after a cancel by etcd or a throwing sink", async () => {
    let rev = 10;
    const src = scriptedSource(() => rev);
    const sink = new Sink();
    const relists: number[] = [];
    const resumes: number[] = [];
    const sync = new PrefixSync(src.source, "/p/", sink, { initialMs: 1, maxMs: 2 }, () => {}, () => relists.push(1), () => resumes.push(1));
    syncs.push(sync);
    await waitFor(() => src.watchers.length === 1);
    src.last().emit("connected");
    src.last().put("/p/a", 12);
    rev = 12;

    // A connection break: the next watch starts at 13, with no list and no reset.
    src.last().emit("disconnected", new Error("connection reset"));
    await waitFor(() => src.watchers.length === 2);
    src.last().emit("connected");
    expect(src.calls).toEqual(["list@10", "watch from 11", "watch from 13"]);
    expect(resumes).toHaveLength(1);
    src.last().put("/p/b", 15);
    rev = 20;

    // etcd cancels the watch (its history was compacted past it): a fresh list, then a watch after it.
    src.last().emit("error", new Error("Watcher canceled: mvcc: required revision has been compacted"));
    await waitFor(() => src.watchers.length === 3);
    expect(src.calls.slice(3)).toEqual(["list@20", "watch from 21"]);
    expect(relists).toHaveLength(1);

    // A sink that throws gets a fresh list too, not a resume past what it failed to take.
    src.last().emit("connected");
    sink.throwNext = true;
    src.last().put("/p/c", 22);
    rev = 22;
    await waitFor(() => src.watchers.length === 4);
    expect(src.calls.slice(5)).toEqual(["list@22", "watch from 23"]);
    expect(relists).toHaveLength(2);
    expect(sink.seen).toEqual(["reset@10", "/p/a@12", "/p/b@15", "reset@20", "reset@22"]);
    // Every ended watch was detached, except the one etcd had cancelled itself.
    expect(src.watchers.slice(0, 3).map((w) => w.cancelled)).toEqual([true, false, true]);
  });
});
