// Scenario 8: a node is stopped gracefully (SIGTERM) under load with long-lived connections. /readyz
// turns 503 at once, the announcer withdraws the route, and only after `withdrawDelay` do the
// listeners close, so no new connection meets a closed port; open connections finish during the
// drain, and the node exits 0 with none left. Zero client errors.
// The withdrawal is timed by the router's kernel (the VIP route's change as `ip monitor` stamps it), not
// by polling `ip route` through `docker exec`: a poll's answer is stamped when it arrives, and on a
// loaded machine one exec takes up to ~1.4 s, which the old figure added to the withdrawal (issue 19:
// 1,459 and 1,327 ms "withdrawn" where BIRD on the node had withdrawn at 119 and 392 ms).
import net from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { waitFor } from "../../helpers/wait.js";
import { type ChaosCluster, type NodeMember, nodeOf, sleep, WITHDRAW_DELAY_MS, watchConntrack, watchRouteEvents } from "../cluster.js";
import { figures, formatFigures, recordFigure } from "../figures.js";

export const GRACEFUL_STOP = "8 graceful node stop";
/** Each connection: one quick answer (names its node), then one held for 4 s. */
const LOAD = { durationMs: 10_000, concurrency: 24, requests: 2, firstHoldMs: 0, holdMs: 4_000, timeoutMs: 3_000 };
/** Into the first 4 s wave: its connections outlive withdrawDelay, so the drain has to wait for them. */
const STOP_AFTER_MS = 1_500;
/** Time for `docker exec` to start the load client before the load's agreed start. */
const EXEC_SLACK_MS = 2_000;
/** The chaos nodes' drainTimeout (cluster.ts). */
const DRAIN_TIMEOUT_MS = 10_000;

/** Connects to the node's service port directly (not through the VIP) until it is refused: when the listeners closed. */
async function listenersClosed(ip: string, deadline: number): Promise<number | null> {
  while (Date.now() < deadline) {
    const refused = await new Promise<boolean>((resolve) => {
      const socket = net.connect({ host: ip, port: 8080 });
      socket.setTimeout(500);
      socket.once("connect", () => {
        socket.destroy();
        resolve(false);
      });
      socket.once("timeout", () => {
        socket.destroy();
        resolve(false);
      });
      socket.once("error", (err: NodeJS.ErrnoException) => resolve(err.code === "ECONNREFUSED"));
    });
    if (refused) return Date.now();
    await sleep(50);
  }
  return null;
}

/** When the node's announcer logged "anycast: withdraw" at or after `since` (docker's timestamp), or null. */
async function announcerWithdrewAt(node: NodeMember, since: number): Promise<number | null> {
  if (!node.announcer) return null;
  for (const line of (await node.announcer.logs()).split("\n")) {
    const m = /^(\S+) anycast: withdraw/.exec(line);
    const at = m ? Date.parse(m[1]) : Number.NaN;
    if (at >= since) return at;
  }
  return null;
}

