// Issue 19, etcd stays small and recovers calmly, with in-process nodes on a real etcd process:
// an idle cluster writes at most 12 revisions a minute (counted from etcd's header revision), an etcd
// outage shorter than the lease TTL changes nothing (no fallback, no new lease, no new term), a longer
// one recovers, and a lease revoke that failed while etcd was down happens once it is back.
import { afterEach, describe, expect, it } from "vitest";
import { EtcdStore } from "../../node/control/etcd-store.js";
import type { SyncSink } from "../../node/control/store.js";
import type { BallastNode } from "../../node/node.js";
import { KeySchema } from "../../shared/keys.js";
import { closeAllBackends, startTcpEcho } from "../helpers/backends.js";
import { type EtcdProcess, startEtcd } from "../helpers/etcd.js";
import { startNode, stopAllNodes } from "../helpers/node.js";
import { waitFor } from "../helpers/wait.js";
import { metricValue } from "../health/metrics-text.js";

const etcds: EtcdProcess[] = [];
afterEach(async () => {
  await stopAllNodes();
  await closeAllBackends();
  for (const e of etcds.splice(0)) await e.stop();
});

let clusters = 0;

/** A fresh etcd, a service with one healthy checked backend, and `n` nodes that have settled on it. */
async function settledCluster(n: number, opts: { leaseTtl?: number; staleAfter?: string } = {}) {
  const etcd = await startEtcd();
  etcds.push(etcd);
  const name = `calm${++clusters}`;
  const keys = KeySchema.forCluster(name);
  const a = await startTcpEcho("a");
  await etcd.put(keys.service("web"), JSON.stringify({ listen: "127.0.0.1:0", health: { type: "tcp", interval: "1s", timeout: "500ms", rise: 2, fall: 2 } }));
  await etcd.put(keys.backend("web", "a"), `127.0.0.1:${a.port}`);
  const health = opts.staleAfter === undefined ? {} : { staleAfter: opts.staleAfter };
  const nodes: BallastNode[] = [];
  for (let i = 1; i <= n; i++) nodes.push(await startNode({ node: { id: `n${i}` }, cluster: name, etcd: { endpoints: [etcd.endpoint], leaseTtl: opts.leaseTtl ?? 5 }, health }));
  const leaderOf = (node: BallastNode) => node.health.status().leader;
  await waitFor(
    () =>
      // quorum ok: every observer's vote is in. The leader's first verdict says "degraded" (1 of 2
      // observers voted) and is rewritten when the second vote arrives; an outage that began before
      // that write landed made the write fail and cost the term (the leader steps down on a failed
      // write), which is a race of this test's start, not what it measures. One node judges alone.
      nodes.every((node) => {
        const v = node.reconciler.snapshot?.services.get("web")?.backends[0]?.verdict;
        return v?.state === "up" && (v.quorum === "ok" || n === 1) && leaderOf(node) !== null && leaderOf(node) === leaderOf(nodes[0]) && node.mode === "shared";
      }) &&
      nodes.every((node) => node.reconciler.nodes.size === n && [...node.reconciler.nodes.values()].every((r) => r.ready && r.mode === "shared")),
    { timeoutMs: 20_000, message: "a leader, backend a up on every node, every node registered ready and shared" },
  );
  return { etcd, keys, nodes };
}

/** Every put and delete under the cluster prefix from now on, as `key` strings (the test's own watch). */
function recordWrites(etcd: EtcdProcess, prefix: string) {
  const store = new EtcdStore({ endpoints: [etcd.endpoint] });
  const writes: { key: string; revision: number; at: number }[] = [];
  let ready = false;
  const sink: SyncSink = {
    reset: () => {
      ready = true;
    },
    events: (events) => {
      for (const e of events) writes.push({ key: `${e.type} ${e.key.slice(prefix.length)}`, revision: e.modRevision, at: Date.now() });
    },
    status: () => {},
  };
  store.sync(prefix, sink);
  return { writes, ready: () => ready, close: () => store.close() };
}

/** Lease id and create revision of every node record and election key: what a re-registration or a new term changes. */
async function leasedKeys(etcd: EtcdProcess, keys: KeySchema): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  for (const prefix of [keys.nodes, keys.election]) {
    const res = JSON.parse(await etcd.etcdctl("get", "--prefix", "-w", "json", "--", prefix)) as { kvs?: { key: string; lease?: number | string; create_revision: number }[] };
    for (const kv of res.kvs ?? []) out[Buffer.from(kv.key, "base64").toString()] = `lease ${BigInt(kv.lease ?? 0).toString(16)} created ${kv.create_revision}`;
  }
  return out;
}

