// Node records, the health heartbeat and keys the schema does not know, as a node sees them through a
// store: each bad one is listed under invalid with its key and reason, none breaks /api/state, and the
// good ones keep working. (Issue 13, findings 10, 11 and 17.)
import { Packr } from "msgpackr";
import { afterEach, describe, expect, it } from "vitest";
import { decodeValue, encodeValue } from "../../shared/codec.js";
import { KeySchema } from "../../shared/keys.js";
import { nodeConfigSchema } from "../../shared/schema.js";
import { createLogger } from "../../node/log.js";
import { MemoryStore } from "../../node/control/memory-store.js";
import { Reconciler } from "../../node/control/reconciler.js";
import { StatsRegistry } from "../../node/model/stats.js";
import { BallastNode } from "../../node/node.js";
import { waitFor } from "../helpers/wait.js";

const keys = KeySchema.forCluster("t");
const running: BallastNode[] = [];
afterEach(async () => {
  await Promise.all(running.splice(0).map((n) => n.close()));
});

/** A clustered node (injected memory store) with its admin API on a free loopback port. */
async function nodeOn(store: MemoryStore, extra: Record<string, unknown> = {}): Promise<BallastNode> {
  const config = nodeConfigSchema.parse({ node: { id: "n1" }, cluster: "t", admin: { listen: "127.0.0.1:0" }, ...extra });
  const n = new BallastNode({ config, store, log: createLogger("silent", { node: "n1" }) });
  running.push(n);
  await n.start();
  return n;
}

interface State {
  invalid: Array<{ key: string; reason: string }>;
  nodes: Array<{ id: string; admin: string }>;
  services: Array<{ name: string }>;
}

async function state(n: BallastNode): Promise<{ status: number; body: State }> {
  const res = await fetch(`http://${n.admin.address}/api/state`);
  return { status: res.status, body: (await res.json()) as State };
}

const goodNode = (id: string, admin: string) => ({ id, address: admin, admin, zone: "", version: "1", ready: true, draining: false, revision: 1, mode: "shared", startedAt: 1, updatedAt: 1 });

describe("msgpack 64-bit integers (finding 11)", () => {
  it("decodes a uint64/int64 as a number, not a BigInt", () => {
    const big = new Packr({ useRecords: false, mapsAsObjects: true, useBigIntExtension: false });
    const bytes = big.pack({ v: 1, startedAt: 2n ** 63n - 1n, updatedAt: -(2n ** 40n) });
    const v = decodeValue(bytes);
    expect(typeof v.startedAt).toBe("number");
    expect(typeof v.updatedAt).toBe("number");
  });

  it("a node record holding a 64-bit integer does not make /api/state fail", async () => {
    const store = new MemoryStore();
    const big = new Packr({ useRecords: false, mapsAsObjects: true });
    await store.put(keys.node("rogue"), big.pack({ v: 1, ...goodNode("rogue", "127.0.0.1:1"), startedAt: 2n ** 63n - 1n }));
    const n = await nodeOn(store);
    const r = await state(n);
    expect(r.status).toBe(200);
  });
});

describe("key segments (finding 17)", () => {
  const P = keys.prefix;
  const svc = JSON.stringify({ listen: "127.0.0.1:0" });
  it.each([
    { description: "a newline in a service name", key: `${P}services/web\nx`, value: svc, reason: /service name .* is not 1-63 characters/ },
    { description: "an RTL override in a service name", key: `${P}services/ab\u202Ecd`, value: svc, reason: /service name/ },
    { description: "a 2000-character service name", key: `${P}services/${"s".repeat(2000)}`, value: svc, reason: /2000 characters/ },
    { description: "a space in a backend id", key: `${P}backends/web/b 1`, value: "10.0.0.9:80", reason: /backend id/ },
    { description: "an extra segment under services", key: `${P}services/web/extra`, value: svc, reason: /unrecognised key: expected services\/<service>/ },
    { description: "an extra segment under backends", key: `${P}backends/web/b1/x`, value: "10.0.0.9:80", reason: /unrecognised key: expected backends/ },
    { description: "an empty backend id", key: `${P}backends/web/`, value: "10.0.0.9:80", reason: /backend id/ },
    { description: "a top-level typo", key: `${P}service/web`, value: svc, reason: /unrecognised key: "service"/ },
    { description: "a bad verdict key", key: `${P}health/verdicts/web/b1/x`, value: encodeValue({ state: "up" }), reason: /unrecognised key/ },
    { description: "a bad affinity sequence", key: `${P}affinity/web/n1/12ab`, value: Buffer.from([0x80]), reason: /batch sequence/ },
    { description: "a bad node id", key: `${P}nodes/n\u0000`, value: encodeValue(goodNode("x", "127.0.0.1:1")), reason: /node id/ },
  ])("lists $description as invalid; valid records keep working", async ({ key, value, reason }) => {
    const store = new MemoryStore();
    await store.put(keys.service("web"), svc);
    await store.put(keys.backend("web", "b1"), "127.0.0.1:9");
    await store.put(key, value);
    const n = await nodeOn(store);
    const r = await state(n);
    expect(r.status).toBe(200);
    const bad = r.body.invalid.find((x) => x.key === key);
    expect(bad?.reason, JSON.stringify(r.body.invalid)).toMatch(reason);
    expect(r.body.services.map((s) => s.name)).toEqual(["web"]);
    expect(n.reconciler.snapshot!.services.get("web")!.targets.map((t) => t.id)).toEqual(["b1"]);
    // Removing the key removes the entry.
    await store.delete(key);
    await waitFor(() => !n.reconciler.snapshot!.invalid.some((x) => x.key === key), { message: "the deleted key leaves the invalid list" });
  });
});

