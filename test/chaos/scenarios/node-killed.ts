// Scenario 1: a node dies (SIGKILL, together with its announcer: the whole machine) under steady
// client load through the VIP. Only connections open on that node may fail; new connections succeed
// again once the router has dropped its route (BFD, ~300 ms); and every client keeps the backend its
// affinity entry names, including entries the dead node made (they live in etcd, not in the node).
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type ChaosCluster, everyNodeSees, nodeOf, sleep, watchConntrack, watchRoutes } from "../cluster.js";
import { figures, formatFigures, recordFigure } from "../figures.js";

export const NODE_KILLED = "1 node killed";
/** BFD drops the route in ~300 ms; the rest is slack for a loaded 2-core machine. */
const RECOVERY_BOUND_MS = 3_000;
const LOAD = { durationMs: 12_000, concurrency: 24, requests: 3, firstHoldMs: 0, holdMs: 500, gapMs: 100, timeoutMs: 2_000 };
const KILL_AFTER_MS = 4_000;
/** Time for `docker exec` to start the load client before the load's agreed start. */
const EXEC_SLACK_MS = 2_000;

export function nodeKilled(cluster: () => ChaosCluster): void {
  describe(NODE_KILLED, () => {
    beforeAll(() => cluster().restore());
    afterAll(() => {
      process.stdout.write(`\n${formatFigures(figures(NODE_KILLED))}`);
    });

    it("only connections open on the dead node fail, new ones recover within the bound, every client keeps its backend", async () => {
      const c = cluster();
      const client = c.client!;
      const leader = await c.healthLeader();
      // Not the health leader: scenario 2 is about that one.
      const victim = c.nodes.find((n) => n !== leader)!;
      const victimIp = victim.ip("fabric");

      // Each client (source address) connects once, one after another, so each gets one affinity
      // entry, made by whichever node the router hashed that connection to.
      const warm = await client.load({ concurrency: 1, connections: client.sources.length, durationMs: 30_000 });
      expect(warm.failed, JSON.stringify(warm.errors)).toBe(0);
      await everyNodeSees(c.nodes, (s) => s.services[0].affinity.entries === client.sources.length, {
        timeoutMs: 10_000,
        intervalMs: 100,
        message: "every node holding every client's affinity entry",
      });
      const entryBackend = new Map<string, string>();
      let madeByVictim = 0;
      for (const src of client.sources) {
        const routes = await Promise.all(c.nodes.map((n) => n.route("web", src)));
        const ids = new Set(routes.map((r) => (r.backend as { id: string } | null)?.id));
        expect(ids.size, `nodes agree on ${src}'s backend: ${JSON.stringify(routes)}`).toBe(1);
        expect(String(routes[0].reason)).toMatch(/^affinity/);
        entryBackend.set(src, [...ids][0]!);
        if (String(routes[0].reason).includes(`from node ${victim.nodeId},`)) madeByVictim++;
      }

      const pins = watchConntrack(c);
      const routes = watchRoutes(c);
      const startAt = Date.now() + EXEC_SLACK_MS;
      const loading = client.load({ ...LOAD, startAt });
      await sleep(startAt + KILL_AFTER_MS - Date.now());
      const killRequestedAt = Date.now();
      await victim.killWithAnnouncer();
      const finishedAt = (await victim.times()).finishedAt;
      const load = await loading;
      const [pinned, routeSamples] = await Promise.all([pins.stop(), routes.stop()]);

      const at = (ms: number) => load.t0 + ms;
      const conns = load.connections.map((conn) => ({ ...conn, node: nodeOf(conn, pinned), startAt: at(conn.start), endAt: at(conn.end) }));
      const failed = conns.filter((x) => !x.ok);
      // The kill lands somewhere between the request and docker's exit time (docker may take seconds
      // to answer on a busy machine); the first connection the kernel closed on the victim is its death.
      const firstFailureOnVictim = Math.min(...failed.filter((x) => x.node === victimIp && x.endAt >= killRequestedAt).map((x) => x.endAt));
      const killedAt = Math.min(finishedAt, firstFailureOnVictim);
      const openOnVictim = conns.filter((x) => x.node === victimIp && x.startAt < killedAt && x.endAt >= killRequestedAt);
      const failedBeforeKill = failed.filter((x) => x.endAt < killRequestedAt);
      const failedOpenOnVictim = failed.filter((x) => x.node === victimIp && x.startAt < killedAt && x.endAt >= killRequestedAt);
      const failedNew = failed.filter((x) => x.startAt >= killedAt);
      const failedElsewhere = failed.filter((x) => x.node !== victimIp);
      const lastFailedNew = failedNew.length === 0 ? killedAt : Math.max(...failedNew.map((x) => x.startAt));
      const recoveredAfterMs = lastFailedNew - killedAt;
      const okAfterRecovery = conns.filter((x) => x.ok && x.startAt > lastFailedNew).length;
      const withdrawn = routeSamples.find((s) => s.t >= killedAt && !s.announced.includes(victimIp));

      // Affinity: every answer a client got, through any node, came from its entry's backend.
      const keptBy = new Map<string, boolean>();
      for (const x of conns) {
        if (!x.src) continue;
        const kept = x.backends.every((b) => b === null || b === entryBackend.get(x.src!));
        keptBy.set(x.src, (keptBy.get(x.src) ?? true) && kept);
      }
      const clientsKept = [...keptBy.values()].filter(Boolean).length;
      const moved = [...keptBy].filter(([, kept]) => !kept).map(([src]) => src);

      const perNode = new Map<string, number>();
      for (const x of conns) if (x.startAt < killRequestedAt) perNode.set(x.node ?? "?", (perNode.get(x.node ?? "?") ?? 0) + 1);
      const perNodeText = c.nodes.map((n) => `${n.nodeId}${n === victim ? " (killed)" : ""} ${perNode.get(n.ip("fabric")) ?? 0}`).join(", ");

      const rec = (figure: string, value: number | string, unit?: string, bound?: string) => recordFigure({ scenario: NODE_KILLED, figure, value, unit, bound });
      rec("client connections", load.total);
      rec("  per node before the kill", perNodeText);
      rec("open on the killed node at the kill", openOnVictim.length);
      rec("  of which failed", failedOpenOnVictim.length, undefined, `≤ ${openOnVictim.length}`);
      rec("failed among connections not on the killed node", failedElsewhere.length, undefined, "= 0");
      rec("failed before the kill", failedBeforeKill.length, undefined, "= 0");
      rec("new connections failed (sent to it before the route went)", failedNew.length);
      rec("route withdrawn at the router after", withdrawn ? withdrawn.t - killedAt : "never", withdrawn ? "ms" : undefined);
      rec("new connections succeed again after", recoveredAfterMs, "ms", `≤ ${RECOVERY_BOUND_MS} ms`);
      rec("clients with affinity entries", entryBackend.size);
      rec("  entries made by the killed node", madeByVictim);
      rec("  clients that kept their backend", `${clientsKept}/${keptBy.size} (${Math.round((100 * clientsKept) / Math.max(1, keptBy.size))}%)`, undefined, "100%");

      const failures = JSON.stringify(failed.slice(0, 20).map((x) => ({ src: x.src, port: x.port, node: x.node, start: x.start, end: x.end, err: x.err })));
      expect(load.cutShort).toBe(false);
      expect(openOnVictim.length, "connections were open on the victim when it died").toBeGreaterThan(0);
      expect(failedBeforeKill.length, failures).toBe(0);
      expect(failedElsewhere.length, failures).toBe(0);
      expect(recoveredAfterMs, failures).toBeLessThanOrEqual(RECOVERY_BOUND_MS);
      expect(okAfterRecovery, "connections after the recovery").toBeGreaterThan(0);
      expect(withdrawn, "the router dropped the dead node's route").toBeDefined();
      expect(madeByVictim, "some entries were made by the killed node").toBeGreaterThan(0);
      expect(keptBy.size).toBe(client.sources.length);
      expect(moved, "clients whose backend changed").toEqual([]);
    });
  });
}
