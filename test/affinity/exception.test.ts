// Replication "exception" (issue 19), against a real etcd and in-process nodes: a node holds the
// clients it saw and the client records of the shards it owns, not every entry; a client keeps its
// backend from any node after the node that saw it died and the backend set then changed (the shard
// owners write the exceptions); overridden picks reach every node; malformed record keys are skipped.
import { describe, expect, it } from "vitest";
import { ownedShards, recordsPrefix, shardOf } from "../../node/affinity/shards.js";
import { holdMs } from "../../node/affinity/table.js";
import { hashString } from "../../node/lb/hash.js";
import type { ServiceState, Target } from "../../node/model/snapshot.js";
import { explainRoute } from "../../node/state.js";
import type { RouteAnswer } from "../../shared/api.js";
import type { BallastNode } from "../../node/node.js";
import { KeySchema } from "../../shared/keys.js";
import { encodeBatch } from "../../node/affinity/batch.js";
import { startTcpEcho, tcpExchange } from "../helpers/backends.js";
import type { EtcdProcess } from "../helpers/etcd.js";
import { getJson, portOf, spawnNode, startNode } from "../helpers/node.js";
import { useSharedEtcd } from "../helpers/suite.js";
import { waitFor } from "../helpers/wait.js";

let etcd: EtcdProcess;
let cluster = 0;
useSharedEtcd((e) => {
  etcd = e;
});

function freshCluster() {
  const name = `affx${++cluster}-${process.pid}`;
  const p = `/ballast/${name}/`;
  return {
    name,
    prefix: p,
    keys: new KeySchema(p),
    putService: (s: string, extra: Record<string, unknown> = {}) =>
      etcd.put(`${p}services/${s}`, JSON.stringify({ listen: "127.0.0.1:0", health: { type: "none" }, affinity: { mode: "source-ip", ttl: "30s" }, ...extra })),
    putBackend: (s: string, id: string, port: number) => etcd.put(`${p}backends/${s}/${id}`, JSON.stringify({ address: "127.0.0.1", port })),
    config: (id: string, leaseTtl = 2) => ({ node: { id }, cluster: name, etcd: { endpoints: [etcd.endpoint], leaseTtl }, affinity: { replication: "exception" } }),
  };
}

async function applied(nodes: BallastNode[], revision: number): Promise<void> {
  for (const n of nodes) await waitFor(() => n.reconciler.appliedRevision >= revision, { message: `${n.id} applies revision ${revision}` });
}

function svcOf(n: BallastNode, name: string): ServiceState {
  const s = n.reconciler.snapshot?.services.get(name);
  if (!s) throw new Error(`${n.id} has no service ${name}`);
  return s;
}

function route(n: BallastNode, service: string, ip: string, exclude: ((t: Target) => boolean) | null = null): string | null {
  return n.plane.router.route(svcOf(n, service), ip, 40000, exclude as never, Date.now()).target?.id ?? null;
}

function maglevPick(n: BallastNode, service: string, ip: string): string {
  return (svcOf(n, service).picker.peek(hashString(ip), null) as Target).id;
}

function entryBackend(n: BallastNode, service: string, ip: string): string | null {
  const e = n.affinity.entries;
  const t = e.table(service);
  const slot = t === undefined ? -1 : e.find(t, ip);
  return slot < 0 ? null : e.backendName(slot);
}

/** Every node has taken up the shards rendezvous gives it among `ids`. */
async function shardsSettled(nodes: BallastNode[], ids: string[], timeoutMs = 10_000): Promise<void> {
  for (const n of nodes) {
    const want = [...ownedShards(n.id, ids)].sort((a, b) => a - b);
    await waitFor(() => JSON.stringify(n.affinity.ownedShards) === JSON.stringify(want), { timeoutMs, message: `${n.id} owns its shards among ${ids}` });
  }
}

const ips = (count: number, prefix = "10.31") => Array.from({ length: count }, (_, i) => `${prefix}.${Math.floor(i / 254)}.${(i % 254) + 1}`);

