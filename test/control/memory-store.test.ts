// MemoryStore: the in-process Store keeps the etcd store's contract (revisions, ordered sync,
// leases, elections, fencing) so standalone mode and pure-logic tests behave like a cluster.

import { afterEach, describe, expect, it, vi } from "vitest";
import { MemoryStore } from "../../node/control/memory-store.js";
import type { KeyValue, Leadership, StoreEvent, SyncSink } from "../../node/control/store.js";
import { StoreError } from "../../node/control/store.js";
import { waitFor } from "../helpers/wait.js";

class RecordingSink implements SyncSink {
  readonly state = new Map<string, string>();
  readonly calls: string[] = [];
  readonly violations: string[] = [];
  revision = 0;
  connected: boolean | undefined;
  private inCall = false;
  throwOnNextEvents = false;

  reset(kvs: KeyValue[], revision: number): void {
    this.enter();
    if (revision < this.revision) this.violations.push(`reset to ${revision} after ${this.revision}`);
    this.state.clear();
    for (const kv of kvs) this.state.set(kv.key, kv.value.toString());
    this.revision = revision;
    this.calls.push(`reset@${revision}`);
    this.inCall = false;
  }

  events(events: StoreEvent[], revision: number): void {
    this.enter();
    this.inCall = false;
    if (this.throwOnNextEvents) {
      this.throwOnNextEvents = false;
      throw new Error("sink bug");
    }
    for (const ev of events) {
      if (ev.modRevision <= this.revision) this.violations.push(`event at ${ev.modRevision} after ${this.revision}`);
      if (ev.type === "put") this.state.set(ev.key, ev.value.toString());
      else this.state.delete(ev.key);
    }
    this.revision = revision;
    this.calls.push(`events@${revision}:${events.map((e) => `${e.type} ${e.key}`).join(",")}`);
  }

  status(connected: boolean, error?: string): void {
    this.enter();
    this.connected = connected;
    this.calls.push(error === undefined ? `status:${connected}` : `status:${connected}:${error}`);
    this.inCall = false;
  }

  private enter(): void {
    if (this.inCall) this.violations.push("overlapping sink calls");
    this.inCall = true;
  }
}

function leaseIdOf(leadership: Leadership, prefix: string): string {
  return BigInt(`0x${leadership.key.slice(prefix.length)}`).toString();
}

function lostPromise(leadership: Leadership): Promise<string> {
  return new Promise((resolve) => leadership.onLost(resolve));
}

const flush = () => new Promise((resolve) => setImmediate(resolve));

afterEach(() => {
  vi.useRealTimers();
});

