// The rollout/ keys as a node and the guard read them, through an injected store: the key layout,
// drain values (a bad one is listed and still obeyed), the rollout record, the guard's count of
// nodes out, transactions, and a node that drains and undrains through its key without exiting.
import net from "node:net";
import { afterEach, describe, expect, it } from "vitest";
import type { StateView } from "../../shared/api.js";
import { encodeValue, parseNodeRecord } from "../../shared/codec.js";
import { KeySchema } from "../../shared/keys.js";
import { nodesOut, parseDrainValue } from "../../shared/rollout.js";
import { nodeConfigSchema } from "../../shared/schema.js";
import { MemoryStore } from "../../node/control/memory-store.js";
import { createLogger } from "../../node/log.js";
import { BallastNode } from "../../node/node.js";
import { DrainRefused, drainNode, undrainNode } from "../../node/rollout/guard.js";
import { startTcpEcho } from "../helpers/backends.js";
import { waitFor } from "../helpers/wait.js";

const keys = KeySchema.forCluster("t");
const running: BallastNode[] = [];
afterEach(async () => {
  await Promise.all(running.splice(0).map((n) => n.close()));
});

const record = (id: string, ready: boolean, draining = false) => ({ id, address: "127.0.0.1:1", admin: "127.0.0.1:1", zone: "", version: "1", ready, draining, revision: 1, mode: "shared" as const, startedAt: 1, updatedAt: 1 });

