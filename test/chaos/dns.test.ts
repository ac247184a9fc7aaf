// Scenario 10: no anycast; clients find the nodes through the nodes' own DNS responders. Each client
// (a source address) has a stub resolver naming every node, caches the answer for its TTL and connects
// to the first address. One node (not the health leader) is SIGKILLed under that load. The design's
// bound: the killed node leaves every responder's answers within its lease TTL (its node record
// expires), and clients stop reaching for it within lease TTL + record TTL (their cached answers
// expire); only connections sent to it may fail, and none after that bound.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type DnsCluster, publicAddressOf, startDnsCluster } from "./dns-cluster.js";
import { sleep } from "./cluster.js";
import { figures, formatFigures, recordFigure } from "./figures.js";
import { LEASE_TTL_S, SHARED_SERVICE } from "./shared-cluster.js";

const SCENARIO = "10 node killed, clients resolving through the nodes' DNS";
const RECORD_TTL_S = 2;
/** etcd revokes expired leases on its leader's next check (~500 ms), then the watch and the view rebuild: slack for a loaded 2-core machine. */
const SLACK_MS = 2_000;
const LEFT_ANSWERS_BOUND_MS = LEASE_TTL_S * 1000 + SLACK_MS;
const LEFT_CLIENTS_BOUND_MS = (LEASE_TTL_S + RECORD_TTL_S) * 1000 + SLACK_MS;
const LOAD = { name: "web.lb.chaos", durationMs: 16_000, gapMs: 100, connectTimeoutMs: 1_000, dnsTimeoutMs: 500, probeIntervalMs: 100 };
const KILL_AFTER_MS = 4_000;
/** Time for `docker exec` to start the client before the load's agreed start. */
const EXEC_SLACK_MS = 2_000;

