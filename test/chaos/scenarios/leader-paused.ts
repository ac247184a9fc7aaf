// Scenario 5: the health leader freezes (docker pause) while a backend goes down. Its lease expires,
// another node is elected and writes the verdict. Unfrozen, the old leader still believes it leads
// for a moment and its timers fire; every write it makes is fenced (a transaction comparing its own
// election key, which is gone), so etcd's history holds no heartbeat or verdict of it after the
// revision that deleted its election key.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { waitFor } from "../../helpers/wait.js";
import { type ChaosCluster, sleep } from "../cluster.js";
import { figures, formatFigures, recordFigure } from "../figures.js";
import { HEALTH, LEASE_TTL_S } from "../shared-cluster.js";

export const LEADER_PAUSED = "5 health leader paused";
const ELECTION_BOUND_MS = LEASE_TTL_S * 1_000 + 1_000;
/** After the unpause: long enough for the old leader's heartbeat timer and a full round of its checks. */
const AFTER_UNPAUSE_MS = 3 * HEALTH.intervalMs * Math.max(HEALTH.rise, HEALTH.fall);

export function leaderPaused(cluster: () => ChaosCluster): void {
  describe(LEADER_PAUSED, () => {
    beforeAll(() => cluster().restore());
    afterAll(() => {
      process.stdout.write(`\n${formatFigures(figures(LEADER_PAUSED))}`);
    });

    it("a new leader is elected; none of the old leader's writes is accepted after it was deposed", async () => {
      const c = cluster();
      const old = await c.healthLeader();
      expect(old, "a health leader").toBeDefined();
      const others = c.nodes.filter((n) => n !== old);
      const flipped = c.backends[2];
      const flippedId = c.backendId(flipped);
      const fromRevision = (await c.revision()) + 1;
      const fencedBefore = await old!.metric("ballast_health_fenced_writes_total", 'result="refused"');

      await old!.pause();
      const pausedAt = Date.now();
      // Something for the old leader to write once it runs again: its checks will see this backend fail.
      await c.setBackendHealthy(flipped, false);
      let successor: ChaosCluster["nodes"][number] | undefined;
      await waitFor(
        async () => {
          successor = await c.healthLeader(others);
          return successor !== undefined;
        },
        { timeoutMs: 20_000, intervalMs: 100, message: "a new health leader" },
      );
      await waitFor(async () => (await c.verdicts()).get(flippedId)?.state === "down", { timeoutMs: 10_000, intervalMs: 100, message: "the new leader's down verdict" });

      const unpausedAt = Date.now();
      await old!.unpause();
      await waitFor(
        async () => {
          const s = await old!.state();
          return !s.health.isLeader && s.health.leader === successor!.nodeId;
        },
        { timeoutMs: 15_000, intervalMs: 50, message: "the old leader following the new one" },
      );
      const followingMs = Date.now() - unpausedAt;
      await sleep(AFTER_UNPAUSE_MS);
      const fencedAfter = await old!.metric("ballast_health_fenced_writes_total", 'result="refused"');
      const stepDown = (await old!.logEvents()).find((e) => e.at >= pausedAt && e.msg === "health-check leader stepped down");

      const events = await c.history("health/", fromRevision);
      // The old leader's election key is deleted when its lease expires: from then on it is deposed.
      const deposedAt = events.find((e) => e.type === "delete" && e.key.includes("/health/election/") && e.prev?.toString() === old!.nodeId);
      const deposedRevision = deposedAt?.revision ?? Number.POSITIVE_INFINITY;
      const byOld = events.filter(
        (e) => e.type === "put" && ((e.key.endsWith("/health/heartbeat") && e.value?.leader === old!.nodeId) || (e.key.includes("/health/verdicts/") && e.value?.checker === old!.nodeId)),
      );
      const acceptedAfter = byOld.filter((e) => e.revision > deposedRevision);
      const successorHeartbeats = events.filter((e) => e.type === "put" && e.key.endsWith("/health/heartbeat") && e.value?.leader === successor!.nodeId);
      const electedMs = successorHeartbeats.length ? Number(successorHeartbeats[0].value!.at) - pausedAt : Number.NaN;
      const lastHeartbeat = events.filter((e) => e.type === "put" && e.key.endsWith("/health/heartbeat")).at(-1);
      const verdict = (await c.verdicts()).get(flippedId);

      const rec = (figure: string, value: number | string, unit?: string, bound?: string) => recordFigure({ scenario: LEADER_PAUSED, figure, value, unit, bound });
      rec("new leader elected after the pause", electedMs, "ms", `≤ ${ELECTION_BOUND_MS} ms`);
      rec("old leader's election key deleted at revision", deposedAt ? deposedAt.revision : "never");
      rec("old leader's writes accepted before / after that", `${byOld.length - acceptedAfter.length} / ${acceptedAfter.length}`, undefined, "… / 0");
      rec("old leader's fenced writes refused after the unpause", fencedAfter - fencedBefore);
      rec("old leader following the new one after the unpause", followingMs, "ms");
      rec("old leader's step-down reason", String(stepDown?.reason ?? "none logged"));
      rec("heartbeat now / flipped verdict now", `leader ${String(lastHeartbeat?.value?.leader)} / ${verdict?.state} by ${verdict?.checker}`);

      expect(deposedAt, "the old leader's election key deleted").toBeDefined();
      expect(acceptedAfter.map((e) => `${e.key}@${e.revision}`)).toEqual([]);
      expect(successor!.nodeId).not.toBe(old!.nodeId);
      expect(electedMs).toBeLessThanOrEqual(ELECTION_BOUND_MS);
      expect(lastHeartbeat?.value?.leader).toBe(successor!.nodeId);
      expect(verdict?.state).toBe("down");
      expect(verdict?.checker).toBe(successor!.nodeId);
    });
  });
}