export function gracefulStop(cluster: () => ChaosCluster): void {
  describe(GRACEFUL_STOP, () => {
    beforeAll(() => cluster().restore());
    afterAll(() => {
      process.stdout.write(`\n${formatFigures(figures(GRACEFUL_STOP))}`);
    });

    it("route withdrawn before the listeners close, open connections finish, zero errors", async () => {
      const c = cluster();
      const leader = await c.healthLeader();
      const victim = c.nodes.find((n) => n !== leader)!;
      const victimIp = victim.ip("fabric");

      const pins = watchConntrack(c);
      const routes = await watchRouteEvents(c);
      expect(routes.initial, "every node announced before the stop").toContain(victimIp);
      const startAt = Date.now() + EXEC_SLACK_MS;
      const loading = c.client!.load({ ...LOAD, startAt });
      await sleep(startAt + STOP_AFTER_MS - Date.now());
      const closing = listenersClosed(victimIp, Date.now() + WITHDRAW_DELAY_MS + DRAIN_TIMEOUT_MS);
      await victim.terminate();
      const closedAt = await closing;
      await waitFor(async () => !(await victim.times()).running, { timeoutMs: WITHDRAW_DELAY_MS + DRAIN_TIMEOUT_MS + 10_000, intervalMs: 100, message: "the node exiting" });
      const load = await loading;
      const [pinned, routeEvents] = await Promise.all([pins.stop(), routes.stop()]);
      const exit = await victim.times();
      const log = await victim.logEvents();

      const draining = log.find((e) => e.msg === "draining");
      const stopped = log.find((e) => e.msg === "stopped");
      expect(draining, "the node logged its drain").toBeDefined();
      const termAt = draining!.at;
      const closedMs = closedAt === null ? Number.POSITIVE_INFINITY : closedAt - termAt;
      const withdrawn = routeEvents.find((e) => e.t >= termAt && !e.announced.includes(victimIp));
      const withdrawnMs = withdrawn ? withdrawn.t - termAt : Number.POSITIVE_INFINITY;
      // Where the time went: the announcer's own log line (docker's timestamp) says when it withdrew.
      const announcerAt = await announcerWithdrewAt(victim, termAt);
      const announcerMs = announcerAt === null ? Number.POSITIVE_INFINITY : announcerAt - termAt;

      const conns = load.connections.map((x) => ({ ...x, node: nodeOf(x, pinned), startAt: load.t0 + x.start, endAt: load.t0 + x.end }));
      const onVictim = conns.filter((x) => x.node === victimIp);
      const openAtTerm = onVictim.filter((x) => x.startAt < termAt && x.endAt >= termAt);
      const acceptedWhileWithdrawing = onVictim.filter((x) => x.startAt >= termAt);
      const failed = conns.filter((x) => !x.ok);
      const finishedAfterClose = openAtTerm.filter((x) => x.ok && closedAt !== null && x.endAt > closedAt).length;

      const rec = (figure: string, value: number | string, unit?: string, bound?: string) => recordFigure({ scenario: GRACEFUL_STOP, figure, value, unit, bound });
      rec("announcer withdrew (its log) after SIGTERM", Number.isFinite(announcerMs) ? announcerMs : "never", "ms");
      rec("route withdrawn at the router (kernel route event) after SIGTERM", Number.isFinite(withdrawnMs) ? withdrawnMs : "never", "ms", `< ${WITHDRAW_DELAY_MS} ms (withdrawDelay)`);
      rec("listeners closed (connect refused) after SIGTERM", Number.isFinite(closedMs) ? closedMs : "never", "ms", `≥ ${WITHDRAW_DELAY_MS} ms (withdrawDelay)`);
      rec("connections open on the node at SIGTERM", openAtTerm.length, undefined, "> 0");
      rec("  of which finished", openAtTerm.filter((x) => x.ok).length, undefined, `= ${openAtTerm.length}`);
      rec("  of which finished after the listeners closed", finishedAfterClose, undefined, "> 0");
      rec("new connections it took before the route went", acceptedWhileWithdrawing.length);
      rec("client connections / failed", `${load.total} / ${failed.length}`, undefined, "… / 0");
      rec("drained and exited after SIGTERM", exit.finishedAt - termAt, "ms", `≤ ${WITHDRAW_DELAY_MS + DRAIN_TIMEOUT_MS} ms`);
      rec("exit code / connections cut at the end", `${exit.exitCode} / ${String(stopped?.remaining ?? "?")}`, undefined, "0 / 0");

      expect(withdrawnMs).toBeLessThan(WITHDRAW_DELAY_MS);
      expect(withdrawnMs, "route withdrawn before the listeners closed").toBeLessThan(closedMs);
      expect(closedMs).toBeGreaterThanOrEqual(WITHDRAW_DELAY_MS);
      expect(openAtTerm.length).toBeGreaterThan(0);
      expect(finishedAfterClose, "connections the drain waited for").toBeGreaterThan(0);
      expect(failed.map((x) => `${x.src}:${x.port} via ${x.node}: ${x.err}`)).toEqual([]);
      expect(load.cutShort).toBe(false);
      expect(exit.exitCode).toBe(0);
      expect(stopped?.remaining).toBe(0);
    });
  });
}