describe("node records and the heartbeat are validated (finding 10)", () => {
  it.each([
    { description: "an admin address with a path", patch: { admin: "evil.example/x?steal=" }, reason: /admin/ },
    { description: "an admin address with userinfo", patch: { admin: "user@evil.example:80" }, reason: /admin/ },
    { description: "an admin address with a scheme", patch: { admin: "http://evil.example:80" }, reason: /admin/ },
    { description: "an RTL override in the zone", patch: { zone: "eu\u202E1" }, reason: /zone/ },
    { description: "a missing ready flag", patch: { ready: undefined }, reason: /ready/ },
    { description: "a string revision", patch: { revision: "7" }, reason: /revision/ },
    { description: "an id other than the key's", patch: { id: "someone-else" }, reason: /does not match/ },
  ])("lists a node record with $description as invalid and leaves it out of nodes", async ({ patch, reason }) => {
    const store = new MemoryStore();
    const rec: Record<string, unknown> = { ...goodNode("bad", "127.0.0.1:1"), ...patch };
    for (const k of Object.keys(rec)) if (rec[k] === undefined) delete rec[k];
    await store.put(keys.node("bad"), encodeValue(rec));
    await store.put(keys.node("ok"), encodeValue(goodNode("ok", "10.0.0.2:9090")));
    const n = await nodeOn(store, { admin: { listen: "127.0.0.1:0", trustedPeers: ["10.0.0.0/24"] } });
    const r = await state(n);
    expect(r.status).toBe(200);
    expect(r.body.invalid.find((x) => x.key === keys.node("bad"))?.reason, JSON.stringify(r.body.invalid)).toMatch(reason);
    // n1 is the node itself (registered, trusted as its own origin).
    expect(r.body.nodes.map((x) => x.id).filter((id) => id !== "n1")).toEqual(["ok"]);
    expect(r.body.nodes.find((x) => x.id === "ok")).toMatchObject({ trusted: true });
    // Fixed by its writer: listed no more, and back in nodes.
    await store.put(keys.node("bad"), encodeValue(goodNode("bad", "192.0.2.1:9090")));
    await waitFor(() => n.reconciler.nodes.has("bad") && !n.reconciler.snapshot!.invalid.some((x) => x.key === keys.node("bad")));
    expect((await state(n)).body.nodes.find((x) => x.id === "bad")).toMatchObject({ trusted: false });
  });

  it("lists a bad heartbeat as invalid and keeps the last good one", () => {
    const r = new Reconciler(keys, new StatsRegistry(), { onSnapshot: () => {} }, createLogger("silent", {}));
    r.reset([{ key: keys.heartbeat, value: encodeValue({ leader: "n9", at: 5, term: "t" }), modRevision: 1, lease: "0" }], 1);
    expect(r.heartbeat?.leader).toBe("n9");
    r.events([{ type: "put", key: keys.heartbeat, value: encodeValue({ leader: "n9\nx", at: "soon", term: "t" }), modRevision: 2 }], 2);
    r.rebuild();
    expect(r.snapshot!.invalid.find((x) => x.key === keys.heartbeat)?.reason).toMatch(/heartbeat: .*leader/);
    expect(r.heartbeat?.leader).toBe("n9");
    r.stop();
  });
});
