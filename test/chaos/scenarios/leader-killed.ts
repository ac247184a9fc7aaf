// Scenario 2: the health-check leader dies (SIGKILL). Its election key goes with its lease, another
// node wins within the lease TTL (+ 1 s of slack), continues from the verdicts in etcd rather than
// from "unknown", and so rewrites none of them: no backend leaves rotation on any node meanwhile.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { waitFor } from "../../helpers/wait.js";
import { type ChaosCluster, sampleEvery, sleep } from "../cluster.js";
import { figures, formatFigures, recordFigure } from "../figures.js";
import { HEALTH, LEASE_TTL_S } from "../shared-cluster.js";

export const LEADER_KILLED = "2 health leader killed";
const ELECTION_BOUND_MS = LEASE_TTL_S * 1_000 + 1_000;
/** After the new leader's first heartbeat, watch this long for verdict writes and flaps. */
const SETTLE_MS = 3 * HEALTH.intervalMs * Math.max(HEALTH.rise, HEALTH.fall);

export function leaderKilled(cluster: () => ChaosCluster): void {
  describe(LEADER_KILLED, () => {
    beforeAll(() => cluster().restore());
    afterAll(() => {
      process.stdout.write(`\n${formatFigures(figures(LEADER_KILLED))}`);
    });

    it("a new leader within lease TTL + 1 s keeps every verdict, none flaps", async () => {
      const c = cluster();
      const leader = await c.healthLeader();
      expect(leader, "a health leader").toBeDefined();
      const survivors = c.nodes.filter((n) => n !== leader);
      const before = await c.verdicts();
      expect(before.size).toBe(c.backends.length);
      const fromRevision = (await c.revision()) + 1;

      // Every survivor's view of every backend, sampled through the handover: one list of flaps per round.
      const sampler = sampleEvery(200, async () => {
        const states = await Promise.all(survivors.map((n) => n.state().catch(() => null)));
        return states.flatMap((s) => (s?.services[0].backends ?? []).filter((b) => !b.routable || b.verdict?.state !== "up").map((b) => `${s!.node.id}:${b.id} ${b.verdict?.state} ${b.why}`));
      });

      await leader!.killWithAnnouncer();
      const killedAt = (await leader!.times()).finishedAt;
      let successor: ChaosCluster["nodes"][number] | undefined;
      await waitFor(
        async () => {
          successor = await c.healthLeader(survivors);
          return successor !== undefined;
        },
        { timeoutMs: 20_000, intervalMs: 100, message: "a new health leader among the survivors" },
      );
      // The successor's first heartbeat carries its own clock's time of election (same host clock).
      const heartbeats = (await c.history("health/heartbeat", fromRevision)).filter((e) => e.type === "put" && e.value?.leader === successor!.nodeId);
      expect(heartbeats.length, "the new leader's heartbeats in etcd").toBeGreaterThan(0);
      const electedMs = Number(heartbeats[0].value!.at) - killedAt;
      await sleep(SETTLE_MS);
      const rounds = await sampler.stop();
      const samples = rounds.length;
      const flaps = rounds.flat();

      const after = await c.verdicts();
      const writes = await c.history("health/verdicts/", fromRevision);
      const verdictWrites = writes.length;
      const idOf = (key: string) => key.slice(key.lastIndexOf("/") + 1);
      // "Keeps every verdict": no write in the handover may carry another state than the verdict had
      // before it. Rewrites with the same state (votes or quorum only) should not happen either; two
      // causes are fixed and reproduced in test/health/handover.test.ts (an observer without a vote
      // yet; a new leader alone for a moment, the other survivor just restarted and not ready). They
      // stay a figure, not an assertion: 1 of 2 runs of scenarios 1+2 after those fixes still showed
      // 2 such writes (`up quorum ok`, the survivors' two votes) of a cause not yet found; each write
      // is listed with what it replaced, to find it.
      const stateChanging = writes.filter((e) => e.type === "delete" || e.value?.state !== before.get(idOf(e.key))?.state);
      const carried = writes.map((e) => {
        const was = before.get(idOf(e.key));
        return `${idOf(e.key)}: ${String(e.value?.state)} quorum ${String(e.value?.quorum ?? "-")} votes ${JSON.stringify(e.value?.votes ?? null)} (was ${String(was?.state)} quorum ${String(was?.quorum ?? "-")} votes ${JSON.stringify(was?.votes ?? null)})`;
      });
      const changed = [...before].filter(([id, v]) => after.get(id)?.state !== v.state).map(([id]) => id);
      const successorState = await successor!.state();

      const rec = (figure: string, value: number | string, unit?: string, bound?: string) => recordFigure({ scenario: LEADER_KILLED, figure, value, unit, bound });
      rec("new leader elected after", electedMs, "ms", `≤ ${ELECTION_BOUND_MS} ms`);
      rec("verdicts before / after", `${[...before.values()].filter((v) => v.state === "up").length} up / ${[...after.values()].filter((v) => v.state === "up").length} up`);
      rec("verdicts changed", changed.length, undefined, "= 0");
      rec("verdict writes in etcd during the handover", verdictWrites, undefined, "0 wanted");
      rec("  of which changed a verdict's state", stateChanging.length, undefined, "= 0");
      if (carried.length > 0) rec("  what they carried", carried.join("; "));
      rec("survivor samples with a backend out of rotation", `${flaps.length} of ${samples}`, undefined, "= 0");

      expect(successor!.nodeId).not.toBe(leader!.nodeId);
      expect(electedMs).toBeLessThanOrEqual(ELECTION_BOUND_MS);
      expect(changed).toEqual([]);
      expect(stateChanging).toEqual([]);
      expect(flaps).toEqual([]);
      expect(successorState.health.isLeader).toBe(true);
      expect(successorState.node.mode).toBe("shared");
    });
  });
}
