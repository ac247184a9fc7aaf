// Status that scales (issue 19): `ballast status` asks every node for its /api/summary (a size that does
// not grow with the cluster) and only one node for the full /api/state, whose nodes[] does; an older
// node without /api/summary is still shown. Real etcd, real in-process nodes, the compiled CLI.
import http from "node:http";
import net, { type AddressInfo } from "node:net";
import { afterAll, describe, expect, it } from "vitest";
import { encodeValue } from "../../shared/codec.js";
import { KeySchema } from "../../shared/keys.js";
import { EtcdStore } from "../../node/control/etcd-store.js";
import type { BallastNode } from "../../node/node.js";
import { startTcpEcho } from "../helpers/backends.js";
import { ballastCli } from "../helpers/cli.js";
import type { EtcdProcess } from "../helpers/etcd.js";
import { startNode, stopAllNodes } from "../helpers/node.js";
import { useSharedEtcd } from "../helpers/suite.js";
import { waitFor } from "../helpers/wait.js";

let etcd: EtcdProcess;
useSharedEtcd((e) => {
  etcd = e;
});
afterAll(() => stopAllNodes());

/** The request paths each node's admin API served, from now on. */
function recordPaths(node: BallastNode): string[] {
  const paths: string[] = [];
  node.admin.server.on("request", (req: http.IncomingMessage) => paths.push(new URL(req.url ?? "/", "http://x").pathname));
  return paths;
}

async function get(admin: string, path: string, headers: Record<string, string> = {}): Promise<{ status: number; body: string; cors: string | null }> {
  const res = await fetch(`http://${admin}${path}`, { headers });
  return { status: res.status, body: await res.text(), cors: res.headers.get("access-control-allow-origin") };
}

async function seed(cluster: string): Promise<void> {
  const echo = await startTcpEcho("s");
  const client = new EtcdStore({ endpoints: [etcd.endpoint] });
  const keys = KeySchema.forCluster(cluster);
  await client.put(keys.service("web"), JSON.stringify({ listen: "127.0.0.1:0", health: { type: "none" } }));
  await client.put(keys.backend("web", "b1"), JSON.stringify({ address: "127.0.0.1", port: echo.port }));
  await client.close();
}

