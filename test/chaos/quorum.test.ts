// Scenario 11 (issue 17): one node's path to one backend is cut inside that node's own network
// namespace (an nft rule dropping its packets to the backend, added through the node's announcer,
// which shares the namespace and has NET_ADMIN), on the health leader, under steady client load
// through the anycast router. 11a, observer quorum (`health.observers: 3`, the default): the backend
// stays up cluster-wide, shown partial, the other nodes keep using it with 0 failed connections, and
// the cut node avoids it locally. 11b, the leader alone (`observers: 1`): the same cut takes the
// backend out on every node, although it answers everyone else; the figures record how soon and how
// much capacity was lost. Both on one cluster of this file, 11b after 11a.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { StateView } from "../../shared/api.js";
import { type ChaosCluster, everyNodeSees, firstSeen, type NodeMember, nodeOf, pinMismatches, sampleEvery, sleep, watchConntrack } from "./cluster.js";
import { figures, formatFigures, recordFigure } from "./figures.js";
import { HEALTH, SHARED_SERVICE, sharedCluster } from "./shared-cluster.js";

const PATH_CUT_QUORUM = "11a path cut on the leader, observers 3";
const PATH_CUT_SINGLE = "11b path cut on the leader, observers 1";
/** How long the cut lasts under load: several health intervals past the fall, so a down would have come. */
const CUT_MS = 12_000;
const LOAD_BEFORE_CUT_MS = 2_000;
/** Every node shows the partial (or, with one observer, the down) within this long of the cut. */
const DECIDED_BOUND_MS = HEALTH.intervalMs * (HEALTH.fall + 2) + 2_000;
const TABLE = "ballast_chaos_cut";

/** Drops everything the node sends to `ip` (probes and proxied connects alike): a bad path, not a dead backend. */
async function cutPath(node: NodeMember, ip: string): Promise<void> {
  await node.announcer!.sh(
    `nft add table ip ${TABLE} && nft add chain ip ${TABLE} out '{ type filter hook output priority 0; }' && nft add rule ip ${TABLE} out ip daddr ${ip} drop`,
  );
}

async function healPath(node: NodeMember): Promise<void> {
  await node.announcer!.exec(["nft", "delete", "table", "ip", TABLE]);
}

const backendOf = (s: StateView, id: string) => s.services.find((x) => x.name === "web")?.backends.find((b) => b.id === id);

/** What every node shows of the cut backend, sampled during the cut. */
interface CutSample {
  at: number;
  views: Record<string, { routable: boolean; state: string | undefined; partial: boolean; ejected: boolean }>;
}

function sampleBackend(c: ChaosCluster, id: string) {
  return sampleEvery(250, async (): Promise<CutSample> => {
    const states = await Promise.all(c.nodes.map((n) => n.state()));
    const views: CutSample["views"] = {};
    states.forEach((s, i) => {
      const b = backendOf(s, id);
      views[c.nodes[i].nodeId] = { routable: b?.routable === true, state: b?.verdict?.state, partial: b?.verdict?.partial === true, ejected: b?.ejected === true };
    });
    return { at: Date.now(), views };
  });
}

/** The backend answers directly from the test host (over the fabric bridge): it is healthy; only the one path is cut. */
async function answersDirectly(ip: string): Promise<boolean> {
  try {
    const res = await fetch(`http://${ip}:8080/`, { signal: AbortSignal.timeout(1_000) });
    await res.arrayBuffer();
    return res.ok;
  } catch {
    return false;
  }
}

const cluster = sharedCluster();

