// Scenario 12 (issue 17): `ballast rollout restart` of all three nodes under steady client load
// through the anycast router. The CLI runs on the test host (as an operator's would), reaching etcd
// and the nodes' admin API at the addresses in their node records (fixed fabric addresses, advertised);
// its restart hook stops the node's BIRD announcer, restarts the node's container, and starts the
// announcer again (it lives in the node's network namespace, so it must join the new one). Asserted: 0 failed client
// connections, the rollout done with every node, and at most one node out (not ready, draining, or
// not answering its /api/state) in every sample. Printed: the figures table per node (drain, restart,
// back to ready, connections served) and the router's view (how many next hops at worst).
import { mkdirSync, writeFileSync } from "node:fs";
import { resolve } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parseRolloutValue } from "../../shared/rollout.js";
import { ballastCli } from "../helpers/cli.js";
import { byNode, ChaosCluster, type LoadResult, nodeOf, sampleEvery, watchConntrack } from "./cluster.js";
import { figures, formatFigures, recordFigure } from "./figures.js";
import { LEASE_TTL_S, SHARED_SERVICE } from "./shared-cluster.js";

const ROLLOUT = "12 rolling restart";
/**
 * Each chunk of client load; chunks follow each other until the rollout has ended. A request may take
 * 5 s: at load 20–35 on this 2-core machine, 37 of 2495 requests took over 2 s on all three nodes
 * alike (draining or not), which says how busy the machine was, not what a rollout does.
 */
const LOAD_CHUNK = { durationMs: 8_000, concurrency: 8, timeoutMs: 5_000 } as const;
/** Bound of every wait of the rollout (drained, back, ready) and of the hook, in seconds. */
const ROLLOUT_TIMEOUT_S = 120;

let cluster: ChaosCluster | undefined;
beforeAll(async () => {
  const t = Date.now();
  // BFD off: nodes leave gracefully here (withdraw, then stop), and on this shared 2-core machine at
  // load 13–21 BFD's 300 ms detection flapped every session at once (the router had no next hop for
  // the VIP; clients got EHOSTUNREACH). Probes get 1 s for the same reason: the backends are not the point.
  const service = { ...SHARED_SERVICE, health: { ...SHARED_SERVICE.health, timeout: "1s" } };
  // Announcers withdraw after 3 failed readiness polls, not 1: at load ~24 single polls timed out and
  // withdrew healthy nodes (the router's next hops went 3 → 1 with no node out). A draining node's
  // listeners then stay open 3 s (withdrawDelay), so it is withdrawn before they close.
  cluster = await ChaosCluster.start({
    etcdMembers: 3,
    nodes: 3,
    backends: 3,
    anycast: true,
    service,
    leaseTtl: LEASE_TTL_S,
    fixedNodeAddresses: true,
    bfd: false,
    announcerFall: 3,
    nodeConfig: () => ({ withdrawDelay: "3s" }),
  });
  await cluster.baseline();
  recordFigure({ scenario: ROLLOUT, figure: "start to baseline (3 etcd, 3 nodes at fixed addresses, 3 backends, router, client)", value: Date.now() - t, unit: "ms" });
});
afterAll(async () => {
  await cluster?.destroy();
  process.stdout.write(`\n${formatFigures(figures(ROLLOUT))}`);
});

interface OutSample {
  at: number;
  /** Nodes not ready, draining, or not answering. */
  out: string[];
  /** Next hops the router has for the VIP. */
  announced: number;
}

