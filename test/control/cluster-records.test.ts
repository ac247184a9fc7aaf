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
