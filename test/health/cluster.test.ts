// Health checking once per cluster, with in-process nodes on real etcd: one leader checks, every node
// routes by its verdicts; removed backends lose their verdicts; etcd unreachable → local fallback
// routes around a backend that dies meanwhile; with no working leader, passive ejection still works.
import { describe, expect, it } from "vitest";
import { EtcdStore } from "../../node/control/etcd-store.js";
import type { BallastNode } from "../../node/node.js";
import { KeySchema } from "../../shared/keys.js";
import { startTcpEcho, tcpExchange } from "../helpers/backends.js";
import { type EtcdProcess, startEtcd } from "../helpers/etcd.js";
import { getJson, portOf, startNode } from "../helpers/node.js";
import { useSharedEtcd } from "../helpers/suite.js";
import { waitFor } from "../helpers/wait.js";
import { metricValue } from "./metrics-text.js";

let etcd: EtcdProcess;
let cluster = 0;
useSharedEtcd((e) => {
  etcd = e;
});

const INTERVAL = 200;
const FALL = 2;
const fastHealth = { type: "tcp", interval: `${INTERVAL}ms`, timeout: "150ms", rise: 2, fall: FALL, jitter: 0.5 };

function freshCluster(endpoint = () => etcd.endpoint) {
  const name = `h${++cluster}`;
  const keys = KeySchema.forCluster(name);
  return {
    name,
    keys,
    service: (s: string) => keys.service(s),
    backend: (s: string, id: string) => keys.backend(s, id),
    config: (id: string, health: Record<string, unknown> = {}) => ({ node: { id }, cluster: name, etcd: { endpoints: [endpoint()], leaseTtl: 2 }, health }),
  };
}

function viewOf(node: BallastNode, service: string, id: string) {
  return node.reconciler.snapshot?.services.get(service)?.backends.find((b) => b.id === id) ?? null;
}
const stateOf = (node: BallastNode, service: string, id: string) => viewOf(node, service, id)?.verdict?.state ?? "unknown";

async function metricsOf(node: BallastNode): Promise<string> {
  return (await fetch(`http://${node.admin.address}/metrics`)).text();
}

