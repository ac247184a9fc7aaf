// Scenario 7: a backend flaps, failing and passing its health check alternately every second, under
// client load. Checks run every second and a verdict changes only after `rise`/`fall` agreeing results,
// so the verdict changes far less often than the backend does, every verdict written carries a count
// of at least rise/fall, and no node crashes, restarts, logs an error or stops being ready.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type ChaosCluster, notReadySamples, sampleEvery, sleep, unknownSamples, watchReadiness } from "../cluster.js";
import { figures, formatFigures, recordFigure } from "../figures.js";
import { HEALTH } from "../shared-cluster.js";

export const FLAPPING = "7 flapping backend";
const TOGGLES = 12;
const PERIOD_MS = 1_000;
/** With one check per second, a verdict change needs min(rise, fall) agreeing checks: at most this many. */
const MAX_VERDICT_CHANGES = Math.floor(TOGGLES / 2);

export function flappingBackend(cluster: () => ChaosCluster): void {
  describe(FLAPPING, () => {
    beforeAll(() => cluster().restore());
    afterAll(() => {
      process.stdout.write(`\n${formatFigures(figures(FLAPPING))}`);
    });

    it("verdict changes damped by rise/fall, no node crashes", async () => {
      const c = cluster();
      const flapper = c.backends[2];
      const id = c.backendId(flapper);
      const leader = await c.healthLeader();
      const startedBefore = await Promise.all(c.nodes.map((n) => n.times()));
      const fromRevision = (await c.revision()) + 1;
      const t0 = Date.now();

      // Each node's routing of the flapper, sampled: how often it went in and out of rotation.
      const routable = new Map<string, boolean[]>(c.nodes.map((n) => [n.nodeId, []]));
      const sampler = sampleEvery(200, async () => {
        await Promise.all(
          c.nodes.map(async (n) => {
            const b = (await n.state().catch(() => null))?.services[0].backends.find((x) => x.id === id);
            if (b) routable.get(n.nodeId)!.push(b.routable);
          }),
        );
        return undefined;
      });
      const readiness = watchReadiness(c);
      const loading = c.client!.load({ durationMs: TOGGLES * PERIOD_MS + 1_000, concurrency: 4, timeoutMs: 2_000 });
      for (let i = 0; i < TOGGLES; i++) {
        await c.setBackendHealthy(flapper, i % 2 === 1);
        await sleep(Math.max(0, t0 + (i + 1) * PERIOD_MS - Date.now()));
      }
      await c.setBackendHealthy(flapper, true);
      const load = await loading;
      await sampler.stop();
      const samples = await readiness.stop();

      const writes = (await c.history(`health/verdicts/web/${id}`, fromRevision)).filter((e) => e.type === "put");
      const undamped = writes.filter((e) => Number(e.value?.count) < (e.value?.state === "up" ? HEALTH.rise : HEALTH.fall));
      const transitions = [...routable.values()].map((xs) => xs.filter((x, i) => i > 0 && x !== xs[i - 1]).length);
      const startedAfter = await Promise.all(c.nodes.map((n) => n.times()));
      const restarted = c.nodes.filter((_, i) => !startedAfter[i].running || startedAfter[i].startedAt !== startedBefore[i].startedAt).map((n) => n.nodeId);
      const notReady = notReadySamples(samples);
      const errors = (await Promise.all(c.nodes.map((n) => n.logEvents()))).flat().filter((e) => e.at >= t0 && e.level >= 50);
      const leaderAfter = await c.healthLeader();
      const by503 = load.connections.filter((x) => x.err === "http-503").length;

      const rec = (figure: string, value: number | string, unit?: string, bound?: string) => recordFigure({ scenario: FLAPPING, figure, value, unit, bound });
      rec("backend state changes (1 per second)", TOGGLES);
      rec("verdict changes written", writes.length, undefined, `≤ ${MAX_VERDICT_CHANGES}`);
      rec("  of which with count < rise/fall", undamped.length, undefined, "= 0");
      rec("rotation changes per node (sampled 5/s)", transitions.join(" / "));
      rec("client connections / answered 503 by the flapper / other failures", `${load.total} / ${by503} / ${load.failed - by503}`, undefined, "… / … / 0");
      rec("nodes restarted or crashed / error log lines", `${restarted.length} / ${errors.length}`, undefined, "0 / 0");
      rec("readiness samples not all ready", notReady, undefined, "= 0");
      rec("readiness samples with a probe unanswered in 2 s (unknown, not counted)", `${unknownSamples(samples)} of ${samples.length}`);
      rec("health leader before / after", `${leader?.nodeId} / ${leaderAfter?.nodeId}`);

      expect(writes.length).toBeLessThanOrEqual(MAX_VERDICT_CHANGES);
      expect(undamped).toEqual([]);
      expect(restarted).toEqual([]);
      expect(errors.map((e) => e.msg)).toEqual([]);
      expect(notReady).toBe(0);
      expect(load.failed - by503, JSON.stringify(load.errors)).toBe(0);
      expect(leaderAfter?.nodeId).toBe(leader?.nodeId);
    });
  });
}
