// Affinity shared by the cluster with replication "mesh", against a real etcd and three in-process nodes: clients keep their
// backend after the backend set changed and the node that made their entry died; entries expire from
// every table and from etcd; a lost backend's clients move once and stay; concurrent creation
// converges; the cap evicts; UDP flows stick too.
import dgram from "node:dgram";
import { describe, expect, it } from "vitest";
import { hashString } from "../../node/lb/hash.js";
import type { ServiceState, Target } from "../../node/model/snapshot.js";
import type { BallastNode } from "../../node/node.js";
import { explainRoute } from "../../node/state.js";
import { startTcpEcho, startUdpEcho, tcpExchange } from "../helpers/backends.js";
import type { EtcdProcess } from "../helpers/etcd.js";
import { getJson, portOf, spawnNode, startNode } from "../helpers/node.js";
import { useSharedEtcd } from "../helpers/suite.js";
import { waitFor } from "../helpers/wait.js";

let etcd: EtcdProcess;
let cluster = 0;
useSharedEtcd((e) => {
  etcd = e;
});

/** Each test uses its own cluster name (its own key prefix) on the shared etcd. */
function freshCluster() {
  const name = `aff${++cluster}`;
  const p = `/ballast/${name}/`;
  return {
    prefix: p,
    putService: (s: string, extra: Record<string, unknown> = {}) =>
      etcd.put(`${p}services/${s}`, JSON.stringify({ listen: "127.0.0.1:0", health: { type: "none" }, affinity: { mode: "source-ip", ttl: "30s" }, ...extra })),
    putBackend: (s: string, id: string, port: number, extra: Record<string, unknown> = {}) =>
      etcd.put(`${p}backends/${s}/${id}`, JSON.stringify({ address: "127.0.0.1", port, ...extra })),
    // Replication "mesh" (every node holds every entry), which these tests count on; the default
    // ("exception") has its own tests in exception.test.ts.
    config: (id: string, extra: { affinity?: Record<string, unknown> } & Record<string, unknown> = {}) => ({
      node: { id },
      cluster: name,
      etcd: { endpoints: [etcd.endpoint], leaseTtl: 2 },
      ...extra,
      affinity: { replication: "mesh", ...extra.affinity },
    }),
    affinityKeys: async () => (await etcd.etcdctl("get", "--prefix", "--keys-only", `${p}affinity/`)).split("\n").filter((l) => l !== ""),
  };
}

async function startNodes(c: ReturnType<typeof freshCluster>, ids: string[], extra: Record<string, unknown> = {}): Promise<BallastNode[]> {
  return Promise.all(ids.map((id) => startNode(c.config(id, extra))));
}

async function applied(nodes: BallastNode[], revision: number): Promise<void> {
  for (const n of nodes) await waitFor(() => n.reconciler.appliedRevision >= revision, { message: `${n.id} applies revision ${revision}` });
}

function svcOf(n: BallastNode, name: string): ServiceState {
  const s = n.reconciler.snapshot?.services.get(name);
  if (!s) throw new Error(`${n.id} has no service ${name}`);
  return s;
}

/** The hot path's decision (and entry) for a client, as a connection from `ip` would make it. */
function route(n: BallastNode, service: string, ip: string, exclude: ((t: Target) => boolean) | null = null): string | null {
  return n.plane.router.route(svcOf(n, service), ip, 40000, exclude as never, Date.now()).target?.id ?? null;
}

/** Where the service's algorithm alone (no affinity) would send the client. */
function maglevPick(n: BallastNode, service: string, ip: string): string {
  const s = svcOf(n, service);
  return (s.picker.pick(hashString(ip), null) as Target).id;
}

function entriesOf(n: BallastNode, service: string): number {
  return n.affinity.entries.table(service)?.size ?? 0;
}

function entryBackend(n: BallastNode, service: string, ip: string): string | null {
  const e = n.affinity.entries;
  const t = e.table(service);
  const slot = t === undefined ? -1 : e.find(t, ip);
  return slot < 0 ? null : e.backendName(slot);
}

// Valid addresses only (x.y.z.1-254): merges skip client "addresses" that are not IP addresses.
const ips = (count: number, prefix = "10.20") => Array.from({ length: count }, (_, i) => `${prefix}.${Math.floor(i / 254)}.${(i % 254) + 1}`);

