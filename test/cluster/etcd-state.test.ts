// Cluster state through real etcd: three nodes take services and backends from keys written by
// another client (etcdctl), skip bad records with reasons, serve through etcd outages (fail-static),
// re-list after compaction, and agree on every routing decision at the same revision.
import net from "node:net";
import { describe, expect, it } from "vitest";
import { explainRoute } from "../../node/state.js";
import { startHttpBackend, startTcpEcho, tcpExchange } from "../helpers/backends.js";
import { type EtcdProcess, startEtcd } from "../helpers/etcd.js";
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
  const name = `c${++cluster}`;
  const p = `/ballast/${name}/`;
  return {
    name,
    service: (s: string) => `${p}services/${s}`,
    backend: (s: string, id: string) => `${p}backends/${s}/${id}`,
    config: (id: string, extra: Record<string, unknown> = {}) => ({ node: { id }, cluster: name, etcd: { endpoints: [etcd.endpoint], leaseTtl: 2 }, ...extra }),
  };
}

describe("cluster state through etcd", () => {
  it("a backend written with etcdctl is routed by all three nodes; removed → no new connections, open ones finish", async () => {
    const c = freshCluster();
    const a = await startTcpEcho("a", { prefix: true });
    await etcd.put(c.service("web"), JSON.stringify({ listen: "127.0.0.1:0", health: { type: "none" } }));
    const nodes = await Promise.all(["n1", "n2", "n3"].map((id) => startNode(c.config(id))));
    for (const n of nodes) await waitFor(() => n.plane.listenerOf("web")?.boundPort !== undefined && n.plane.listenerOf("web")!.boundPort > 0);

    const put = await etcd.put(c.backend("web", "a"), `127.0.0.1:${a.port}`);
    for (const n of nodes) {
      await waitFor(() => n.reconciler.appliedRevision >= put, { message: `${n.id} applies the put` });
      expect(await tcpExchange(portOf(n, "web"), "hi")).toBe("a:hi");
    }
    // An open connection through n1, then the backend is removed.
    const open = net.connect(portOf(nodes[0], "web"), "127.0.0.1");
    let got = "";
    open.on("data", (d) => (got += d));
    open.write("1");
    await waitFor(() => got === "a:1");
    const del = await etcd.del(c.backend("web", "a"));
    expect(del).toBe(1);
    for (const n of nodes) await waitFor(() => n.reconciler.snapshot!.services.get("web")!.targets.length === 0);
    await expect(tcpExchange(portOf(nodes[1], "web"), "x")).rejects.toThrow();
    open.write("2");
    await waitFor(() => got === "a:12", { message: "the open connection finishes its work" });
    open.destroy();
  });

  it("skips every kind of bad record with key and reason while valid records keep working", async () => {
    const c = freshCluster();
    const good = await startTcpEcho("good");
    await etcd.put(c.service("web"), JSON.stringify({ listen: "127.0.0.1:0", health: { type: "none" } }));
    await etcd.put(c.backend("web", "good"), `127.0.0.1:${good.port}`);
    const bad: Array<[string, string, RegExp]> = [
      [c.service("broken"), "{not json", /invalid JSON/],
      [c.service("types"), JSON.stringify({ listen: 8080 }), /listen/],
      [c.backend("web", "port"), JSON.stringify({ address: "127.0.0.1", port: 99999 }), /port/],
      [c.backend("web", "weight"), JSON.stringify({ address: "127.0.0.2", port: 80, weight: 5000 }), /weight/],
      [c.backend("ghost", "b1"), "127.0.0.1:80", /unknown service ghost/],
      [c.backend("web", "dup"), `127.0.0.1:${good.port}`, /duplicate address/],
      [c.service("huge"), JSON.stringify({ listen: "127.0.0.1:0", name: "x".repeat(70_000) }), /exceeds/],
    ];
    for (const [k, v] of bad) await etcd.put(k, v);
    const node = await startNode(c.config("n1"));
    const state = await getJson<{ invalid: Array<{ key: string; reason: string }> }>(node.admin.address, "/api/state");
    for (const [k] of bad) expect(state.invalid.map((r) => r.key), JSON.stringify(state.invalid)).toContain(k);
    for (const [k, , reason] of bad) expect(state.invalid.find((r) => r.key === k)?.reason, k).toMatch(reason);
    expect(await tcpExchange(portOf(node, "web"), "ok")).toBe("good:ok");
    const metrics = await (await fetch(`http://${node.admin.address}/metrics`)).text();
    expect(metrics).toMatch(/ballast_invalid_records\{kind="backend",node="n1"\} 4/);
    // A bad update to a good key keeps the last good value.
    const rev = await etcd.put(c.backend("web", "good"), '{"address": 1}');
    await waitFor(() => node.reconciler.appliedRevision >= rev);
    expect(node.reconciler.snapshot!.invalid.find((r) => r.key === c.backend("web", "good"))?.keptLastGood).toBe(true);
    expect(await tcpExchange(portOf(node, "web"), "still")).toBe("good:still");
  });

  it("keeps serving while etcd is down (staleness reported) and applies changes once it is back", async () => {
    const c = freshCluster();
    const local = await startEtcd();
    try {
      const a = await startTcpEcho("a");
      const b = await startTcpEcho("b");
      await local.put(c.service("web"), JSON.stringify({ listen: "127.0.0.1:0", health: { type: "none" } }));
      await local.put(c.backend("web", "a"), `127.0.0.1:${a.port}`);
      const node = await startNode({ ...c.config("n1"), etcd: { endpoints: [local.endpoint], leaseTtl: 2 } });
      const port = portOf(node, "web");
      await local.kill("SIGKILL");
      await waitFor(() => !node.reconciler.connected, { message: "node notices etcd is gone" });
      for (let i = 0; i < 5; i++) expect(await tcpExchange(port, `${i}`)).toBe(`a:${i}`);
      await waitFor(async () => {
        const st = await getJson<{ store: { connected: boolean; staleSeconds: number } }>(node.admin.address, "/api/state");
        return !st.store.connected && st.store.staleSeconds > 0;
      });
      expect(await (await fetch(`http://${node.admin.address}/metrics`)).text()).toMatch(/ballast_store_staleness_seconds\{node="n1"\} [0-9.]*[1-9]/);
      await local.restart();
      const rev = await local.put(c.backend("web", "b"), `127.0.0.1:${b.port}`);
      await local.del(c.backend("web", "a"));
      await waitFor(() => node.reconciler.appliedRevision >= rev + 1, { timeoutMs: 15_000, message: "node converges after etcd returns" });
      expect(await tcpExchange(portOf(node, "web"), "x")).toBe("b:x");
      expect(portOf(node, "web")).toBe(port);
    } finally {
      await local.stop();
    }
  });

  it("re-lists and converges when compaction removed the revision its watch needed", async () => {
    const c = freshCluster();
    const a = await startHttpBackend("a");
    const b = await startHttpBackend("b");
    await etcd.put(c.service("web"), JSON.stringify({ listen: "127.0.0.1:0", health: { type: "none" } }));
    await etcd.put(c.backend("web", "a"), `127.0.0.1:${a.port}`);
    const node = await spawnNode(c.config("n1"));
    await waitFor(async () => (await fetch(`http://${node.admin}/readyz`)).ok);
    node.kill("SIGSTOP");
    try {
      await etcd.del(c.backend("web", "a"));
      for (let i = 0; i < 5; i++) await etcd.put(`/ballast/${c.name}/noise`, `${i}`);
      const rev = await etcd.put(c.backend("web", "b"), `127.0.0.1:${b.port}`);
      await etcd.compact(rev);
    } finally {
      node.kill("SIGCONT");
    }
    await waitFor(async () => {
      const st = await getJson<{ services: Array<{ backends: Array<{ id: string }> }> }>(node.admin, "/api/state");
      return st.services[0]?.backends.map((x) => x.id).join() === "b";
    }, { timeoutMs: 15_000, message: "node re-lists after compaction" });
    node.kill("SIGKILL");
  });

  it("three nodes at the same revision give the same route for 1000 client IPs", async () => {
    const c = freshCluster();
    await etcd.put(c.service("web"), JSON.stringify({ listen: "127.0.0.1:0", algorithm: "source-ip", health: { type: "none" } }));
    let rev = 0;
    for (let i = 0; i < 20; i++) rev = await etcd.put(c.backend("web", `b${i}`), `10.1.0.${i}:80`);
    const nodes = await Promise.all(["n1", "n2", "n3"].map((id) => startNode(c.config(id))));
    for (const n of nodes) await waitFor(() => n.reconciler.appliedRevision >= rev);
    const seen = new Set<string>();
    for (let i = 0; i < 1000; i++) {
      const ip = `198.51.${i >> 8}.${i & 255}`;
      const answers = nodes.map((n) => (explainRoute(n, "web", ip, 0).body as { backend: { id: string } }).backend.id);
      expect(new Set(answers).size, ip).toBe(1);
      seen.add(answers[0]);
    }
    expect(seen.size).toBe(20);
  });
});