describe("affinity replication: exception", () => {
  it("a client keeps its backend from any node after the node that saw it died and the backend set then changed (TCP)", async () => {
    const c = freshCluster();
    const [a, b, x] = await Promise.all([startTcpEcho("a"), startTcpEcho("b"), startTcpEcho("c")]);
    await c.putService("web");
    await c.putBackend("web", "a", a.port);
    const rev = await c.putBackend("web", "b", b.port);
    const nodes = await Promise.all(["na", "nb", "nc"].map((id) => startNode(c.config(id))));
    const [na, nb, nc] = nodes;
    await applied(nodes, rev);
    for (const n of nodes) await waitFor(() => (n.plane.listenerOf("web")?.boundPort ?? 0) > 0);
    await shardsSettled(nodes, ["na", "nb", "nc"]);

    const clients = Array.from({ length: 24 }, (_, i) => `127.0.0.${10 + i}`);
    const first = new Map<string, string>();
    for (const ip of clients) first.set(ip, (await tcpExchange(portOf(na, "web"), "hi", { localAddress: ip })).split(":")[0]);
    // Each client's record reaches its shard's owners, and only them: a picked backend that is the
    // table's pick is no exception, so no other node is sent it.
    for (const n of [nb, nc]) {
      const owned = new Set(n.affinity.ownedShards);
      const mine = clients.filter((ip) => owned.has(shardOf(ip)));
      await waitFor(() => mine.every((ip) => entryBackend(n, "web", ip) === first.get(ip)), { message: `${n.id} holds the records of its shards` });
      // Not every client: only its shards' records (a shard held for a moment while the ready nodes
      // settled on a loaded machine may add one; records of a shard let go stay until their TTL).
      expect(mine.length).toBeLessThan(clients.length);
      expect(n.affinity.entries.table("web")?.size ?? 0, `${n.id} holds its shards' records, not every client`).toBeLessThan(clients.length);
    }
    expect(na.affinity.replicator!.exceptionsWritten).toBe(0);

    // The node that saw them dies; then a third backend moves some clients' table pick.
    await na.close();
    await shardsSettled([nb, nc], ["nb", "nc"]);
    const added = await c.putBackend("web", "c", x.port);
    await applied([nb, nc], added);
    const moved = clients.filter((ip) => maglevPick(nb, "web", ip) !== first.get(ip));
    expect(moved.length).toBeGreaterThan(0);
    // At once (the previous table holds for clients without an entry) and after the owners'
    // exceptions arrived (every node holds the moved clients' entries), every client keeps its backend.
    for (const ip of clients) for (const n of [nb, nc]) expect(route(n, "web", ip), `${ip} through ${n.id} right after the change`).toBe(first.get(ip));
    for (const n of [nb, nc]) await waitFor(() => moved.every((ip) => entryBackend(n, "web", ip) === first.get(ip)), { message: `${n.id} has the exceptions of the moved clients` });
    for (const ip of clients) {
      for (const n of [nb, nc]) {
        const reply = await tcpExchange(portOf(n, "web"), "again", { localAddress: ip });
        expect(reply, `${ip} through ${n.id}`).toBe(`${first.get(ip)}:again`);
      }
    }
    // A node joining now (no hold, never saw these clients) learns the exceptions from etcd.
    const nd = await startNode(c.config("nd"));
    await applied([nd], added);
    await waitFor(() => moved.every((ip) => entryBackend(nd, "web", ip) === first.get(ip)), { message: "a new node lists the exceptions" });
    for (const ip of clients) expect(route(nd, "web", ip), `${ip} through nd`).toBe(first.get(ip));
  });

  it("per node: the clients it saw, its shards' records and the exceptions; an overridden pick reaches every node", async () => {
    const c = freshCluster();
    await c.putService("web");
    for (const id of ["a", "b", "c"]) await c.putBackend("web", id, 10000 + id.charCodeAt(0));
    const rev = await etcd.revision();
    const ids = ["n1", "n2", "n3", "n4"];
    const nodes = await Promise.all(ids.map((id) => startNode(c.config(id))));
    await applied(nodes, rev);
    await shardsSettled(nodes, ids);

    // 100 clients seen by each node, all on the table's pick.
    const seen = new Map(nodes.map((n, i) => [n, ips(100, `10.${40 + i}`)]));
    for (const [n, list] of seen) for (const ip of list) route(n, "web", ip);
    const all = [...seen.values()].flat();
    for (const n of nodes) {
      const owned = new Set(n.affinity.ownedShards);
      const want = new Set([...seen.get(n)!, ...all.filter((ip) => owned.has(shardOf(ip)))]);
      await waitFor(() => [...want].every((ip) => entryBackend(n, "web", ip) !== null), { message: `${n.id} holds its ${want.size} entries` });
      expect(want.size).toBeLessThan(all.length);
      expect(n.affinity.entries.table("web")?.size ?? 0, `${n.id} holds about its own clients and its shards' records`).toBeLessThan(all.length);
    }

    // An override (the table's pick excluded, e.g. full): an exception every node gets.
    const ip = "10.99.0.7";
    const pick = maglevPick(nodes[0], "web", ip);
    const other = route(nodes[0], "web", ip, (t) => t.id === pick);
    expect(other).not.toBe(pick);
    for (const n of nodes) await waitFor(() => entryBackend(n, "web", ip) === other, { message: `${n.id} has the overridden pick` });
    for (const n of nodes.slice(1)) expect(route(n, "web", ip)).toBe(other);
  });

  it("a backend that goes down: its clients move once and stay on their new backend from every node, also after it returns and the hold ended", async () => {
    const c = freshCluster();
    await c.putService("web");
    for (const id of ["a", "b", "c"]) await c.putBackend("web", id, 10000 + id.charCodeAt(0));
    const rev = await etcd.revision();
    const ids = ["na", "nb", "nc", "nd"];
    const nodes = await Promise.all(ids.map((id) => startNode(c.config(id))));
    const [na, nb] = nodes;
    await applied(nodes, rev);
    await shardsSettled(nodes, ids);
    const clients = ips(300, "10.70");
    const first = new Map(clients.map((ip) => [ip, route(na, "web", ip)!]));
    // Clients of a: most come back while a is down (they move), ten do not (their entries name a).
    const onA = clients.filter((ip) => first.get(ip) === "a").slice(10);
    const away = clients.filter((ip) => first.get(ip) === "a").slice(0, 10);
    expect(onA.length).toBeGreaterThan(30);
    // Every client's record reached its shard's owners.
    for (const n of nodes.slice(1)) {
      const owned = new Set(n.affinity.ownedShards);
      await waitFor(() => clients.filter((ip) => owned.has(shardOf(ip))).every((ip) => entryBackend(n, "web", ip) === first.get(ip)), { message: `${n.id} holds its shards' records` });
    }

    const down = await etcd.put(`${c.prefix}backends/web/a`, JSON.stringify({ address: "127.0.0.1", port: 10000 + 97, state: "disabled" }));
    await applied(nodes, down);
    const downHeldUntil = Date.now() + holdMs(na.config.affinity.batchInterval, na.config.etcd?.leaseTtl);
    // The clients come back through node B (which saw none of them): they move off a, once.
    const moved = new Map(onA.map((ip) => [ip, route(nb, "web", ip)!]));
    for (const b of moved.values()) expect(b).not.toBe("a");
    for (const ip of clients) if (!onA.includes(ip) && !away.includes(ip)) expect(route(nb, "web", ip), `${ip} keeps its backend`).toBe(first.get(ip));
    // B's new bindings are records (the new table picks them): they reach the shards' owners.
    for (const n of nodes) {
      const owned = new Set(n.affinity.ownedShards);
      await waitFor(() => onA.filter((ip) => owned.has(shardOf(ip))).every((ip) => entryBackend(n, "web", ip) === moved.get(ip)), { message: `${n.id} merges the new picks of its shards` });
    }

    // a returns once that hold is over (within it, the hold would still route by the table from
    // before a left): the table picks a again for those clients; the owners write exceptions keeping
    // them where they moved, and for the clients that stayed away (the hold now routes by the table
    // without a).
    await waitFor(() => Date.now() > downHeldUntil, { timeoutMs: 30_000, message: "the hold after a left ends" });
    const back = await etcd.put(`${c.prefix}backends/web/a`, JSON.stringify({ address: "127.0.0.1", port: 10000 + 97, state: "active" }));
    await applied(nodes, back);
    const heldUntil = Date.now() + holdMs(na.config.affinity.batchInterval, na.config.etcd?.leaseTtl);
    // Until the owners' exceptions arrive, a node routes by what it holds: na, which saw these clients
    // but owns only some of their shards, still holds their first binding (docs/keys.md: the bound).
    for (const n of nodes) await waitFor(() => onA.every((ip) => entryBackend(n, "web", ip) === moved.get(ip)), { message: `${n.id} has the exceptions of the clients that moved off a` });
    for (const n of nodes) for (const ip of onA) expect(route(n, "web", ip), `${ip} through ${n.id} once the exceptions arrived`).toBe(moved.get(ip));
    // The clients that stayed away are back on a: during the hold, nodes without an entry would route
    // them by the previous table (not a), so the owners send their entries to every node too.
    for (const n of nodes) await waitFor(() => away.every((ip) => entryBackend(n, "web", ip) === "a"), { message: `${n.id} holds the entries of a's clients that stayed away` });
    for (const n of nodes) for (const ip of away) expect((explainRoute(n, "web", ip, 0).body as RouteAnswer).backend?.id, `${ip} (stayed away) through ${n.id}`).toBe("a");
    // After the hold, only the entries keep them (a node with no entry would route by the table: a).
    await waitFor(() => Date.now() > heldUntil, { timeoutMs: 30_000, message: "the hold ends" });
    for (const n of nodes) for (const ip of onA) expect(route(n, "web", ip), `${ip} through ${n.id} after the hold`).toBe(moved.get(ip));
    for (const n of nodes) for (const ip of clients) if (!onA.includes(ip)) expect(route(n, "web", ip), `${ip} through ${n.id}: its first backend`).toBe(first.get(ip));
  });

  it("a backend that leaves and returns within the hold: clients that did not come meanwhile stay on it from every node", async () => {
    const c = freshCluster();
    await c.putService("web");
    for (const id of ["a", "b", "c"]) await c.putBackend("web", id, 10000 + id.charCodeAt(0));
    const rev = await etcd.revision();
    const ids = ["na", "nb", "nc"];
    const nodes = await Promise.all(ids.map((id) => startNode(c.config(id))));
    const [na] = nodes;
    await applied(nodes, rev);
    await shardsSettled(nodes, ids);
    const onA = ips(300, "10.90").filter((ip) => route(na, "web", ip) === "a");
    expect(onA.length).toBeGreaterThan(30);
    // a flaps: down, then up again before the first change's hold is over (a verdict flipping back).
    const down = await etcd.put(`${c.prefix}backends/web/a`, JSON.stringify({ address: "127.0.0.1", port: 10097, state: "disabled" }));
    await applied(nodes, down);
    const back = await etcd.put(`${c.prefix}backends/web/a`, JSON.stringify({ address: "127.0.0.1", port: 10097, state: "active" }));
    await applied(nodes, back);
    // The hold routes by the table from before a left (not the one without a, which lasted a moment).
    for (const n of nodes) for (const ip of onA) expect((explainRoute(n, "web", ip, 0).body as RouteAnswer).backend?.id, `${ip} through ${n.id}`).toBe("a");
  });

  it("both owners of a shard crash just before a table change: the hold outlasts their records, and the new owners' exceptions keep the clients", async () => {
    const c = freshCluster();
    // The default lease TTL (5 s): a crashed node's record, and so its shards, stay that long.
    const leaseTtl = 5;
    await c.putService("web");
    await c.putBackend("web", "a", 10001);
    const rev = await c.putBackend("web", "b", 10002);
    const ids = ["k1", "k2", "n3", "n4"];
    // The two owners run as processes of their own, to be killed (SIGKILL: their leases stay until TTL).
    const [k1, k2] = await Promise.all(["k1", "k2"].map((id) => spawnNode(c.config(id, leaseTtl))));
    const [n3, n4] = await Promise.all(["n3", "n4"].map((id) => startNode(c.config(id, leaseTtl))));
    await applied([n3, n4], rev);
    // The spawned nodes start a process each (slow on a loaded machine) before they count as ready.
    await shardsSettled([n3, n4], ids, 30_000).catch((err) => {
      throw new Error(`${(err as Error).message}; n3 sees ${JSON.stringify([...n3.reconciler.nodes.values()].map((n) => [n.id, n.ready]))}; k1 logs ${k1.logs.slice(-3).join(" | ").slice(0, 600)}`);
    });
    // Clients whose shard k1 and k2 own (neither n3 nor n4), seen by n3.
    const k1Shards = ownedShards("k1", ids);
    const both = [...ownedShards("k2", ids)].filter((s) => k1Shards.has(s));
    expect(both.length).toBeGreaterThan(0);
    const clients = ips(2000, "10.80").filter((ip) => both.includes(shardOf(ip))).slice(0, 60);
    expect(clients.length).toBeGreaterThan(20);
    const first = new Map(clients.map((ip) => [ip, route(n3, "web", ip)!]));
    for (const k of [k1, k2]) {
      await waitFor(
        async () => {
          const answers = await Promise.all(clients.map((ip) => getJson<RouteAnswer>(k.admin, `/api/route?service=web&client=${ip}`)));
          return answers.every((r) => r.reason.startsWith("affinity (from node n3,"));
        },
        { timeoutMs: 15_000, message: "the owners hold n3's records" },
      );
    }

    k1.kill("SIGKILL");
    k2.kill("SIGKILL");
    await Promise.all([k1.exited, k2.exited]);
    const added = await c.putBackend("web", "c", 10003);
    await applied([n3, n4], added);
    const changedAt = Date.now();
    const moved = clients.filter((ip) => maglevPick(n4, "web", ip) !== first.get(ip));
    expect(moved.length).toBeGreaterThan(0);
    // n4 saw none of them and owned none of their shards. Until it holds their exceptions (its own
    // list of the shards once k1's and k2's records expire, or the other new owner's exceptions), it
    // routes them by the hold; explain decides as a connection would, without recording an entry.
    const wrong: string[] = [];
    let polls = 0;
    for (;;) {
      for (const ip of moved) {
        const r = explainRoute(n4, "web", ip, 0).body as RouteAnswer;
        if (r.backend?.id !== first.get(ip)) wrong.push(`${ip} at ${Date.now() - changedAt} ms: ${r.backend?.id} (${r.reason})`);
      }
      polls++;
      if (moved.every((ip) => entryBackend(n4, "web", ip) === first.get(ip)) || Date.now() - changedAt > 20_000) break;
      await new Promise((r) => setTimeout(r, 100));
    }
    expect(wrong.slice(0, 5), `n4's answers off the clients' backends (${polls} polls)`).toEqual([]);
    expect(moved.every((ip) => entryBackend(n4, "web", ip) === first.get(ip)), "n4 holds the moved clients' entries").toBe(true);
    // Polled past the point where the old hold (2 s + 4 x batchInterval) had ended before the records expired.
    expect(Date.now() - changedAt).toBeGreaterThan(holdMs(n4.config.affinity.batchInterval));
  }, 60_000);

  it("a service whose pick is not the same on every node (flow hash) still sends every entry to every node, no records, and no shard watches", async () => {
    const c = freshCluster();
    await c.putService("flow", { algorithm: "maglev" });
    await c.putBackend("flow", "a", 10001);
    const rev = await c.putBackend("flow", "b", 10002);
    const nodes = await Promise.all(["m1", "m2", "m3"].map((id) => startNode(c.config(id))));
    await applied(nodes, rev);
    // No service shards its records: no node keeps shard watches.
    for (const n of nodes) expect(n.affinity.ownedShards).toEqual([]);
    const clients = ips(30, "10.60");
    for (const ip of clients) route(nodes[0], "flow", ip);
    for (const n of nodes) await waitFor(() => (n.affinity.entries.table("flow")?.size ?? 0) === clients.length, { message: `${n.id} holds every entry` });
    expect(nodes[0].affinity.replicator!.recordsWritten).toBe(0);
    expect(nodes[0].affinity.replicator!.exceptionsWritten).toBe(clients.length);
    // The owners add no copies of their own.
    for (const n of nodes.slice(1)) expect(n.affinity.replicator!.exceptionsWritten).toBe(0);
  });

  it("skips malformed record keys and values with their reason; valid records keep working", async () => {
    const c = freshCluster();
    await c.putService("web");
    await c.putBackend("web", "a", 10001);
    const rev = await c.putBackend("web", "b", 10002);
    const [n1] = await Promise.all([startNode(c.config("n1"))]);
    await applied([n1], rev);
    await shardsSettled([n1], ["n1"]);
    const base = recordsPrefix(c.keys);
    const good = "10.50.0.1";
    const shard = shardOf(good);
    // A record binding the client to the backend the table does not pick (an earlier table's).
    const other = maglevPick(n1, "web", good) === "a" ? "b" : "a";
    const now = Date.now();
    // Binary values through a store client (etcdctl's argv would mangle msgpack).
    await n1.store.put(`${base}${shard}/web/rogue/1`, encodeBatch("rogue", [{ ip: good, backend: other, lastUsed: now, created: now - 1000, gen: 0, creator: "rogue" }]));
    await etcd.put(`${base}999/web/rogue/1`, "x");
    await etcd.put(`${base}${shard}/web/rogue/2`, "not msgpack");
    await etcd.put(`${base}${shard}/we b/rogue/3`, "x");
    await waitFor(() => entryBackend(n1, "web", good) === other, { message: "the valid record is merged" });
    expect(route(n1, "web", good)).toBe(other);
    // The owner saw its backend is not the table's pick: it wrote it as an exception for every node.
    await waitFor(async () => (await etcd.etcdctl("get", "--prefix", "--keys-only", `${c.prefix}affinity/web/n1/`)).trim() !== "", { message: "the owner writes the exception" });
    // The bad key under its shard and the value that is no batch; the shard 999 key is under no shard anyone watches.
    await waitFor(() => n1.affinity.invalidBatches === 2, { message: "the two malformed records are skipped" });
  });
});