/** A sample of the node's /metrics; a counter never incremented (no sample) reads 0. */
async function metric(node: BallastNode, name: string, labels: Record<string, string> = {}): Promise<number> {
  return metricValue(await (await fetch(`http://${node.admin.address}/metrics`)).text(), name, labels) ?? 0;
}

/** Samples every node's verdict mode and store connection every 20 ms until stopped. */
function sampleModes(nodes: BallastNode[]) {
  const modes = new Map<string, Set<string>>();
  let disconnected = 0;
  const timer = setInterval(() => {
    for (const n of nodes) {
      const seen = modes.get(n.id) ?? new Set<string>();
      modes.set(n.id, seen);
      seen.add(n.mode);
      if (!n.reconciler.connected) disconnected++;
    }
  }, 20);
  return {
    stop: () => clearInterval(timer),
    modes: () => Object.fromEntries([...modes].map(([id, m]) => [id, [...m].sort().join(",")])),
    disconnected: () => disconnected,
  };
}

/** Lets etcd be gone for `ms` (the fault's duration, not a wait for readiness), then starts it again on its data dir. */
async function outage(etcd: EtcdProcess, ms: number): Promise<void> {
  await etcd.kill("SIGKILL");
  await new Promise((r) => setTimeout(r, ms));
  await etcd.restart();
}

describe("calm recovery", () => {
  it("a 2 s etcd outage (killed, restarted on its data dir) with 3 nodes: no fallback, no re-registration, the same leader term", async () => {
    // staleAfter 4 s (heartbeat every 2.4 s): the outage plus the nodes' reconnect and re-list is longer
    // than the 1.6 s a heartbeat may be late, so this passes only because a node does not count the
    // time it could not read etcd. Lease TTL 5 s, the default.
    const { etcd, keys, nodes } = await settledCluster(3, { leaseTtl: 5, staleAfter: "4s" });
    const before = await leasedKeys(etcd, keys);
    const term = nodes[0].health.status().term;
    const leader = nodes[0].health.status().leader;
    const sampler = sampleModes(nodes);
    try {
      await outage(etcd, 2_000);
      const back = Date.now();
      await waitFor(() => nodes.every((n) => n.reconciler.connected), { timeoutMs: 15_000, message: "every node reading etcd again" });
      // Then two lease TTLs (a lost lease, a late fallback or a new term would show by then).
      await waitFor(() => Date.now() - back >= 10_000, { timeoutMs: 15_000, intervalMs: 100 });
    } finally {
      sampler.stop();
    }
    expect(sampler.disconnected(), "the nodes saw etcd gone").toBeGreaterThan(0);
    expect(sampler.modes()).toEqual({ n1: "shared", n2: "shared", n3: "shared" });
    for (const n of nodes) {
      expect(await metric(n, "ballast_health_mode_transitions_total", { mode: "local-fallback" }), n.id).toBe(0);
      expect(await metric(n, "ballast_node_registrations_total"), n.id).toBe(1);
      expect(await metric(n, "ballast_etcd_leases_lost_total"), n.id).toBe(0);
      expect(await metric(n, "ballast_etcd_relists_total"), n.id).toBe(0);
      expect(n.health.status()).toMatchObject({ mode: "shared", leader, term });
    }
    // Same leases, same create revisions: no node record or election key was written anew.
    expect(await leasedKeys(etcd, keys)).toEqual(before);
  }, 90_000);

  it("a verdict decided while etcd is down lands when it returns, in the same term (the write is retried, not the term ended)", async () => {
    // One node: it judges alone, so its own probes decide (no observer vote has to reach etcd).
    const { etcd, nodes } = await settledCluster(1, { leaseTtl: 5, staleAfter: "4s" });
    const [node] = nodes;
    const { term, leader } = node.health.status();
    await etcd.kill("SIGKILL");
    await closeAllBackends();
    // The leader decides "down" (2 failed probes, 1 s apart) and its write finds no etcd.
    await waitFor(async () => (await metric(node, "ballast_health_verdict_changes_total", { service: "web", state: "down", source: "shared" })) === 1, { timeoutMs: 10_000, message: "the leader decided down while etcd is gone" });
    await waitFor(async () => (await metric(node, "ballast_health_unwritten_verdicts")) === 1, { timeoutMs: 10_000, message: "the verdict's write did not reach etcd" });
    await etcd.restart();
    // The node routes by the verdict it reads back from etcd (shared mode, asserted below).
    await waitFor(() => node.reconciler.snapshot?.services.get("web")?.backends[0]?.verdict?.state === "down", { timeoutMs: 15_000, message: "the down verdict written to etcd and read back" });
    expect(node.health.status()).toMatchObject({ leader, term });
    expect(await metric(node, "ballast_health_unwritten_verdicts")).toBe(0);
    expect(node.mode).toBe("shared");
    expect(await metric(node, "ballast_health_mode_transitions_total", { mode: "local-fallback" })).toBe(0);
    expect(await metric(node, "ballast_etcd_leases_lost_total")).toBe(0);
  }, 60_000);

  it("an outage of 4 lease TTLs recovers: nodes fall back, register again, and return to one leader's shared verdicts", async () => {
    const { etcd, keys, nodes } = await settledCluster(3, { leaseTtl: 2, staleAfter: "2s" });
    const before = await leasedKeys(etcd, keys);
    await etcd.kill("SIGKILL");
    await waitFor(() => nodes.every((n) => n.mode === "local-fallback"), { timeoutMs: 15_000, message: "every node in local fallback while etcd is gone" });
    // etcd stays away 8 s more (4 lease TTLs): every lease is lost, as etcd3 counts it, before it returns.
    await new Promise((r) => setTimeout(r, 8_000));
    await etcd.restart();
    const back = Date.now();
    await waitFor(
      async () => {
        const leaders = new Set(nodes.map((n) => n.health.status().leader));
        return leaders.size === 1 && !leaders.has(null) && nodes.every((n) => n.mode === "shared" && n.reconciler.nodes.size === 3);
      },
      { timeoutMs: 30_000, message: "one leader, every node shared again and registered" },
    );
    console.log(`[calm] etcd back after a long outage → one leader, 3 nodes shared and registered in ${Date.now() - back} ms`);
    for (const n of nodes) {
      expect(await metric(n, "ballast_node_registrations_total"), n.id).toBeGreaterThanOrEqual(2);
      expect(await metric(n, "ballast_etcd_leases_lost_total"), n.id).toBeGreaterThan(0);
      // Nothing compacted the history meanwhile: every node resumed its watch instead of re-listing.
      expect(await metric(n, "ballast_etcd_watch_resumes_total"), n.id).toBeGreaterThan(0);
      expect(await metric(n, "ballast_etcd_relists_total"), n.id).toBe(0);
    }
    // Every lease that was lost while etcd was down is revoked once it is back (not left to expire).
    await waitFor(async () => (await Promise.all(nodes.map((n) => metric(n, "ballast_etcd_lease_revokes_pending")))).every((v) => v === 0), { message: "no revoke left pending" });
    const after = await leasedKeys(etcd, keys);
    for (const key of Object.keys(after).filter((k) => k.startsWith(keys.nodes))) expect(after[key], key).not.toBe(before[key]);
  }, 120_000);
});