describe("health checking through etcd", () => {
  it("one leader; a stopped backend is down on all nodes within interval × fall + 500 ms and gets no new connection; restarted → up after rise", async () => {
    const c = freshCluster();
    const a = await startTcpEcho("a");
    const b = await startTcpEcho("b");
    // `observers: 1`: the leader alone judges (the mode before observer quorum, still one setting away);
    // quorum-cluster.test.ts covers three observers.
    await etcd.put(c.service("web"), JSON.stringify({ listen: "127.0.0.1:0", health: { ...fastHealth, observers: 1 } }));
    await etcd.put(c.backend("web", "a"), `127.0.0.1:${a.port}`);
    await etcd.put(c.backend("web", "b"), `127.0.0.1:${b.port}`);
    const nodes = await Promise.all(["n1", "n2", "n3"].map((id) => startNode(c.config(id))));
    await waitFor(() => nodes.every((n) => stateOf(n, "web", "a") === "up" && stateOf(n, "web", "b") === "up"), { message: "both up on all nodes" });

    // Exactly one leader, and every node names it.
    const leaders = nodes.filter((n) => n.health.status().isLeader);
    expect(leaders.map((n) => n.id)).toHaveLength(1);
    const leader = leaders[0];
    await waitFor(() => nodes.every((n) => n.health.status().leader === leader.id), { message: "every node names the leader" });
    for (const n of nodes) {
      const st = await getJson<{ health: { leader: string; isLeader: boolean; mode: string; term: string } }>(n.admin.address, "/api/state");
      expect(st.health).toMatchObject({ leader: leader.id, isLeader: n === leader, mode: "shared" });
      const m = await metricsOf(n);
      expect(metricValue(m, "ballast_health_leader")).toBe(n === leader ? 1 : 0);
      expect(metricValue(m, "ballast_health_mode", { mode: "shared" })).toBe(1);
      // Only the leader probes: N nodes do not mean N × M checks.
      expect(metricValue(m, "ballast_health_checks_total", { service: "web", result: "ok" }) ?? 0, n.id).toSatisfy((v: number) => (n === leader ? v > 0 : v === 0));
    }
    expect(viewOf(nodes[1], "web", "b")!.verdict).toMatchObject({ state: "up", checker: leader.id, source: "shared", reason: "connected" });

    const port = b.port;
    const connectionsBefore = nodes.map((n) => n.plane.stats.backend("web", "b").connections);
    const t0 = Date.now();
    await b.close();
    await waitFor(() => nodes.every((n) => stateOf(n, "web", "b") === "down"), { intervalMs: 5, message: "b down on all nodes" });
    const detection = Date.now() - t0;
    console.log(`[health] detection: backend stopped → down on all 3 nodes in ${detection} ms (interval ${INTERVAL} ms × fall ${FALL})`);
    expect(detection).toBeLessThan(INTERVAL * FALL + 500);
    expect(viewOf(nodes[2], "web", "b")!.verdict).toMatchObject({ state: "down", reason: "connect ECONNREFUSED", count: FALL, checker: leader.id });
    expect(viewOf(nodes[2], "web", "b")!.routable).toBe(false);

    // No new connection is even attempted to b, from any node.
    for (const n of nodes) for (let i = 0; i < 6; i++) expect(await tcpExchange(portOf(n, "web"), `${i}`)).toBe(`a:${i}`);
    expect(nodes.map((n) => n.plane.stats.backend("web", "b").connections)).toEqual(connectionsBefore);
    expect(nodes.map((n) => n.plane.stats.backend("web", "b").connectFailures.refused ?? 0)).toEqual([0, 0, 0]);

    const t1 = Date.now();
    await startTcpEcho("b", { port });
    await waitFor(() => nodes.every((n) => stateOf(n, "web", "b") === "up"), { intervalMs: 5, message: "b up again on all nodes" });
    console.log(`[health] recovery: backend restarted → up on all 3 nodes in ${Date.now() - t1} ms (rise 2)`);
    expect(viewOf(nodes[0], "web", "b")!.verdict).toMatchObject({ state: "up", count: 2, reason: "connected" });
    await waitFor(async () => (await tcpExchange(portOf(nodes[0], "web"), "x")) === "b:x", { message: "traffic reaches b again" });
  });

  it("verdicts are written only on change; removed or unchecked backends lose theirs; drained ones are not checked", async () => {
    const c = freshCluster();
    const a = await startTcpEcho("a");
    const b = await startTcpEcho("b");
    await etcd.put(c.service("web"), JSON.stringify({ listen: "127.0.0.1:0", health: fastHealth }));
    await etcd.put(c.service("db"), JSON.stringify({ listen: "127.0.0.1:0", health: fastHealth }));
    await etcd.put(c.backend("web", "a"), `127.0.0.1:${a.port}`);
    await etcd.put(c.backend("web", "b"), `127.0.0.1:${b.port}`);
    await etcd.put(c.backend("db", "a"), `127.0.0.1:${a.port}`);
    const n1 = await startNode(c.config("n1", { staleAfter: "2s" }));
    const verdictKeys = async () => (await etcd.etcdctl("get", "--prefix", "--keys-only", c.keys.verdicts)).split("\n").filter((l) => l !== "").sort();
    await waitFor(async () => (await verdictKeys()).length === 3, { message: "three verdicts" });
    const revAfterUp = await etcd.revision();
    // Steady state: heartbeats only, no verdict rewrites.
    await waitFor(() => n1.reconciler.appliedRevision >= revAfterUp + 3, { message: "a few heartbeats later" });
    const history = JSON.parse(await etcd.etcdctl("get", "--prefix", c.keys.verdicts, "-w", "json")) as { kvs: Array<{ version: number }> };
    expect(history.kvs.map((kv) => kv.version)).toEqual([1, 1, 1]);

    await etcd.del(c.backend("web", "b"));
    await waitFor(async () => !(await verdictKeys()).includes(c.keys.verdict("web", "b")), { message: "verdict of the removed backend deleted" });
    await etcd.put(c.service("db"), JSON.stringify({ listen: "127.0.0.1:0", health: { type: "none" } }));
    await waitFor(async () => !(await verdictKeys()).includes(c.keys.verdict("db", "a")), { message: "verdict of an unchecked service deleted" });
    expect(await verdictKeys()).toEqual([c.keys.verdict("web", "a")]);

    await etcd.put(c.backend("web", "a"), JSON.stringify({ address: "127.0.0.1", port: a.port, state: "drain" }));
    await waitFor(() => n1.health.status().checking === 0, { message: "drained backend no longer checked" });
    expect(await verdictKeys()).toEqual([c.keys.verdict("web", "a")]);
  });

  it("etcd unreachable → every node falls back to its own checks, routes around a backend that dies meanwhile, and returns to shared verdicts without a flap", async () => {
    const local = await startEtcd();
    try {
      const c = freshCluster(() => local.endpoint);
      const a = await startTcpEcho("a");
      const b = await startTcpEcho("b");
      await local.put(c.service("web"), JSON.stringify({ listen: "127.0.0.1:0", health: fastHealth }));
      await local.put(c.backend("web", "a"), `127.0.0.1:${a.port}`);
      await local.put(c.backend("web", "b"), `127.0.0.1:${b.port}`);
      const nodes = await Promise.all(["n1", "n2"].map((id) => startNode(c.config(id, { staleAfter: "1s" }))));
      await waitFor(() => nodes.every((n) => stateOf(n, "web", "b") === "up" && n.health.status().leader !== null), { message: "b up, leader known" });

      // Sample every node's mode and b's routability all along, to catch any moment of routing to a dead b.
      const samples: Array<{ at: number; node: string; mode: string; bRoutable: boolean; source: string }> = [];
      const sampler = setInterval(() => {
        for (const n of nodes) {
          const v = viewOf(n, "web", "b");
          samples.push({ at: Date.now(), node: n.id, mode: n.mode, bRoutable: v?.routable ?? false, source: v?.verdict?.source ?? "none" });
        }
      }, 5);
      try {
        await local.kill("SIGKILL");
        const tKill = Date.now();
        await waitFor(() => nodes.every((n) => n.mode === "local-fallback"), { message: "both nodes in local fallback" });
        console.log(`[health] etcd killed → local-fallback on both nodes after ${Date.now() - tKill} ms (staleAfter 1s)`);
        const st = await getJson<{ health: { mode: string; modeReason: string; leader: string | null } }>(nodes[0].admin.address, "/api/state");
        expect(st.health.mode).toBe("local-fallback");
        expect(st.health.modeReason).toMatch(/heartbeat|unreachable/);
        expect(metricValue(await metricsOf(nodes[1]), "ballast_health_mode", { mode: "local-fallback" })).toBe(1);

        const before = nodes.map((n) => n.plane.stats.backend("web", "b").connections);
        const tDeath = Date.now();
        await b.close();
        await waitFor(() => nodes.every((n) => viewOf(n, "web", "b")?.verdict?.state === "down"), { intervalMs: 5, message: "b down by local checks" });
        console.log(`[health] local fallback: backend stopped → down on both nodes in ${Date.now() - tDeath} ms`);
        for (const n of nodes) {
          expect(viewOf(n, "web", "b")!.verdict).toMatchObject({ state: "down", source: "local", checker: n.id, reason: "connect ECONNREFUSED" });
          for (let i = 0; i < 5; i++) expect(await tcpExchange(portOf(n, "web"), `${i}`)).toBe(`a:${i}`);
        }
        expect(nodes.map((n) => n.plane.stats.backend("web", "b").connections)).toEqual(before);

        const tBack = Date.now();
        await local.restart();
        await waitFor(() => nodes.every((n) => n.mode === "shared"), { timeoutMs: 25_000, message: "back to shared verdicts" });
        console.log(`[health] etcd restarted → shared mode on both nodes after ${Date.now() - tBack} ms`);
        for (const n of nodes) expect(viewOf(n, "web", "b")!.verdict).toMatchObject({ state: "down", source: "shared" });
      } finally {
        clearInterval(sampler);
      }
      for (const n of nodes) {
        const mine = samples.filter((s) => s.node === n.id);
        const deadFrom = mine.find((s) => s.source === "local" && !s.bRoutable)?.at ?? Number.POSITIVE_INFINITY;
        expect(deadFrom, n.id).toBeLessThan(Number.POSITIVE_INFINITY);
        const flaps = mine.filter((s) => s.at > deadFrom && s.bRoutable);
        expect(flaps, `${n.id}: b routable again after its local checks marked it down`).toEqual([]);
      }
    } finally {
      await local.stop();
    }
  });

  it("with no working leader, connect failures still eject a dead backend locally at once", async () => {
    const c = freshCluster();
    // A candidate that wins the election and then never checks or writes anything.
    const ghost = new EtcdStore({ endpoints: [etcd.endpoint] });
    const silent = await ghost.campaign(c.keys.election, "ghost", 5);
    try {
      const a = await startTcpEcho("a");
      const b = await startTcpEcho("b");
      await etcd.put(c.service("web"), JSON.stringify({ listen: "127.0.0.1:0", health: fastHealth }));
      await etcd.put(c.backend("web", "a"), `127.0.0.1:${a.port}`);
      await etcd.put(c.backend("web", "b"), `127.0.0.1:${b.port}`);
      const n1 = await startNode(c.config("n1", { staleAfter: "60s" }));
      expect(n1.health.status()).toMatchObject({ isLeader: false, leader: null, mode: "shared" });
      expect(await tcpExchange(portOf(n1, "web"), "1")).toMatch(/^[ab]:1$/);
      await b.close();
      for (let i = 0; i < 8; i++) expect(await tcpExchange(portOf(n1, "web"), `${i}`)).toBe(`a:${i}`);
      const s = n1.plane.stats.backend("web", "b");
      expect(s.connectFailures.refused).toBe(1);
      expect(s.ejectedUntil).toBeGreaterThan(Date.now());
      expect(viewOf(n1, "web", "b")!.verdict).toBeNull();
      const st = await getJson<{ services: Array<{ backends: Array<{ id: string; ejected: boolean; verdict: unknown }> }> }>(n1.admin.address, "/api/state");
      expect(st.services[0].backends.find((x) => x.id === "b")).toMatchObject({ ejected: true, verdict: null });
      expect(metricValue(await metricsOf(n1), "ballast_backend_ejections_total", { service: "web", backend: "b" })).toBe(1);
      expect(n1.health.status().isLeader).toBe(false);
    } finally {
      await silent.resign().catch(() => {});
      await ghost.close();
    }
  });
});
