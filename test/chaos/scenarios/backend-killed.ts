// Scenario 3: a backend dies (SIGKILL: its address vanishes, checks time out). The health leader needs
// `fall` failed checks `interval` apart, then one fenced write; every node routes around the backend
// within interval × fall + timeout + 1 s of the kill. Clients whose affinity entry named it are served elsewhere.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type ChaosCluster, firstSeen } from "../cluster.js";
import { figures, formatFigures, recordFigure } from "../figures.js";
import { HEALTH } from "../shared-cluster.js";

export const BACKEND_KILLED = "3 backend killed";
/** A killed backend's address drops probes: each failing probe waits its timeout. */
const DETECTION_BOUND_MS = HEALTH.intervalMs * HEALTH.fall + HEALTH.timeoutMs + 1_000;

export function backendKilled(cluster: () => ChaosCluster): void {
  describe(BACKEND_KILLED, () => {
    beforeAll(() => cluster().restore());
    afterAll(() => {
      process.stdout.write(`\n${formatFigures(figures(BACKEND_KILLED))}`);
    });

    it("out of rotation on every node within interval × fall + timeout + 1 s", async () => {
      const c = cluster();
      const victim = c.backends[1];
      const id = c.backendId(victim);
      const leader = await c.healthLeader();

      // When each node first shows the backend unroutable, polled every 100 ms (stamped on arrival).
      const outOfRotation = firstSeen(c.nodes, (s) => s.services[0].backends.find((x) => x.id === id)?.routable === false, { timeoutMs: 20_000, intervalMs: 100 });
      await victim.kill();
      const killedAt = (await victim.times()).finishedAt;
      const outAt = await outOfRotation;

      const verdict = (await c.verdicts()).get(id);
      const perNode = c.nodes.map((n) => (outAt.has(n.nodeId) ? outAt.get(n.nodeId)! - killedAt : Number.POSITIVE_INFINITY));
      const slowest = Math.max(...perNode);

      // Traffic afterwards: nothing fails, nothing reaches the dead backend.
      const load = await c.client!.load({ durationMs: 3_000, concurrency: 8, timeoutMs: 2_000 });
      const toVictim = load.connections.filter((x) => x.backends.includes(id)).length;

      const rec = (figure: string, value: number | string, unit?: string, bound?: string) => recordFigure({ scenario: BACKEND_KILLED, figure, value, unit, bound });
      rec("out of rotation on every node after", Number.isFinite(slowest) ? slowest : "never", "ms", `≤ ${DETECTION_BOUND_MS} ms`);
      rec("  per node", perNode.map((ms, i) => `${c.nodes[i].nodeId} ${ms}`).join(", "), "ms");
      rec("verdict in etcd", `${verdict?.state} by ${verdict?.checker} (${verdict?.reason})`);
      rec("connections afterwards / failed / to the dead backend", `${load.total} / ${load.failed} / ${toVictim}`, undefined, "… / 0 / 0");

      expect(slowest).toBeLessThanOrEqual(DETECTION_BOUND_MS);
      expect(verdict?.state).toBe("down");
      expect(verdict?.checker).toBe(leader?.nodeId);
      expect(load.failed, JSON.stringify(load.errors)).toBe(0);
      expect(toVictim).toBe(0);
    });
  });
}