describe("etcd stays small", () => {
  it("an idle cluster of 3 nodes writes at most 12 revisions a minute (the leader's heartbeat only)", async () => {
    const { etcd, keys } = await settledCluster(3);
    const watch = recordWrites(etcd, keys.prefix);
    try {
      await waitFor(watch.ready, { message: "the test's own watch started" });
      // Settled: no write but the heartbeat for 8 s (observers report their first states, the leader
      // its first verdicts, nodes their mode after start).
      const started = Date.now();
      await waitFor(() => Date.now() - Math.max(started, ...watch.writes.filter((w) => w.key !== "put health/heartbeat").map((w) => w.at)) >= 8_000, { timeoutMs: 40_000, intervalMs: 200, message: "8 s with no write but the heartbeat" });
      // A window long enough for the count to mean something per minute (the heartbeat is every 6 s).
      const WINDOW_MS = 45_000;
      const r0 = await etcd.revision();
      const t0 = Date.now();
      await waitFor(() => Date.now() - t0 >= WINDOW_MS, { timeoutMs: WINDOW_MS + 5_000, intervalMs: 500 });
      const r1 = await etcd.revision();
      const elapsed = Date.now() - t0;
      const perMinute = ((r1 - r0) * 60_000) / elapsed;
      const inWindow = watch.writes.filter((w) => w.revision > r0 && w.revision <= r1).map((w) => w.key);
      console.log(`[calm] idle 3-node cluster: ${r1 - r0} revisions in ${(elapsed / 1000).toFixed(1)} s = ${perMinute.toFixed(1)}/min (${inWindow.join(", ")})`);
      expect(perMinute, `writes in the window: ${inWindow.join(", ")}`).toBeLessThanOrEqual(12);
      // And the heartbeat still runs: an idle cluster is not a silent one.
      expect(inWindow.filter((w) => w === "put health/heartbeat").length).toBeGreaterThan(0);
    } finally {
      await watch.close();
    }
  }, 90_000);
});