describe("rollout keys", () => {
  it("classifies drain, state, lock and guard keys, and lists others under rollout/ as unrecognised", () => {
    expect(keys.parse(keys.drain("n1"))).toEqual({ kind: "drain", node: "n1" });
    expect(keys.parse(keys.rolloutState)).toEqual({ kind: "rollout", id: "state" });
    expect(keys.parse(keys.rolloutLock)).toEqual({ kind: "rollout", id: "lock" });
    expect(keys.parse(keys.drainGuard)).toEqual({ kind: "rollout", id: "guard" });
    expect(keys.reason(`${keys.prefix}rollout/drains/bad id`)).toMatch(/node id "bad id" is not/);
    expect(keys.reason(`${keys.prefix}rollout/other`)).toMatch(/expected rollout\/drains\/<node>/);
  });

  it("reads a drain value: empty is a plain drain, JSON fields are checked, junk names its reason", () => {
    expect(parseDrainValue(Buffer.alloc(0))).toEqual({ by: "", at: 0, reason: "", rollout: null, restartAt: null });
    expect(parseDrainValue(Buffer.from('{"by":"ops@h","reason":"kernel"}'))).toMatchObject({ by: "ops@h", reason: "kernel" });
    expect(() => parseDrainValue(Buffer.from("yes"))).toThrow(/not JSON/);
    expect(() => parseDrainValue(Buffer.from('{"at":-1}'))).toThrow(/^at: /);
    expect(() => parseDrainValue(Buffer.from('{"by":"a\\u202Eb"}'))).toThrow(/by: control or bidi/);
  });

  it("counts as out: drain keys (also of nodes with no record) and registered nodes not ready; never the target", () => {
    const recs = [record("n1", true), record("n2", false, true), record("n3", false), record("n4", true)];
    expect(nodesOut(recs, ["n4", "n9"], "n1")).toEqual([
      { node: "n2", why: "draining (not ready)" },
      { node: "n3", why: "not ready" },
      { node: "n4", why: "drained" },
      { node: "n9", why: "drained" },
    ]);
    expect(nodesOut(recs, ["n4"], "n4").map((o) => o.node)).toEqual(["n2", "n3"]);
  });

  it("a transaction applies all or nothing on its compares (0: the key must not exist)", async () => {
    const store = new MemoryStore();
    expect((await store.txn([{ key: "/a", modRevision: 0 }], [{ put: "/a", value: "1" }, { put: "/b", value: "1" }])).succeeded).toBe(true);
    const a = (await store.get("/a"))!;
    expect((await store.txn([{ key: "/a", modRevision: 0 }], [{ put: "/c", value: "1" }])).succeeded).toBe(false);
    expect(await store.get("/c")).toBeNull();
    expect((await store.txn([{ key: "/a", modRevision: a.modRevision }], [{ delete: "/a" }, { put: "/c", value: "2" }])).succeeded).toBe(true);
    expect(await store.get("/a")).toBeNull();
    expect((await store.get("/c"))?.value.toString()).toBe("2");
  });

  it("the guard refuses naming the nodes out, admits under a larger budget, and lets exactly one of two racing drains win", async () => {
    const store = new MemoryStore();
    for (const id of ["n1", "n2", "n3"]) await store.put(keys.node(id), encodeValue(record(id, true)));
    await drainNode(store, keys, "n1", { maxUnavailable: 1, waitMs: 0, by: "t" });
    const err = await drainNode(store, keys, "n2", { maxUnavailable: 1, waitMs: 0, by: "t" }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(DrainRefused);
    expect((err as Error).message).toMatch(/drain of n2 refused: 1 node is already out \(n1: drained\) and at most 1/);
    expect((await drainNode(store, keys, "n1", { maxUnavailable: 1, waitMs: 0, by: "t" })).already).toBe(true);
    await drainNode(store, keys, "n2", { maxUnavailable: 2, waitMs: 0, by: "t" });
    expect(await undrainNode(store, keys, "n1", "t")).toBe(true);
    expect(await undrainNode(store, keys, "n1", "t")).toBe(false);
    await undrainNode(store, keys, "n2", "t");
    for (let round = 0; round < 20; round++) {
      const r = await Promise.allSettled(["n2", "n3"].map((id) => drainNode(store, keys, id, { maxUnavailable: 1, waitMs: 0, by: "race" })));
      expect(r.filter((x) => x.status === "fulfilled")).toHaveLength(1);
      const { kvs } = await store.list(keys.drains);
      expect(kvs).toHaveLength(1);
      await undrainNode(store, keys, kvs[0].key.slice(keys.drains.length), "race");
    }
  });
});

describe("a node obeys its drain key", () => {
  async function nodeOn(store: MemoryStore, port: number): Promise<BallastNode> {
    await store.put(keys.service("web"), JSON.stringify({ listen: `127.0.0.1:${port}`, health: { type: "none" } }));
    const config = nodeConfigSchema.parse({ node: { id: "n1" }, cluster: "t", admin: { listen: "127.0.0.1:0" }, withdrawDelay: "200ms", drainTimeout: "5s", accessLog: { enabled: false } });
    const n = new BallastNode({ config, store, log: createLogger("silent", { node: "n1" }) });
    running.push(n);
    await n.start();
    return n;
  }

  async function state(n: BallastNode): Promise<StateView> {
    return (await (await fetch(`http://${n.admin.address}/api/state`)).json()) as StateView;
  }

  it("drains (record, /api/state, listeners), lists a bad drain value while obeying it, and serves again on the same port after undrain", async () => {
    const store = new MemoryStore();
    const backend = await startTcpEcho("b");
    const probe = net.createServer();
    const port = await new Promise<number>((r) => probe.listen(0, "127.0.0.1", () => r((probe.address() as net.AddressInfo).port)));
    await new Promise((r) => probe.close(r));
    await store.put(keys.backend("web", "b"), `127.0.0.1:${backend.port}`);
    const n = await nodeOn(store, port);
    await waitFor(() => n.ready);

    await store.put(keys.drain("n1"), "not json");
    await waitFor(() => !n.ready, { message: "unready on the drain key" });
    await waitFor(async () => (await state(n)).node.drain?.state === "drained", { message: "drained" });
    const st = await state(n);
    expect(st.node).toMatchObject({ ready: false, draining: true, drain: { state: "drained", openAtStart: 0, open: 0 } });
    expect(st.rollout?.drains).toEqual(["n1"]);
    expect(st.invalid).toContainEqual(expect.objectContaining({ key: keys.drain("n1"), reason: expect.stringMatching(/^drain request \(obeyed as a plain drain\): not JSON/) }));
    const rec = parseNodeRecord("n1", (await store.get(keys.node("n1")))!.value);
    expect(rec.drain).toMatchObject({ state: "drained" });
    const refused = await new Promise<boolean>((r) => net.connect(port, "127.0.0.1").once("connect", function (this: net.Socket) { this.destroy(); r(false); }).once("error", () => r(true)));
    expect(refused).toBe(true);

    await store.delete(keys.drain("n1"));
    await waitFor(() => n.ready, { message: "ready after undrain" });
    await waitFor(async () => parseNodeRecord("n1", (await store.get(keys.node("n1")))!.value).ready, { message: "record ready" });
    const rec2 = parseNodeRecord("n1", (await store.get(keys.node("n1")))!.value);
    expect(rec2).toMatchObject({ ready: true, draining: false });
    expect(rec2.drain).toBeUndefined();
    const answer = await new Promise<string>((resolve, reject) => {
      const s = net.connect(port, "127.0.0.1", () => s.end("hi"));
      let got = "";
      s.on("data", (d) => (got += d.toString()));
      s.on("end", () => resolve(got));
      s.on("error", reject);
    });
    expect(answer).toBe("b:hi");
    expect((await state(n)).invalid.filter((r) => r.key === keys.drain("n1"))).toEqual([]);
    await backend.close();
  });
});