describe(SCENARIO, () => {
  let d: DnsCluster;

  beforeAll(async () => {
    const t = Date.now();
    d = await startDnsCluster({
      etcdMembers: 3,
      nodes: 3,
      backends: 2,
      leaseTtl: LEASE_TTL_S,
      service: SHARED_SERVICE,
      dns: { zone: "lb.chaos", ttl: RECORD_TTL_S },
      clientSources: 16,
    });
    await d.cluster.baseline();
    recordFigure({ scenario: "dns cluster", figure: "start to baseline (3 etcd, 3 nodes with DNS, 2 backends, client; no anycast)", value: Date.now() - t, unit: "ms" });
  });
  afterAll(async () => {
    process.stdout.write(`\n${formatFigures(figures(SCENARIO))}`);
    await d?.cluster.destroy();
  });

  it("a killed node leaves the answers within its lease TTL, clients within lease TTL + record TTL; only connections to it fail", async () => {
    const c = d.cluster;
    const leader = await c.healthLeader();
    const victimIndex = c.nodes.findIndex((n) => n !== leader);
    const victim = c.nodes[victimIndex];
    const victimIp = publicAddressOf(c, victimIndex);
    const survivors = d.servers.filter((_, i) => i !== victimIndex);

    const startAt = Date.now() + EXEC_SLACK_MS;
    const loading = d.client.load(d.servers, { ...LOAD, startAt });
    await sleep(startAt + KILL_AFTER_MS - Date.now());
    const killRequestedAt = Date.now();
    await victim.kill();
    const finishedAt = (await victim.times()).finishedAt;
    const load = await loading;

    const conns = load.connections;
    const failed = conns.filter((x) => !x.ok);
    // Durations count from the kill request: the node cannot have died earlier, so no figure below is
    // shorter than the truth (docker records the exit later still, after tearing the container down).
    const killedAt = killRequestedAt;
    const before = conns.filter((x) => x.end < killRequestedAt);
    const after = conns.filter((x) => x.end >= killRequestedAt);
    const failedBefore = before.filter((x) => !x.ok);
    const failedAfter = after.filter((x) => !x.ok);
    const failedElsewhere = failed.filter((x) => x.to !== victimIp);
    const toVictimAfter = after.filter((x) => x.to === victimIp);
    const lastToVictim = Math.max(killedAt, ...toVictimAfter.map((x) => x.start));
    const failedPastBound = failed.filter((x) => x.start > killedAt + LEFT_CLIENTS_BOUND_MS);
    const okPastBound = conns.filter((x) => x.ok && x.start > lastToVictim).length;

    // Answers, as each surviving node's responder gave them to the prober (stamped when the query left).
    const survivorProbes = load.probes.filter((p) => survivors.includes(p.server) && p.addresses !== null);
    const lastNamedBy = survivors.map((s) => {
      const named = survivorProbes.filter((p) => p.server === s && p.at >= killedAt && p.addresses!.includes(victimIp));
      return { server: s, lastNamed: named.length === 0 ? killedAt : Math.max(...named.map((p) => p.at)), probes: survivorProbes.filter((p) => p.server === s).length };
    });
    const answersNamedFor = Math.max(...lastNamedBy.map((x) => x.lastNamed)) - killedAt;
    const clientAnswersNamed = load.resolutions.filter((r) => r.at >= killedAt && r.addresses.includes(victimIp));
    const clientNamedFor = clientAnswersNamed.length === 0 ? 0 : Math.max(...clientAnswersNamed.map((r) => r.at)) - killedAt;
    const resolveFailed = load.resolutions.filter((r) => r.err !== null);
    // A stub whose first server was the dead node waits its timeout, then asks the next one.
    const slowResolutions = load.resolutions.filter((r) => r.at >= killedAt && r.err === null && r.end - r.at >= LOAD.dnsTimeoutMs);

    const perNode = new Map<string, number>();
    for (const x of before) perNode.set(x.to, (perNode.get(x.to) ?? 0) + 1);
    const perNodeText = c.nodes.map((n, i) => `${n.nodeId}${i === victimIndex ? " (killed)" : ""} ${perNode.get(publicAddressOf(c, i)) ?? 0}`).join(", ");

    const rec = (figure: string, value: number | string, unit?: string, bound?: string) => recordFigure({ scenario: SCENARIO, figure, value, unit, bound });
    rec("clients (stub resolvers naming all 3 nodes), record TTL / lease TTL", `${d.client.sources.length}, ${RECORD_TTL_S} s / ${LEASE_TTL_S} s`);
    rec("client connections", conns.length);
    rec("docker recorded the exit after the kill request", finishedAt - killRequestedAt, "ms");
    rec("  per node before the kill", perNodeText);
    rec("answers still named the killed node after the kill (surviving responders)", answersNamedFor, "ms", `≤ ${LEFT_ANSWERS_BOUND_MS} ms (lease TTL + ${SLACK_MS} ms)`);
    rec("  as the clients' own lookups saw it", clientNamedFor, "ms");
    rec("clients still connected to the killed node until", lastToVictim - killedAt, "ms", `≤ ${LEFT_CLIENTS_BOUND_MS} ms (lease + record TTL + ${SLACK_MS} ms)`);
    rec("connections failed after the kill", `${failedAfter.length}/${after.length}`);
    rec("  failed not to the killed node", failedElsewhere.length, undefined, "= 0");
    rec("  failed past lease + record TTL", failedPastBound.length, undefined, "= 0");
    rec("  errors", JSON.stringify(Object.fromEntries([...new Set(failed.map((x) => x.err))].map((e) => [e, failed.filter((x) => x.err === e).length]))));
    rec("failed before the kill", failedBefore.length, undefined, "= 0");
    rec(`lookups after the kill that waited on the dead responder (≥ ${LOAD.dnsTimeoutMs} ms; c-ares ${process.versions.ares}, as in the client image)`, slowResolutions.length);
    rec("lookups that failed", resolveFailed.length);

    const failures = JSON.stringify(failed.slice(0, 20).map((x) => ({ src: x.src, to: x.to, start: x.start - killedAt, end: x.end - killedAt, err: x.err })));
    expect(load.cutShort).toBe(false);
    expect(perNode.get(victimIp) ?? 0, "clients used the victim before the kill").toBeGreaterThan(0);
    expect(failedBefore.length, failures).toBe(0);
    expect(lastNamedBy.every((x) => x.probes > 0), "every surviving responder answered the prober").toBe(true);
    expect(answersNamedFor, JSON.stringify(lastNamedBy.map((x) => ({ ...x, lastNamed: x.lastNamed - killedAt })))).toBeLessThanOrEqual(LEFT_ANSWERS_BOUND_MS);
    expect(lastToVictim - killedAt).toBeLessThanOrEqual(LEFT_CLIENTS_BOUND_MS);
    expect(failedElsewhere.length, failures).toBe(0);
    expect(failedPastBound.length, failures).toBe(0);
    expect(resolveFailed.length, JSON.stringify(resolveFailed.slice(0, 5))).toBe(0);
    expect(okPastBound, "connections succeed after the clients left the killed node").toBeGreaterThan(0);
  });
});