describe("MemoryStore", () => {
  it("keeps etcd's revision semantics for puts and deletes", async () => {
    const store = new MemoryStore();
    const r1 = await store.put("/k/a", "1");
    const r2 = await store.put("/k/b", "2");
    expect(r2).toBe(r1 + 1);
    await store.put("/k/a", "11");
    expect(await store.get("/k/a")).toMatchObject({ key: "/k/a", modRevision: r2 + 1, lease: "0" });
    expect(await store.delete("/k/missing")).toBe(false);
    expect((await store.list("/k/")).revision).toBe(r2 + 1); // a no-op delete is no revision
    await store.put("/kx", "outside");
    expect(await store.deletePrefix("/k/")).toBe(2);
    const after = await store.list("");
    expect(after.kvs.map((kv) => kv.key)).toEqual(["/kx"]);
    expect(after.revision).toBe(r2 + 3); // both deletes share one revision
    await expect(store.deletePrefix("")).rejects.toThrow(RangeError);
  });

  it("lists in key byte order", async () => {
    const store = new MemoryStore();
    for (const key of ["/o/b", "/o/a", "/o/B", "/o/a0"]) await store.put(key, "x");
    expect((await store.list("/o/")).kvs.map((kv) => kv.key)).toEqual(["/o/B", "/o/a", "/o/a0", "/o/b"]);
  });

  it("sync delivers a reset, then the prefix's events in order, until stopped", async () => {
    const store = new MemoryStore();
    await store.put("/s/a", "1");
    await store.put("/other", "x");
    const sink = new RecordingSink();
    const handle = store.sync("/s/", sink);
    expect(sink.calls).toEqual([]); // delivered after sync() returned, never inside it
    await store.put("/s/b", "2");
    await store.delete("/s/a");
    await store.put("/other", "y");
    await flush();
    expect(sink.calls).toEqual(["reset@3", "status:true", "events@4:put /s/b", "events@5:delete /s/a"]);
    expect(Object.fromEntries(sink.state)).toEqual({ "/s/b": "2" });

    await handle.stop();
    await store.put("/s/c", "3");
    await flush();
    expect(sink.calls).toHaveLength(4);
    expect(sink.violations).toEqual([]);
  });

  it("gives a throwing sink a fresh reset", async () => {
    const store = new MemoryStore();
    const sink = new RecordingSink();
    store.sync("/t/", sink);
    await flush();
    sink.throwOnNextEvents = true;
    await store.put("/t/a", "1");
    await waitFor(() => sink.state.get("/t/a") === "1", { message: "resync after sink error" });
    expect(sink.calls).toEqual(["reset@1", "status:true", "status:false:sink threw: sink bug", "reset@2", "status:true"]);
  });

  it("expires leases without keepalive and deletes their keys; revoke deletes without onLost", async () => {
    vi.useFakeTimers({ toFake: ["setTimeout", "clearTimeout"] });
    const store = new MemoryStore();
    const expiring = await store.grantLease(2, false);
    const kept = await store.grantLease(1, true);
    const reasons: string[] = [];
    expiring.onLost((r) => reasons.push(`expiring: ${r}`));
    kept.onLost((r) => reasons.push(`kept: ${r}`));
    await store.put("/l/a", "1", { lease: expiring.id });
    await store.put("/l/b", "2", { lease: kept.id });
    expect((await store.get("/l/a"))?.lease).toBe(expiring.id);

    vi.advanceTimersByTime(1_999);
    expect(await store.get("/l/a")).not.toBeNull();
    vi.advanceTimersByTime(1);
    await flush();
    expect(await store.get("/l/a")).toBeNull();
    expect(reasons).toEqual(["expiring: expired after its 2s TTL"]);

    vi.advanceTimersByTime(60_000); // kept alive
    expect(await store.get("/l/b")).not.toBeNull();
    await kept.revoke();
    await flush();
    expect(await store.get("/l/b")).toBeNull();
    expect(reasons).toHaveLength(1);

    await expect(store.put("/l/c", "3", { lease: kept.id })).rejects.toBeInstanceOf(StoreError);
    await expect(store.grantLease(0, true)).rejects.toThrow(RangeError);
  });

  it("elects the earliest candidate; resigning hands over in order", async () => {
    const store = new MemoryStore();
    const prefix = "/election/";
    expect(await store.leader(prefix)).toBeNull();
    const a = await store.campaign(prefix, "node-a", 5);
    expect(await store.leader(prefix)).toBe("node-a");
    let bElected = false;
    const campaignB = store.campaign(prefix, "node-b", 5).then((l) => {
      bElected = true;
      return l;
    });
    const campaignC = store.campaign(prefix, "node-c", 5);
    await flush();
    expect(bElected).toBe(false);
    expect(await a.fencedPut("/data/v", "a")).toBe(true);

    await a.resign();
    const b = await campaignB;
    expect(await store.leader(prefix)).toBe("node-b");
    expect(Number(b.term)).toBeGreaterThan(Number(a.term));
    expect(await a.fencedPut("/data/v", "stale")).toBe(false);
    expect(await b.fencedPut("/data/v", "b")).toBe(true);
    expect(await b.fencedDelete("/data/v")).toBe(true);
    expect(await store.get("/data/v")).toBeNull();

    await b.resign();
    const c = await campaignC;
    expect(await store.leader(prefix)).toBe("node-c");
    await c.resign();
    expect(await store.leader(prefix)).toBeNull();
  });

  it("fences a leader whose lease expired and tells it; the next candidate writes", async () => {
    const store = new MemoryStore();
    const prefix = "/fence/";
    const a = await store.campaign(prefix, "node-a", 5);
    const lostA = lostPromise(a);
    const campaignB = store.campaign(prefix, "node-b", 5);
    store.expireLease(leaseIdOf(a, prefix));
    expect(await a.fencedPut("/fence-data/v", "a")).toBe(false);
    expect(await lostA).toMatch(/lease lost|fenced/);
    const b = await campaignB;
    expect(await b.fencedPut("/fence-data/v", "b")).toBe(true);
    expect((await store.get("/fence-data/v"))?.value.toString()).toBe("b");
  });

  it("a leader whose election key is deleted loses leadership", async () => {
    const store = new MemoryStore();
    const prefix = "/deleted/";
    const a = await store.campaign(prefix, "node-a", 5);
    const lostA = lostPromise(a);
    await store.delete(a.key);
    expect(await lostA).toBe("election key deleted");
    expect(await a.fencedDelete("/deleted-data/v")).toBe(false);
    const late: string[] = [];
    a.onLost((r) => late.push(r)); // subscribing after the loss still hears about it
    await flush();
    expect(late).toEqual(["election key deleted"]);
  });

  it("close ends syncs, rejects waiting campaigns and refuses further calls", async () => {
    const store = new MemoryStore();
    const prefix = "/close/";
    const a = await store.campaign(prefix, "node-a", 5);
    const lostA = lostPromise(a);
    const waiting = store.campaign(prefix, "node-b", 5);
    const sink = new RecordingSink();
    store.sync("/close/", sink);
    await flush();
    await store.close();
    await expect(waiting).rejects.toMatchObject({ code: "STORE_CLOSED" });
    expect(await lostA).toBe("store closed");
    await expect(store.get("/x")).rejects.toMatchObject({ code: "STORE_CLOSED" });
    expect(() => store.sync("/x", new RecordingSink())).toThrow(StoreError);
  });
});