describe(PATH_CUT_QUORUM, () => {
  beforeAll(() => cluster().restore());
  afterAll(() => {
    process.stdout.write(`\n${formatFigures(figures(PATH_CUT_QUORUM))}`);
  });

  it("stays up cluster-wide, shown partial; 0 failed connections through the other nodes; the cut node avoids it", async () => {
    const c = cluster();
    const leader = (await c.healthLeader())!;
    expect(leader, "a health leader").toBeDefined();
    const victim = c.backends[0];
    const id = c.backendId(victim);
    const victimIp = victim.ip("fabric");
    const leaderIp = leader.ip("fabric");

    const pins = watchConntrack(c);
    const loading = c.client!.load({ durationMs: LOAD_BEFORE_CUT_MS + CUT_MS, concurrency: 8, timeoutMs: 2_000 });
    await sleep(LOAD_BEFORE_CUT_MS);
    const watch = sampleBackend(c, id);
    let cutAt = 0;
    let load: Awaited<typeof loading>;
    let partialAt: Map<string, number>;
    let avoidedAt: Map<string, number>;
    let samples: CutSample[];
    let pinned: Map<string, string>;
    let answered = false;
    try {
      await cutPath(leader, victimIp);
      cutAt = Date.now();
      const seenPartial = firstSeen(c.nodes, (s) => backendOf(s, id)?.verdict?.partial === true, { timeoutMs: CUT_MS, intervalMs: 100 });
      const seenAvoided = firstSeen([leader], (s) => backendOf(s, id)?.ejected === true, { timeoutMs: CUT_MS, intervalMs: 100 });
      [partialAt, avoidedAt] = await Promise.all([seenPartial, seenAvoided]);
      answered = await answersDirectly(victimIp);
      load = await loading;
      [samples, pinned] = await Promise.all([watch.stop(), pins.stop()]);
    } finally {
      await healPath(leader);
    }
    const verdict = (await c.verdicts()).get(id);

    // Connections by the node the router pinned them to; "after avoidance" = started once the cut node showed it avoided.
    const avoidAt = avoidedAt.get(leader.nodeId) ?? Number.POSITIVE_INFINITY;
    const nodeIps = new Set(c.nodes.map((n) => n.ip("fabric")));
    const viaCut = load.connections.filter((x) => nodeOf(x, pinned, nodeIps) === leaderIp);
    const viaOthers = load.connections.filter((x) => nodeOf(x, pinned, nodeIps) !== leaderIp);
    const duringCut = (x: { start: number }) => load.t0 + x.start >= cutAt;
    const othersToVictim = viaOthers.filter((x) => duringCut(x) && x.ok && x.backends.includes(id)).length;
    const cutToVictim = viaCut.filter((x) => load.t0 + x.start >= avoidAt && x.backends.includes(id)).length;
    const cutFailedBefore = viaCut.filter((x) => !x.ok && load.t0 + x.start < avoidAt).length;
    const cutFailedAfter = viaCut.filter((x) => !x.ok && load.t0 + x.start >= avoidAt).length;
    const othersFailed = viaOthers.filter((x) => !x.ok);
    const downSamples = samples.filter((s) => Object.values(s.views).some((v) => v.state === "down" || !v.routable));
    const partialMs = [...partialAt.values()].length === c.nodes.length ? Math.max(...partialAt.values()) - cutAt : Number.POSITIVE_INFINITY;

    const rec = (figure: string, value: number | string, unit?: string, bound?: string) => recordFigure({ scenario: PATH_CUT_QUORUM, figure, value, unit, bound });
    rec("cut: leader → backend", `${leader.nodeId} → ${id} for ${CUT_MS} ms (nft drop in ${leader.nodeId}'s netns)`);
    rec("shown partial on every node after", Number.isFinite(partialMs) ? partialMs : "never", "ms", `≤ ${DECIDED_BOUND_MS} ms`);
    rec("cut node avoids it locally after", Number.isFinite(avoidAt) ? avoidAt - cutAt : "never", "ms");
    rec("verdict in etcd", `${verdict?.state}${verdict?.partial ? " partial" : ""}, quorum ${verdict?.quorum}, votes ${JSON.stringify(verdict?.votes)}`, undefined, "up partial");
    rec("samples with the backend down or unroutable on any node", `${downSamples.length} of ${samples.length}`, undefined, "0");
    rec("connections through the other nodes / failed", `${viaOthers.length} / ${othersFailed.length}`, undefined, "… / 0");
    rec("  of them served by the cut backend during the cut", othersToVictim, undefined, "> 0");
    rec("connections through the cut node / failed before / after it avoided the backend", `${viaCut.length} / ${cutFailedBefore} / ${cutFailedAfter}`, undefined, "… / … / 0");
    rec("  sent to the cut backend by the cut node after it avoided it", cutToVictim, undefined, "0");
    rec("answered through another node than the router's pin (attributed by the answer)", pinMismatches(load.connections, pinned, nodeIps));

    expect(answered, "the backend answers the test host directly").toBe(true);
    expect(partialMs).toBeLessThanOrEqual(DECIDED_BOUND_MS);
    expect(verdict?.state).toBe("up");
    expect(verdict?.partial).toBe(true);
    expect(samples.length).toBeGreaterThan(0);
    expect(downSamples).toEqual([]);
    expect(othersFailed.map((x) => x.err)).toEqual([]);
    expect(othersToVictim).toBeGreaterThan(0);
    expect(Number.isFinite(avoidAt)).toBe(true);
    expect(cutFailedAfter).toBe(0);
    expect(cutToVictim).toBe(0);

    // Healed: the partial clears (every observer passes it again).
    await everyNodeSees(c.nodes, (s) => backendOf(s, id)?.verdict?.partial !== true && backendOf(s, id)?.routable === true, {
      timeoutMs: 20_000,
      intervalMs: 200,
      message: "the partial clearing after the cut healed",
    });
  });
});