describe(ROLLOUT, () => {
  it("restarts every node in turn under load: 0 failed connections, at most one node out at any moment", async () => {
    const c = cluster!;
    const etcd = c.etcd.map((m) => `http://${m.ip("ctl")}:2379`).join(",");
    const cli = ballastCli(() => etcd, c.opts.cluster);
    // The announcer first: stopped, it withdraws and closes its BGP session with a Cease, which the
    // router takes as a clean end. Stopping the node first took the announcer's interface away instead:
    // the router saw its hold timer expire, an error after which BIRD refuses that peer for its error
    // wait (60 s by default), so a restarted node stayed out of the router's route long after it was
    // ready again (two runs: the router had no next hop left when the third node drained).
    const hook = `docker stop -t 5 ${c.prefix}-{node}-bird >/dev/null && docker restart -t 15 ${c.prefix}-{node} >/dev/null && docker start ${c.prefix}-{node}-bird >/dev/null`;

    const pins = watchConntrack(c);
    const outWatch = sampleEvery(250, async (): Promise<OutSample> => {
      const [views, announced] = await Promise.all([
        Promise.all(c.nodes.map((n) => n.state().then((s) => (s.node.ready && !s.node.draining ? null : n.nodeId), () => n.nodeId))),
        c.announcedNodes().then((a) => a.length, () => -1),
      ]);
      return { at: Date.now(), out: views.filter((v): v is string => v !== null), announced };
    });
    const loads: LoadResult[] = [];
    /** Chunks whose client did not report (killed by its time bound on an overloaded machine): their connections are unknown. */
    const lostChunks: string[] = [];
    let rolling = true;
    const loading = (async () => {
      // Bounded: stops with the rollout, or after the rollout's own bound for three nodes.
      const until = Date.now() + 3 * 3 * ROLLOUT_TIMEOUT_S * 1000;
      while (rolling && Date.now() < until) {
        const at = new Date().toISOString();
        await c.client!.load(LOAD_CHUNK).then(
          (l) => loads.push(l),
          (err: Error) => lostChunks.push(`${at}: ${err.message.slice(0, 200)}`),
        );
      }
    })();

    const startedAt = Date.now();
    const result = await cli("rollout", "restart", "--restart-cmd", hook, "--timeout", String(ROLLOUT_TIMEOUT_S)).finally(() => {
      rolling = false;
    });
    const rolloutMs = Date.now() - startedAt;
    await loading;
    const [samples, pinned] = await Promise.all([outWatch.stop(), pins.stop()]);
    const stateKv = (await c.list(`${c.keyPrefix}rollout/state`))[0];
    const state = stateKv ? parseRolloutValue(stateKv.value) : null;

    const connections = loads.flatMap((l) => l.connections.map((x) => ({ x, t0: l.t0 })));
    const failed = connections.filter(({ x }) => !x.ok);
    const served = loads.map(byNode).reduce<Record<string, number>>((acc, m) => {
      for (const [ip, n] of Object.entries(m)) acc[ip] = (acc[ip] ?? 0) + n;
      return acc;
    }, {});
    const failedBy = (ip: string) => failed.filter(({ x }) => nodeOf(x, pinned) === ip).length;
    const maxOut = Math.max(0, ...samples.map((s) => s.out.length));
    const worstRouter = Math.min(c.nodes.length, ...samples.filter((s) => s.announced >= 0).map((s) => s.announced));
    const twoOut = samples.filter((s) => s.out.length > 1);
    // The raw timeline, for reading a failure: samples, and each failed connection's start and error.
    const dir = resolve(process.cwd(), "test-artifacts/chaos", c.run);
    mkdirSync(dir, { recursive: true });
    writeFileSync(
      resolve(dir, "rollout-timeline.json"),
      JSON.stringify({ output: result.stdout, lostChunks, samples, failed: failed.map(({ x, t0 }) => ({ at: new Date(t0 + x.start).toISOString(), err: x.err, node: nodeOf(x, pinned) })) }, null, 1),
    );

    const rec = (figure: string, value: number | string, unit?: string, bound?: string) => recordFigure({ scenario: ROLLOUT, figure, value, unit, bound });
    rec("rollout", `${state?.status ?? "no state"}: ${state?.done.join(", ") ?? ""} in ${rolloutMs} ms (CLI exit ${result.code})`, undefined, "done: n1, n2, n3");
    for (const n of c.nodes) {
      const step = state?.steps.find((s) => s.node === n.nodeId);
      const ip = n.ip("fabric");
      rec(
        `  ${n.nodeId}: drain / restart / back to ready; open at drain / cut; connections served / failed`,
        step ? `${step.drainMs} / ${step.restartMs} / ${step.readyMs} ms; ${step.openAtStart} / ${step.cut}; ${served[ip] ?? 0} / ${failedBy(ip)}` : `no step; ${served[ip] ?? 0} / ${failedBy(ip)}`,
      );
    }
    rec("client connections / failed", `${connections.length} / ${failed.length}`, undefined, "… / 0");
    rec("load chunks (8 s each) that did not report", `${lostChunks.length} of ${loads.length + lostChunks.length}`, undefined, "0");
    rec("most nodes out at once (samples of /api/state every 250 ms)", `${maxOut} (${samples.length} samples)`, undefined, "≤ 1");
    rec("fewest next hops at the router during the rollout", worstRouter);

    expect(result.code, `${result.stdout}\n${result.stderr}`).toBe(0);
    expect(state?.status).toBe("done");
    expect([...(state?.done ?? [])].sort()).toEqual(c.nodes.map((n) => n.nodeId).sort());
    expect(failed.map(({ x }) => x.err)).toEqual([]);
    expect(lostChunks).toEqual([]);
    expect(samples.length).toBeGreaterThan(0);
    expect(twoOut).toEqual([]);
    // Every node was out at some point (the samples saw the rollout), and served again afterwards.
    expect(new Set(samples.flatMap((s) => s.out))).toEqual(new Set(c.nodes.map((n) => n.nodeId)));
    await c.baseline();
  }, 420_000);
});
