// Scenario 6: etcd members die under steady client load through the anycast VIP. With one of three
// gone etcd keeps quorum and no client connection may fail; with all three gone the nodes serve on
// from their last snapshot (fail-static), stay ready and announced, and catch up once etcd is back.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { waitFor } from "../helpers/wait.js";
import { byNode, ChaosCluster, everyNodeSees, notAnnouncedSamples, notReadySamples, percentile, sleep, unknownSamples, watchReadiness } from "./cluster.js";
import { figures, formatFigures, recordFigure } from "./figures.js";

const SCENARIO = "6 etcd members killed";
const LOAD = { durationMs: 8_000, concurrency: 8, timeoutMs: 3_000 };

describe(SCENARIO, () => {
  let cluster: ChaosCluster;

  beforeAll(async () => {
    const t = Date.now();
    cluster = await ChaosCluster.start({ etcdMembers: 3, nodes: 3, backends: 3, anycast: true });
    recordFigure({ scenario: SCENARIO, figure: "cluster start (3 etcd, 3 nodes, 3 backends, router, client)", value: Date.now() - t, unit: "ms" });
  });

  afterAll(async () => {
    process.stdout.write(`\n${formatFigures(figures(SCENARIO))}`);
    await cluster?.destroy();
  });

  /**
   * What losing quorum-preserving etcd members must not change on a node (issue 19): its health
   * term, its registrations, its kept-alive leases, its verdict mode.
   */
  async function calmState() {
    const out: Record<string, string> = {};
    for (const n of cluster.nodes) {
      const st = await n.state();
      const registrations = await n.metric("ballast_node_registrations_total");
      const leasesLost = await n.metric("ballast_etcd_leases_lost_total");
      const fallbacks = await n.metric("ballast_health_mode_transitions_total", 'mode="local-fallback"');
      out[n.nodeId] = `term ${st.health.term} leader ${st.health.leader} registrations ${registrations} leases lost ${leasesLost} fallbacks ${fallbacks}`;
    }
    return out;
  }

  it("one of three members killed (the leader): zero failed client connections", async () => {
    const leader = await cluster.etcdLeader();
    expect(leader, "an etcd leader").toBeDefined();
    await waitFor(async () => Object.values(await calmState()).every((s) => !s.includes("leader null")), { timeoutMs: 20_000, message: "a health-check leader seen by every node" });
    const calmBefore = await calmState();
    const watch = watchReadiness(cluster);
    const survivors = cluster.etcd.filter((m) => m !== leader);
    const load = cluster.client!.load(LOAD);
    await sleep(2_000);
    const killedAt = Date.now();
    await leader!.kill();
    await waitFor(async () => (await cluster.etcdLeader(survivors)) !== undefined, { timeoutMs: 10_000, intervalMs: 50, message: "a new etcd leader" });
    const electedMs = Date.now() - killedAt;
    const result = await load;
    const samples = await watch.stop();
    // Lease effects show by 2 × TTL (3 s) after the kill plus etcd's expiry after a new raft leader
    // (TTL + election timeout): the fault's window, not a readiness wait.
    await sleep(Math.max(0, killedAt + 9_000 - Date.now()));
    const calmAfter = await calmState();

    const notReady = notReadySamples(samples);
    const notAnnounced = notAnnouncedSamples(samples, { count: cluster.nodes.length });
    const connectTimes = result.connections.filter((c) => c.connectMs >= 0).map((c) => c.connectMs);
    recordFigure({ scenario: SCENARIO, figure: "one killed: client connections", value: result.total });
    recordFigure({ scenario: SCENARIO, figure: "one killed: failed connections", value: result.failed, bound: "= 0" });
    recordFigure({ scenario: SCENARIO, figure: "one killed: connect p99", value: percentile(connectTimes, 99), unit: "ms" });
    recordFigure({ scenario: SCENARIO, figure: "one killed: new etcd leader after", value: electedMs, unit: "ms" });
    recordFigure({ scenario: SCENARIO, figure: "one killed: readiness samples not all ready", value: notReady, bound: "= 0" });
    recordFigure({ scenario: SCENARIO, figure: "one killed: readiness samples not all announced", value: notAnnounced, bound: "= 0" });
    recordFigure({ scenario: SCENARIO, figure: "one killed: samples with a probe unanswered in 2 s (unknown, not counted)", value: `${unknownSamples(samples)} of ${samples.length}` });
    // Recorded, not asserted: 0 in the last 6 runs with endpoint probing, the heartbeat's own deadline
    // and the lookup fixes, but a renewal a member forwards to the dead raft leader can still be late
    // by more than etcd's grace (issue 19, docs/architecture.md).
    const changed = Object.keys(calmBefore).filter((id) => calmAfter[id] !== calmBefore[id]);
    recordFigure({ scenario: SCENARIO, figure: "one killed: nodes whose health term, registrations, leases lost or fallbacks changed", value: changed.length === 0 ? "0" : `${changed.length}: ${changed.map((id) => `${id} ${calmBefore[id]} -> ${calmAfter[id]}`).join("; ")}` });
    recordFigure({ scenario: SCENARIO, figure: "one killed: nodes serving (by connections)", value: Object.keys(byNode(result)).length, bound: `= ${cluster.nodes.length}` });

    expect(result.failed, JSON.stringify(result.errors)).toBe(0);
    expect(notReady).toBe(0);
    expect(notAnnounced).toBe(0);
    expect(Object.keys(byNode(result)).length).toBe(cluster.nodes.length);
    expect(survivors.length).toBe(2);
  });

  it("all three killed: nodes keep serving, then catch up when etcd returns", async () => {
    const watch = watchReadiness(cluster);
    const load = cluster.client!.load(LOAD);
    await sleep(2_000);
    await Promise.all(cluster.etcd.map((m) => m.kill().catch(() => {})));
    const result = await load;
    const samples = await watch.stop();

    const notReady = notReadySamples(samples);
    recordFigure({ scenario: SCENARIO, figure: "all killed: client connections", value: result.total });
    recordFigure({ scenario: SCENARIO, figure: "all killed: failed connections", value: result.failed, bound: "= 0" });
    recordFigure({ scenario: SCENARIO, figure: "all killed: readiness samples not all ready", value: notReady, bound: "= 0" });
    recordFigure({ scenario: SCENARIO, figure: "all killed: samples with a probe unanswered in 2 s (unknown, not counted)", value: `${unknownSamples(samples)} of ${samples.length}` });
    expect(result.failed, JSON.stringify(result.errors)).toBe(0);
    expect(notReady).toBe(0);
    expect(Object.keys(byNode(result)).length).toBe(cluster.nodes.length);

    // etcd back: every node reconnects and sees a change written afterwards.
    const restartedAt = Date.now();
    await Promise.all(cluster.etcd.map((m) => m.start()));
    await waitFor(async () => (await Promise.all(cluster.etcd.map((m) => m.healthy()))).every(Boolean), { timeoutMs: 30_000, intervalMs: 200, message: "etcd healthy again" });
    // A new backend (its own address: duplicates are rejected); nothing listens there, which is fine.
    await cluster.putBackend("web", "late", { address: cluster.backends[0].ip("fabric"), port: 18080 });
    const sawLate = await everyNodeSees(cluster.nodes, (s) => s.services.some((svc) => svc.backends.some((b) => b.id === "late")), {
      timeoutMs: 30_000,
      intervalMs: 200,
      message: "every node sees a backend written after etcd came back",
    });
    const convergedMs = Math.max(...sawLate.values()) - restartedAt;
    recordFigure({ scenario: SCENARIO, figure: "etcd restarted: all nodes converged after", value: convergedMs, unit: "ms", bound: "≤ 30000 ms" });
    await cluster.del(`${cluster.keyPrefix}backends/web/late`);
  });
});