describe(PATH_CUT_SINGLE, () => {
  beforeAll(() => cluster().restore());
  afterAll(async () => {
    // Back to the default (observers 3) for whatever runs next on this cluster.
    await cluster()
      .putService("web", SHARED_SERVICE)
      .catch(() => {});
    process.stdout.write(`\n${formatFigures(figures(PATH_CUT_SINGLE))}`);
  });

  it("the same cut on the leader takes the backend out on every node", async () => {
    const c = cluster();
    await c.putService("web", { ...SHARED_SERVICE, health: { ...SHARED_SERVICE.health, observers: 1 } });
    const applied = await c.revision();
    await everyNodeSees(c.nodes, (s) => s.revision >= applied, { timeoutMs: 10_000, intervalMs: 100, message: "every node at the observers: 1 revision" });
    await c.baseline();
    const leader = (await c.healthLeader())!;
    expect(leader, "a health leader").toBeDefined();
    const victim = c.backends[0];
    const id = c.backendId(victim);
    const victimIp = victim.ip("fabric");
    const leaderIp = leader.ip("fabric");
    const routableBefore = (await Promise.all(c.nodes.map((n) => n.state()))).map((s) => s.services[0].backends.filter((b) => b.routable).length);

    const pins = watchConntrack(c);
    const loading = c.client!.load({ durationMs: LOAD_BEFORE_CUT_MS + CUT_MS, concurrency: 8, timeoutMs: 2_000 });
    await sleep(LOAD_BEFORE_CUT_MS);
    let cutAt = 0;
    let downAt: Map<string, number>;
    let load: Awaited<typeof loading>;
    let pinned: Map<string, string>;
    let answered = false;
    let routableDuring: number[] = [];
    try {
      await cutPath(leader, victimIp);
      cutAt = Date.now();
      downAt = await firstSeen(c.nodes, (s) => backendOf(s, id)?.routable === false && backendOf(s, id)?.verdict?.state === "down", { timeoutMs: CUT_MS, intervalMs: 100 });
      answered = await answersDirectly(victimIp);
      routableDuring = (await Promise.all(c.nodes.map((n) => n.state()))).map((s) => s.services[0].backends.filter((b) => b.routable).length);
      load = await loading;
      pinned = await pins.stop();
    } finally {
      await healPath(leader);
    }
    const verdict = (await c.verdicts()).get(id);
    const allDownAt = downAt.size === c.nodes.length ? Math.max(...downAt.values()) : Number.POSITIVE_INFINITY;
    const downMs = allDownAt - cutAt;
    const nodeIps = new Set(c.nodes.map((n) => n.ip("fabric")));
    const viaOthers = load.connections.filter((x) => nodeOf(x, pinned, nodeIps) !== leaderIp);
    const othersToVictimAfterDown = viaOthers.filter((x) => load.t0 + x.start >= allDownAt && x.backends.includes(id)).length;
    const othersAfterDown = viaOthers.filter((x) => load.t0 + x.start >= allDownAt && x.ok).length;
    const before = routableBefore.reduce((a, b) => a + b, 0);
    const during = routableDuring.reduce((a, b) => a + b, 0);

    const rec = (figure: string, value: number | string, unit?: string, bound?: string) => recordFigure({ scenario: PATH_CUT_SINGLE, figure, value, unit, bound });
    rec("cut: leader → backend", `${leader.nodeId} → ${id} for ${CUT_MS} ms (nft drop in ${leader.nodeId}'s netns)`);
    rec("down on every node after", Number.isFinite(downMs) ? downMs : "never", "ms");
    rec("  per node", c.nodes.map((n) => `${n.nodeId} ${downAt.has(n.nodeId) ? downAt.get(n.nodeId)! - cutAt : "never"}`).join(", "), "ms");
    rec("verdict in etcd", `${verdict?.state} by ${verdict?.checker} (${verdict?.reason})`, undefined, "down (the problem)");
    rec("routable backends, all nodes summed: before / during", `${before} / ${during}`);
    rec("capacity lost cluster-wide", before > 0 ? `${Math.round((100 * (before - during)) / before)} %` : "n/a");
    rec("connections through the other nodes after the down / to the cut backend", `${othersAfterDown} / ${othersToVictimAfterDown}`, undefined, "… / 0");
    rec("client connections / failed (all nodes)", `${load.total} / ${load.failed}`);

    expect(answered, "the backend answers the test host directly").toBe(true);
    expect(Number.isFinite(downMs), `down on [${[...downAt.keys()]}] only`).toBe(true);
    expect(verdict?.state).toBe("down");
    expect(verdict?.checker).toBe(leader.nodeId);
    expect(othersToVictimAfterDown).toBe(0);
    expect(during).toBeLessThan(before);

    await c.putService("web", SHARED_SERVICE);
    await everyNodeSees(c.nodes, (s) => backendOf(s, id)?.routable === true, { timeoutMs: 20_000, intervalMs: 200, message: "the backend back up after the cut healed" });
  });
});