describe("affinity across the cluster", () => {
  it("a client keeps its backend through a new backend and the death of the node that made its entry (TCP)", async () => {
    const c = freshCluster();
    const [a, b, x] = await Promise.all([startTcpEcho("a"), startTcpEcho("b"), startTcpEcho("c")]);
    await c.putService("web");
    await c.putBackend("web", "a", a.port);
    const rev = await c.putBackend("web", "b", b.port);
    const [na, nb, nc] = await startNodes(c, ["na", "nb", "nc"]);
    await applied([na, nb, nc], rev);
    for (const n of [na, nb, nc]) await waitFor(() => n.plane.listenerOf("web")?.boundPort !== undefined && n.plane.listenerOf("web")!.boundPort > 0);

    // Twenty clients, each its own source address, connect through node A.
    const clients = Array.from({ length: 20 }, (_, i) => `127.0.0.${10 + i}`);
    const first = new Map<string, string>();
    for (const ip of clients) first.set(ip, (await tcpExchange(portOf(na, "web"), "hi", { localAddress: ip })).split(":")[0]);
    for (const n of [nb, nc]) await waitFor(() => entriesOf(n, "web") === clients.length, { message: `${n.id} has the entries` });

    // A third backend: Maglev alone now sends some of these clients elsewhere.
    const added = await c.putBackend("web", "c", x.port);
    await applied([na, nb, nc], added);
    const movedByMaglev = clients.filter((ip) => maglevPick(nb, "web", ip) !== first.get(ip));
    expect(movedByMaglev.length).toBeGreaterThan(0);

    await na.close();
    for (const ip of clients) {
      for (const n of [nb, nc]) {
        const reply = await tcpExchange(portOf(n, "web"), "again", { localAddress: ip });
        expect(reply, `${ip} through ${n.id}`).toBe(`${first.get(ip)}:again`);
      }
    }
    const explained = explainRoute(nb, "web", movedByMaglev[0], 0).body as { backend: { id: string }; reason: string };
    expect(explained.backend.id).toBe(first.get(movedByMaglev[0]));
    expect(explained.reason).toMatch(/^affinity \(from node na, last used \d+ s ago\)$/);
  });

  it("1000 clients: every one with an entry keeps its backend after a backend is added and its node is gone", async () => {
    const c = freshCluster();
    await c.putService("web");
    for (const id of ["a", "b", "c"]) await c.putBackend("web", id, 10000 + id.charCodeAt(0));
    const rev = await etcd.revision();
    const [na, nb, nc] = await startNodes(c, ["na", "nb", "nc"]);
    await applied([na, nb, nc], rev);

    const clients = ips(1000);
    const first = new Map(clients.map((ip) => [ip, route(na, "web", ip)!]));
    for (const n of [nb, nc]) await waitFor(() => entriesOf(n, "web") === 1000, { message: `${n.id} has 1000 entries` });

    const added = await c.putBackend("web", "d", 10100);
    await applied([nb, nc], added);
    const movedByMaglev = clients.filter((ip) => maglevPick(nb, "web", ip) !== first.get(ip)).length;
    expect(movedByMaglev).toBeGreaterThan(100);

    const written = await na.metrics.registry.getSingleMetric("ballast_affinity_entries_written_total")!.get();
    expect(written.values[0].value).toBe(1000);
    await na.close();
    for (const n of [nb, nc]) {
      const kept = clients.filter((ip) => route(n, "web", ip) === first.get(ip)).length;
      expect(kept, `clients keeping their backend through ${n.id}`).toBe(1000);
    }
    const state = (await (await fetch(`http://${nb.admin.address}/api/state`)).json()) as { services: Array<{ name: string; affinity: { entries: number } }> };
    expect(state.services.find((s) => s.name === "web")!.affinity.entries).toBe(1000);
    const text = await nb.metrics.registry.metrics();
    expect(text).toMatch(/ballast_affinity_hits_total\{service="web",node="nb"\} 1000/);
    expect(text).toMatch(/ballast_affinity_entries\{service="web",node="nb"\} 1000/);
    expect(text).toMatch(/ballast_affinity_replication_lag_seconds_count\{node="nb"\} [1-9]/);
  });

  it("entries outlive a node that crashed (SIGKILL): they stay in etcd and a node joining later lists them", async () => {
    const c = freshCluster();
    const [a, b] = await Promise.all([startTcpEcho("a"), startTcpEcho("b")]);
    await c.putService("web");
    await c.putBackend("web", "a", a.port);
    const rev = await c.putBackend("web", "b", b.port);
    const writer = await spawnNode(c.config("crash"));
    let port = 0;
    await waitFor(async () => {
      const st = await getJson<{ revision: number; services: Array<{ name: string; boundPort: number }> }>(writer.admin, "/api/state");
      port = st.services.find((s) => s.name === "web")?.boundPort ?? 0;
      return st.revision >= rev && port > 0;
    }, { timeoutMs: 15_000, message: "the spawned node serves web" });
    const clients = Array.from({ length: 40 }, (_, i) => `127.0.1.${10 + i}`);
    const first = new Map<string, string>();
    for (const ip of clients) first.set(ip, (await tcpExchange(port, "hi", { localAddress: ip })).split(":")[0]);
    await waitFor(async () => /ballast_affinity_entries_written_total\{[^}]*\} 40\b/.test(await (await fetch(`http://${writer.admin}/metrics`)).text()), {
      message: "the writer has written every entry",
    });
    writer.kill("SIGKILL");
    await writer.exited;

    const added = await c.putBackend("web", "c", 10100);
    const late = await startNode(c.config("late"));
    await applied([late], added);
    await waitFor(() => entriesOf(late, "web") === clients.length, { message: "the joining node lists the dead node's entries" });
    for (const ip of clients) expect(route(late, "web", ip), ip).toBe(first.get(ip));
    expect(explainRoute(late, "web", clients[0], 0).body).toMatchObject({ reason: expect.stringMatching(/^affinity \(from node crash,/) });
  });

  // Known gap in the store, not in the table: EtcdStore.close() (and MemoryStore.close()) revoke every
  // lease they granted, including the TTL-only leases of affinity batches, so a graceful stop deletes the
  // node's entries from etcd (the other nodes keep theirs locally; a node joining later does not get
  // them). Fix: close() revokes only kept-alive leases. Flip to it() once the store does.
  it("entries outlive a node that stopped gracefully", async () => {
    const c = freshCluster();
    await c.putService("web");
    const rev = await c.putBackend("web", "a", 10001);
    const [na] = await startNodes(c, ["na"]);
    await applied([na], rev);
    for (const ip of ips(20)) route(na, "web", ip);
    await waitFor(async () => (await c.affinityKeys()).length > 0);
    await na.close();
    expect((await c.affinityKeys()).length).toBeGreaterThan(0);
  });

  it("entries expire TTL (+ grace) after their last use: gone from every table and from etcd", async () => {
    const c = freshCluster();
    await c.putService("web", { affinity: { mode: "source-ip", ttl: "2s" } });
    const rev = await c.putBackend("web", "a", 10001);
    const nodes = await startNodes(c, ["na", "nb", "nc"]);
    await applied(nodes, rev);
    // The last use is the routing itself (measured before it ends): replication may take a while on a loaded machine.
    const used = Date.now();
    for (const ip of ips(50)) route(nodes[0], "web", ip);
    for (const n of nodes) await waitFor(() => entriesOf(n, "web") === 50, { message: `${n.id} has the entries` });
    expect((await c.affinityKeys()).length).toBeGreaterThan(0);
    for (const n of nodes) await waitFor(() => entriesOf(n, "web") === 0, { timeoutMs: 8_000, message: `${n.id} expires the entries` });
    // Not before TTL: entries live at least TTL after their last use.
    expect(Date.now() - used).toBeGreaterThanOrEqual(2_000);
    const state = nodes[1].admin.address;
    const res = (await (await fetch(`http://${state}/api/state`)).json()) as { services: Array<{ name: string; affinity: { entries: number } }> };
    expect(res.services.find((s) => s.name === "web")!.affinity.entries).toBe(0);
    await waitFor(async () => (await c.affinityKeys()).length === 0, { timeoutMs: 10_000, intervalMs: 250, message: "the batches leave etcd with their lease" });
  });

  it("uses on another node keep an entry alive everywhere (refreshes replicate at most every TTL/4)", async () => {
    const c = freshCluster();
    await c.putService("web", { affinity: { mode: "source-ip", ttl: "2s" } });
    const rev = await c.putBackend("web", "a", 10001);
    const nodes = await startNodes(c, ["na", "nb", "nc"]);
    const [na, nb, nc] = nodes;
    await applied(nodes, rev);
    const clients = ips(10);
    for (const ip of clients) route(na, "web", ip);
    for (const n of nodes) await waitFor(() => entriesOf(n, "web") === 10);
    const started = Date.now();
    const batches0 = nb.affinity.replicator!.batches;
    // The clients keep coming, through node B only, for twice the TTL.
    while (Date.now() - started < 4_000) {
      for (const ip of clients) route(nb, "web", ip);
      await new Promise((r) => setTimeout(r, 100));
    }
    for (const n of [na, nc]) expect(entriesOf(n, "web"), `${n.id} still holds the entries`).toBe(10);
    // 40 uses per client in 4 s (40 rounds of all 10 clients), but refreshes only every TTL/4 (500 ms):
    // about 8 batches, not 40. The clients' refresh times follow when node B learned each entry, so
    // their refreshes can fall into two batches per window: up to ~16 (15 seen in a full-suite run at
    // CI's load). Throttling per use would make one batch per round: 40.
    const batches = nb.affinity.replicator!.batches - batches0;
    expect(batches).toBeGreaterThanOrEqual(4);
    expect(batches).toBeLessThanOrEqual(20);
  });

  it("a node that made a losing entry without knowing the winner is corrected by the nodes that hold it", async () => {
    const c = freshCluster();
    await c.putService("web");
    await c.putBackend("web", "a", 10001);
    const rev = await c.putBackend("web", "b", 10002);
    const [na, nb] = await startNodes(c, ["na", "nb"]);
    await applied([na, nb], rev);
    const clients = ips(50);
    for (const ip of clients) route(na, "web", ip, (t) => t.id === "b");
    await waitFor(() => entriesOf(nb, "web") === 50);
    // The batches vanish from etcd (deletes are not applied to tables: A and B keep their entries).
    await etcd.etcdctl("del", "--prefix", `${c.prefix}affinity/`);
    await new Promise((r) => setTimeout(r, 300));
    expect(entriesOf(nb, "web")).toBe(50);
    // A node joining now lists nothing and picks differently for these clients.
    const nc = await startNode(c.config("nc"));
    await applied([nc], rev);
    for (const ip of clients) expect(route(nc, "web", ip, (t) => t.id === "a")).toBe("b");
    await waitFor(() => clients.every((ip) => entryBackend(nc, "web", ip) === "a"), { message: "the new node adopts the older entries" });
    for (const n of [na, nb]) for (const ip of clients) expect(entryBackend(n, "web", ip)).toBe("a");
  });

  it("a backend that goes down: its clients move once and stay on their new backend from every node, even after it returns", async () => {
    const c = freshCluster();
    await c.putService("web");
    for (const id of ["a", "b", "c"]) await c.putBackend("web", id, 10000 + id.charCodeAt(0));
    const rev = await etcd.revision();
    const nodes = await startNodes(c, ["na", "nb", "nc"]);
    const [na, nb, nc] = nodes;
    await applied(nodes, rev);
    const clients = ips(300);
    const first = new Map(clients.map((ip) => [ip, route(na, "web", ip)!]));
    for (const n of [nb, nc]) await waitFor(() => entriesOf(n, "web") === 300);
    const onA = clients.filter((ip) => first.get(ip) === "a");
    expect(onA.length).toBeGreaterThan(30);

    const down = await c.putBackend("web", "a", 10000 + 97, { state: "disabled" });
    await applied(nodes, down);
    // The clients come back through node B: they move off a, once.
    const moved = new Map(onA.map((ip) => [ip, route(nb, "web", ip)!]));
    for (const b of moved.values()) expect(b).not.toBe("a");
    // Everyone else keeps its backend.
    for (const ip of clients) if (!onA.includes(ip)) expect(route(nb, "web", ip)).toBe(first.get(ip));
    for (const n of [na, nc]) await waitFor(() => onA.every((ip) => entryBackend(n, "web", ip) === moved.get(ip)), { message: `${n.id} merges the new picks` });

    const back = await c.putBackend("web", "a", 10000 + 97, { state: "active" });
    await applied(nodes, back);
    for (const n of nodes) for (const ip of onA) expect(route(n, "web", ip), `${ip} through ${n.id}`).toBe(moved.get(ip));
  });

  it("two nodes creating entries for the same clients at once converge on one winner on every node", async () => {
    const c = freshCluster();
    await c.putService("web");
    await c.putBackend("web", "a", 10001);
    const rev = await c.putBackend("web", "b", 10002);
    const nodes = await startNodes(c, ["na", "nb", "nc"]);
    const [na, nb, nc] = nodes;
    await applied(nodes, rev);
    const clients = ips(200);
    // Different views of the same moment (a connect failure on one side): node A cannot use b, node B cannot use a.
    const pickA = clients.map((ip) => route(na, "web", ip, (t) => t.id === "b"));
    const pickB = clients.map((ip) => route(nb, "web", ip, (t) => t.id === "a"));
    expect(pickA.every((p) => p === "a") && pickB.every((p) => p === "b")).toBe(true);
    await waitFor(
      () => clients.every((ip) => nodes.every((n) => entryBackend(n, "web", ip) !== null && entryBackend(n, "web", ip) === entryBackend(na, "web", ip))),
      { message: "every node holds the same backend for every client" },
    );
    // Earliest created wins (A's came first, or in the same millisecond with the lower node id).
    for (const ip of clients) expect(entryBackend(nc, "web", ip)).toBe("a");
    for (const n of nodes) for (const ip of clients.slice(0, 20)) expect(route(n, "web", ip)).toBe("a");
    // Settled: nothing flips back once every node has seen both sides.
    await new Promise((r) => setTimeout(r, 400));
    expect(clients.every((ip) => nodes.every((n) => entryBackend(n, "web", ip) === "a"))).toBe(true);
  });

  it("evicts the least recently used entries at affinity.maxEntries, and counts them", async () => {
    const c = freshCluster();
    await c.putService("web");
    const rev = await c.putBackend("web", "a", 10001);
    const [small] = await startNodes(c, ["small"], { affinity: { maxEntries: 100 } });
    const big = await startNode(c.config("big"));
    await applied([small, big], rev);
    const clients = ips(150);
    for (const ip of clients) route(small, "web", ip);
    expect(entriesOf(small, "web")).toBe(100);
    expect(small.affinity.entries.evictions).toBe(50);
    expect(entryBackend(small, "web", clients[0])).toBeNull();
    expect(entryBackend(small, "web", clients[149])).toBe("a");
    const text = await small.metrics.registry.metrics();
    expect(text).toMatch(/ballast_affinity_evictions_total\{node="small"\} 50/);
    // Only what is still in the table is written: the other node gets the 100 survivors.
    await waitFor(() => entriesOf(big, "web") === 100, { message: "the other node receives the entries" });
    expect(entryBackend(big, "web", clients[0])).toBeNull();
  });

  it("UDP flows stick too", async () => {
    const c = freshCluster();
    const [a, b, x] = await Promise.all([startUdpEcho("a"), startUdpEcho("b"), startUdpEcho("c")]);
    await c.putService("dns", { protocol: "udp" });
    await c.putBackend("dns", "a", a.port);
    const rev = await c.putBackend("dns", "b", b.port);
    const [na, nb, nc] = await startNodes(c, ["na", "nb", "nc"]);
    await applied([na, nb, nc], rev);
    for (const n of [na, nb, nc]) await waitFor(() => (n.plane.listenerOf("dns")?.boundPort ?? 0) > 0);

    const clients = Array.from({ length: 12 }, (_, i) => `127.0.0.${60 + i}`);
    const first = new Map<string, string>();
    for (const ip of clients) first.set(ip, (await udpFrom(ip, portOf(na, "dns"), "q")).split(":")[0]);
    for (const n of [nb, nc]) await waitFor(() => entriesOf(n, "dns") === clients.length, { message: `${n.id} has the UDP entries` });
    const added = await c.putBackend("dns", "c", x.port);
    await applied([na, nb, nc], added);
    expect(clients.some((ip) => maglevPick(nb, "dns", ip) !== first.get(ip))).toBe(true);
    await na.close();
    for (const ip of clients) {
      for (const n of [nb, nc]) expect(await udpFrom(ip, portOf(n, "dns"), "q2"), `${ip} through ${n.id}`).toBe(`${first.get(ip)}:q2`);
    }
  });
});

/** One datagram from a fresh socket bound to `ip` (a new flow), and its reply. */
function udpFrom(ip: string, port: number, payload: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = dgram.createSocket("udp4");
    const timer = setTimeout(() => {
      s.close();
      reject(new Error(`no UDP reply for ${ip}`));
    }, 3000);
    s.on("message", (msg) => {
      clearTimeout(timer);
      s.close();
      resolve(msg.toString());
    });
    s.bind(0, ip, () => s.send(payload, port, "127.0.0.1"));
  });
}
