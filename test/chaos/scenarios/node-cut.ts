// Scenario 4: a node loses etcd (disconnected from the control network) while clients keep using
// it through the VIP. It serves on from its last snapshot (fail-static) and stays ready and announced;
// past `staleAfter` it checks backends itself (local fallback). The rest of the cluster moves on (a
// record written meanwhile, its registration expiring). Reconnected, it catches up: the new record,
// the current revision, shared verdicts again, registered again. How soon the cut node itself notices
// (lease, heartbeat, watch stream) is printed from its log, not asserted.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { StateView } from "../../../shared/api.js";
import { waitFor } from "../../helpers/wait.js";
import { type ChaosCluster, everyNodeSees, nodeOf, notAnnouncedSamples, notReadySamples, sleep, unknownSamples, watchConntrack, watchReadiness } from "../cluster.js";
import { figures, formatFigures, recordFigure } from "../figures.js";

export const NODE_CUT = "4 node cut from etcd";
/**
 * Longer than the node's `staleAfter` (10 s default) plus the lease TTL (3 s here) a node that cannot
 * read etcd does not count into the heartbeat's age (issue 19), so the cut node also goes to local
 * fallback, and than gRPC keepalive (10 s + 5 s timeout), the only thing that notices a silent watch stream.
 */
const CUT_MS = 19_000;
const CONVERGE_BOUND_MS = 15_000;
const PROBE_BACKEND = "cut-probe";

export function nodeCut(cluster: () => ChaosCluster): void {
  describe(NODE_CUT, () => {
    beforeAll(() => cluster().restore());
    afterAll(async () => {
      await cluster()
        .del(`${cluster().keyPrefix}backends/web/${PROBE_BACKEND}`)
        .catch(() => {});
      process.stdout.write(`\n${formatFigures(figures(NODE_CUT))}`);
    });

    it("keeps serving while cut, rejoins and converges", async () => {
      const c = cluster();
      const leader = await c.healthLeader();
      const victim = c.nodes.find((n) => n !== leader)!;
      const others = c.nodes.filter((n) => n !== victim);
      const victimIp = victim.ip("fabric");
      const hasProbe = (s: StateView) => s.services[0].backends.some((b) => b.id === PROBE_BACKEND);

      const readiness = watchReadiness(c);
      const pins = watchConntrack(c);
      const loading = c.client!.load({ durationMs: CUT_MS + 4_000, concurrency: 8, timeoutMs: 2_000 });
      await sleep(2_000);
      // Docker's calls can take a second or more here: the cut happens somewhere inside the call, so
      // times "after the cut" count from its start, and "while cut" spans from its end to the reconnect.
      const cutRequestedAt = Date.now();
      await victim.disconnect("ctl");
      const cutAt = Date.now();

      // The cluster moves on without it: a record written now (disabled: no traffic, no checks).
      await c.putBackend("web", PROBE_BACKEND, { address: c.backends[0].ip("fabric"), port: 18081, state: "disabled" });
      const changeRevision = await c.revision();
      await everyNodeSees(others, hasProbe, { timeoutMs: 10_000, intervalMs: 100, message: "the others seeing the new record" });
      const expiredAt = await everyNodeSees(others, (s) => !s.nodes.some((r) => r.id === victim.nodeId), {
        timeoutMs: CUT_MS,
        intervalMs: 200,
        message: "the cut node's registration expiring",
      });
      const expiredMs = Math.max(...expiredAt.values()) - cutRequestedAt;
      await sleep(Math.max(0, cutAt + CUT_MS - Date.now()));
      const during = await victim.state();

      const reconnectedAt = Date.now();
      await victim.connect("ctl");
      let last = "";
      await waitFor(
        async () => {
          const [s, ...o] = await Promise.all([victim.state(), ...others.map((n) => n.state())]);
          const registered = o.every((x) => x.nodes.some((r) => r.id === victim.nodeId));
          last = `connected ${s.store.connected}, revision ${s.revision}/${changeRevision}, mode ${s.node.mode}, registered ${registered}`;
          return s.store.connected && s.revision >= changeRevision && s.node.mode === "shared" && registered && hasProbe(s);
        },
        { timeoutMs: CONVERGE_BOUND_MS + 15_000, intervalMs: 100, message: "the cut node converging" },
      ).catch((err: Error) => {
        throw new Error(`${err.message}: ${last}`);
      });
      const convergedMs = Date.now() - reconnectedAt;
      const load = await loading;
      const [samples, pinned] = await Promise.all([readiness.stop(), pins.stop()]);

      const cutSamples = samples.filter((x) => x.t + readiness.startedAt >= cutAt && x.t + readiness.startedAt <= reconnectedAt);
      const notReady = notReadySamples(cutSamples, victim.nodeId);
      const notAnnounced = notAnnouncedSamples(cutSamples, { ip: victimIp });
      const log = (await victim.logEvents()).filter((e) => e.at >= cutRequestedAt && e.at <= reconnectedAt);
      const sinceCut = (e: { at: number } | undefined) => (e ? `${e.at - cutRequestedAt} ms` : "not during the cut");
      const leaseLost = log.find((e) => e.msg.startsWith("node lease lost"));
      const fallback = log.find((e) => e.to === "local-fallback");
      const unreachable = log.find((e) => e.msg.startsWith("store unreachable"));
      const servedWhileCut = load.connections.filter((x) => x.ok && nodeOf(x, pinned) === victimIp && load.t0 + x.start >= cutAt && load.t0 + x.end <= reconnectedAt).length;

      const rec = (figure: string, value: number | string, unit?: string, bound?: string) => recordFigure({ scenario: NODE_CUT, figure, value, unit, bound });
      rec("cut for (from the end of docker's disconnect to the reconnect)", reconnectedAt - cutAt, "ms");
      rec("client connections / failed", `${load.total} / ${load.failed}`, undefined, "… / 0");
      rec("served by the cut node while cut", servedWhileCut, undefined, "> 0");
      rec("readiness samples while cut: not ready / not announced", `${notReady} / ${notAnnounced} of ${cutSamples.length} (${unknownSamples(cutSamples)} with a probe unanswered: unknown)`, undefined, "0 / 0");
      rec("its registration expired (seen by the others) after", expiredMs, "ms");
      rec("cut node: lease lost / local fallback / watch reported broken after", `${sinceCut(leaseLost)} / ${sinceCut(fallback)} / ${sinceCut(unreachable)}`);
      rec("its mode at the end of the cut", during.node.mode, undefined, "local-fallback");
      rec("record written meanwhile: seen by the cut node while cut", hasProbe(during) ? "yes" : "no", undefined, "no");
      rec("rejoined and converged after the reconnect", convergedMs, "ms", `≤ ${CONVERGE_BOUND_MS} ms`);

      expect(load.failed, JSON.stringify(load.errors)).toBe(0);
      expect(servedWhileCut).toBeGreaterThan(0);
      expect(notReady).toBe(0);
      expect(notAnnounced).toBe(0);
      expect(cutSamples.length).toBeGreaterThan(0);
      expect(during.node.mode).toBe("local-fallback");
      expect(hasProbe(during)).toBe(false);
      expect(convergedMs).toBeLessThanOrEqual(CONVERGE_BOUND_MS);

      await c.del(`${c.keyPrefix}backends/web/${PROBE_BACKEND}`);
      await everyNodeSees(c.nodes, (s) => !hasProbe(s), { timeoutMs: 10_000, intervalMs: 100, message: "the probe record gone everywhere" });
    });
  });
}
