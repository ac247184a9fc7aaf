// forwarding: dsr in containers: the anycast cluster with a DSR service on a second VIP (nodes as
// root with NET_ADMIN in their own network namespaces, backends holding the VIP on lo through
// deploy/dsr/ballast-dsr-backend.sh). The router is not sticky: plain ECMP, so a dead node's flows
// (and some of the others) rehash onto other nodes — which DSR must survive.
//   1d  long-lived connections (one request every 100 ms), one node SIGKILLed with its announcer:
//       every connection keeps working (0 failed), next to the same load in proxy mode
//   9d  a backend added while connections are open: none moved to another backend, none reset
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ChaosCluster, everyNodeSees, type LoadResult, type Member, sleep } from "./cluster.js";
import { figures, formatFigures, recordFigure } from "./figures.js";
import { HEALTH, LEASE_TTL_S, SHARED_SERVICE } from "./shared-cluster.js";

const NODE_KILLED = "1d node killed (long-lived connections)";
const BACKEND_ADDED = "9d backend added under open connections (dsr)";
/** 50 connections, each a request every 100 ms for ~9 s; generous per-request timeout for the failover. */
const LONG_LIVED = { concurrency: 50, connections: 50, durationMs: 3_000, requests: 80, gapMs: 100, holdMs: 0, firstHoldMs: 0, timeoutMs: 5_000 };
const KILL_AFTER_MS = 3_000;
const EXEC_SLACK_MS = 2_000;

/** Connections whose answers came from more than one backend. */
const moved = (load: LoadResult) => load.connections.filter((c) => new Set(c.backends.filter((b) => b !== null)).size > 1);
const failures = (load: LoadResult) => JSON.stringify(load.connections.filter((c) => !c.ok).slice(0, 10).map((c) => ({ src: c.src, port: c.port, answered: c.answered, err: c.err, end: c.end })));

describe("forwarding: dsr in containers", () => {
  let c: ChaosCluster;
  let spare: Member;

  beforeAll(async () => {
    const t = Date.now();
    c = await ChaosCluster.start({ etcdMembers: 3, nodes: 3, backends: 3, anycast: true, service: SHARED_SERVICE, leaseTtl: LEASE_TTL_S, dsr: true, sticky: false });
    // The backend scenario 9d adds: running and holding the VIP, not yet a backend record.
    spare = await c.startBackend("backend4");
    await c.baseline();
    recordFigure({ scenario: "dsr cluster", figure: "start to baseline (3 etcd, 3 nodes as root + NET_ADMIN, 3 backends with the VIP on lo, router not sticky)", value: Date.now() - t, unit: "ms" });
  });
  afterAll(async () => {
    process.stdout.write(`\n${formatFigures([...figures(NODE_KILLED), ...figures(BACKEND_ADDED)])}`);
    await c?.destroy();
  });

  /** Runs the long-lived load against `vip` and SIGKILLs one node (not the health leader) during it. */
  async function killDuringLoad(vip: string): Promise<{ load: LoadResult; victim: string }> {
    await c.restore();
    const leader = await c.healthLeader();
    const victim = c.nodes.find((n) => n !== leader)!;
    const startAt = Date.now() + EXEC_SLACK_MS;
    const loading = c.client!.load({ ...LONG_LIVED, target: `${vip}:8080`, startAt });
    await sleep(startAt + KILL_AFTER_MS - Date.now());
    await victim.killWithAnnouncer();
    return { load: await loading, victim: victim.nodeId };
  }

  it("1d: a node dies under long-lived connections; every DSR connection keeps working (proxy mode alongside)", async () => {
    const dsr = await killDuringLoad(c.dsrVip!);
    const proxy = await killDuringLoad(c.vip!);
    const rec = (figure: string, value: number | string, bound?: string) => recordFigure({ scenario: NODE_KILLED, figure, value, bound });
    rec("connections (each a request every 100 ms, ~9 s)", dsr.load.total);
    rec("dsr: failed connections", dsr.load.failed, "= 0");
    rec("dsr: connections that changed backend", moved(dsr.load).length, "= 0");
    rec("dsr: requests answered", dsr.load.connections.reduce((n, x) => n + x.answered, 0));
    rec("proxy (same load, same rig): failed connections", proxy.load.failed);
    rec("proxy: errors", JSON.stringify(proxy.load.errors));

    expect(dsr.load.cutShort).toBe(false);
    expect(dsr.load.total).toBe(LONG_LIVED.connections);
    expect(dsr.load.failed, failures(dsr.load)).toBe(0);
    expect(moved(dsr.load).map((x) => x.backends.join(","))).toEqual([]);
    // Every connection was still answering after the kill: it made all its requests.
    expect(dsr.load.connections.every((x) => x.answered === LONG_LIVED.requests)).toBe(true);
  });

  it("9d: a backend added while connections are open moves or resets none of them, and takes new ones", async () => {
    await c.restore();
    const id = c.backendId(spare);
    const startAt = Date.now() + EXEC_SLACK_MS;
    const loading = c.client!.load({ ...LONG_LIVED, target: `${c.dsrVip}:8080`, startAt });
    await sleep(startAt + KILL_AFTER_MS - Date.now());
    await c.putBackend("dsr", id, { address: spare.ip("fabric"), port: 8080 });
    // Up on every node (health rise) while the connections are still open.
    await everyNodeSees(c.nodes, (s) => s.services.find((x) => x.name === "dsr")?.backends.find((b) => b.id === id)?.routable === true, {
      timeoutMs: 5 * HEALTH.intervalMs * HEALTH.rise,
      intervalMs: 200,
      message: `${id} routable on every node`,
    });
    const load = await loading;
    const after = await c.client!.load({ target: `${c.dsrVip}:8080`, concurrency: 8, connections: 64, durationMs: 10_000 });

    const rec = (figure: string, value: number | string, bound?: string) => recordFigure({ scenario: BACKEND_ADDED, figure, value, bound });
    rec("connections open when the backend was added", load.total);
    rec("failed (reset or timed out)", load.failed, "= 0");
    rec("moved to another backend", moved(load).length, "= 0");
    rec("new connections afterwards that reached the added backend", `${after.connections.filter((x) => x.backends.includes(id)).length}/${after.total}`, "> 0");

    expect(load.cutShort).toBe(false);
    expect(load.failed, failures(load)).toBe(0);
    expect(moved(load).map((x) => x.backends.join(","))).toEqual([]);
    expect(after.failed).toBe(0);
    expect(after.connections.some((x) => x.backends.includes(id))).toBe(true);
    await c.del(`${c.keyPrefix}backends/dsr/${id}`);
  });
});