describe("status at scale (issue 19)", () => {
  it("ballast status asks every node for its summary and one node for the full state", { timeout: 120_000 }, async () => {
    const cluster = "status-scale";
    await seed(cluster);
    const nodes: BallastNode[] = [];
    for (const id of ["s1", "s2", "s3"]) nodes.push(await startNode({ node: { id }, cluster, etcd: { endpoints: [etcd.endpoint], leaseTtl: 2 } }));
    await waitFor(() => nodes.every((n) => n.reconciler.nodes.size === 3 && n.mode === "shared") && nodes.some((n) => n.health.status().isLeader), { timeoutMs: 30_000, message: "3 nodes registered, one leads" });
    const paths = nodes.map(recordPaths);

    const r = await ballastCli(() => etcd.endpoint, cluster)("-o", "json", "status");
    expect(r.code, r.stderr).toBe(0);
    const out = JSON.parse(r.stdout) as { nodes: Array<{ node: string; ready: unknown; revision: unknown; leader: string; mode: string }>; services: Array<{ name: string }> };
    expect(out.nodes.map((n) => n.node)).toEqual(["s1", "s2", "s3"]);
    for (const n of out.nodes) {
      expect(n.ready).toBe(true);
      expect(n.mode).toBe("shared");
      expect(typeof n.revision).toBe("number");
    }
    expect(out.nodes.filter((n) => n.leader === "yes")).toHaveLength(1);
    expect(out.services.map((s) => s.name)).toEqual(["web"]);
    // One full state in all, one summary from each node.
    expect(paths.flat().filter((p) => p === "/api/state")).toHaveLength(1);
    for (const p of paths) expect(p.filter((x) => x === "/api/summary")).toHaveLength(1);

    // The table says whose view the services are.
    const table = await ballastCli(() => etcd.endpoint, cluster)("status");
    expect(table.stdout).toMatch(/NODES[\s\S]*s1[\s\S]*s2[\s\S]*s3[\s\S]*SERVICES \(as node s\d sees them\)[\s\S]*web/);
  });

  it("/api/summary does not grow with the node count, while /api/state does; CORS as /api/state", { timeout: 60_000 }, async () => {
    const cluster = "status-size";
    await seed(cluster);
    const node = await startNode({ node: { id: "z1" }, cluster, etcd: { endpoints: [etcd.endpoint], leaseTtl: 2 } });
    await waitFor(() => node.reconciler.nodes.has("z1"), { message: "z1 registered" });
    const summary0 = await get(node.admin.address, "/api/summary");
    const state0 = await get(node.admin.address, "/api/state");
    expect(summary0.status).toBe(200);
    const s = JSON.parse(summary0.body) as Record<string, unknown> & { node: { id: string }; services: Array<{ name: string; backends: Array<{ id: string }> }> };
    expect(s.node.id).toBe("z1");
    expect(s.nodes).toBeUndefined();
    expect(s.services.map((x) => `${x.name}/${x.backends.map((b) => b.id).join()}`)).toEqual(["web/b1"]);

    // 200 more nodes' records (as peers would write them; no process behind them).
    const keys = KeySchema.forCluster(cluster);
    const client = new EtcdStore({ endpoints: [etcd.endpoint] });
    try {
      for (let i = 0; i < 200; i++) {
        const id = `peer-${i}`;
        const admin = `127.0.0.1:${20000 + i}`;
        await client.put(keys.node(id), encodeValue({ id, address: admin, admin, zone: "", version: "0", ready: true, draining: false, revision: 1, mode: "shared", startedAt: 1, updatedAt: 1 }));
      }
      await waitFor(() => node.reconciler.nodes.size === 201, { message: "201 node records seen" });
      const summary1 = await get(node.admin.address, "/api/summary");
      const state1 = await get(node.admin.address, "/api/state");
      expect(state1.body.length - state0.body.length).toBeGreaterThan(200 * 50);
      // Counters and revisions may gain a digit or two; 200 records would add kilobytes.
      expect(Math.abs(summary1.body.length - summary0.body.length)).toBeLessThan(64);

      // Another node's status page reads every peer's summary: the same CORS rule as /api/state.
      const peerOrigin = "http://127.0.0.1:20007";
      expect((await get(node.admin.address, "/api/summary", { origin: peerOrigin })).cors).toBe(peerOrigin);
      expect((await get(node.admin.address, "/api/summary", { origin: "http://evil.example" })).cors).toBeNull();
    } finally {
      await client.close();
    }
  });

  it("shows a node of an older version (no /api/summary) from its /api/state", { timeout: 60_000 }, async () => {
    const cluster = "status-old";
    const keys = KeySchema.forCluster(cluster);
    const asked: string[] = [];
    const state = { node: { id: "old", zone: "", version: "0.0.9", ready: true, draining: false, mode: "shared", startedAt: 1, admin: "" }, cluster, revision: 42, snapshotRevision: 42, store: { kind: "etcd", connected: true }, services: [], invalid: [], nodes: [], dns: null, health: { leader: "old", isLeader: true, mode: "shared" } };
    const old = http.createServer((req, res) => {
      asked.push(req.url ?? "");
      if (req.url === "/api/state") res.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify(state));
      else res.writeHead(404, { "content-type": "application/json" }).end('{"error":"no such endpoint"}');
    });
    await new Promise<void>((r) => old.listen(0, "127.0.0.1", r));
    const admin = `127.0.0.1:${(old.address() as AddressInfo).port}`;
    const client = new EtcdStore({ endpoints: [etcd.endpoint] });
    try {
      await client.put(keys.node("old"), encodeValue({ id: "old", address: admin, admin, zone: "", version: "0.0.9", ready: true, draining: false, revision: 1, mode: "shared", startedAt: 1, updatedAt: 1 }));
      const r = await ballastCli(() => etcd.endpoint, cluster)("-o", "json", "status");
      expect(r.code, r.stderr).toBe(0);
      const out = JSON.parse(r.stdout) as { nodes: Array<{ node: string; ready: unknown; revision: unknown; leader: string }> };
      expect(out.nodes).toEqual([expect.objectContaining({ node: "old", ready: true, revision: 42, leader: "yes" })]);
      expect(asked).toContain("/api/summary");
    } finally {
      await client.close();
      await new Promise((r) => old.close(r));
    }
  });

  it("100 nodes that never answer: each row says so, and status is not cut short as if etcd had not answered", { timeout: 90_000 }, async () => {
    // 100 node records whose admin address accepts connections and never answers: 4 rounds of 32
    // summaries at 3 s each, more than the 10 s the CLI allows an etcd command (which said "etcd did
    // not answer" when the nodes were the slow part).
    const cluster = "status-silent";
    const keys = KeySchema.forCluster(cluster);
    const sockets = new Set<net.Socket>();
    const silent = net.createServer((s) => {
      sockets.add(s);
      s.on("close", () => sockets.delete(s));
    });
    await new Promise<void>((r) => silent.listen(0, "127.0.0.1", r));
    const admin = `127.0.0.1:${(silent.address() as AddressInfo).port}`;
    const client = new EtcdStore({ endpoints: [etcd.endpoint] });
    try {
      const ids = Array.from({ length: 100 }, (_, i) => `mute-${String(i).padStart(3, "0")}`);
      for (const id of ids) await client.put(keys.node(id), encodeValue({ id, address: admin, admin, zone: "", version: "0", ready: true, draining: false, revision: 1, mode: "shared", startedAt: 1, updatedAt: 1 }));
      const r = await ballastCli(() => etcd.endpoint, cluster)("-o", "json", "status");
      expect(r.stderr).toBe("");
      expect(r.code).toBe(0);
      const out = JSON.parse(r.stdout) as { nodes: Array<{ node: string; ready: unknown }> };
      expect(out.nodes.map((n) => n.node)).toEqual(ids);
      for (const n of out.nodes) expect(n.ready).toBe("no answer within 3 s");
    } finally {
      await client.close();
      for (const s of sockets) s.destroy();
      await new Promise((r) => silent.close(r));
    }
  });
});
