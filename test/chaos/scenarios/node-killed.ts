// Scenario 1: a node dies (SIGKILL, together with its announcer: the whole machine) under steady
// client load through the VIP. Only connections open on that node may fail; new connections succeed
// again once the router has dropped its route (BFD, ~300 ms); and every client keeps the backend its
// affinity entry names, including entries the dead node made (they live in etcd, not in the node).
// Nodes run the default affinity.replication ("exception"). The shared service "web" is round-robin:
// its picks differ per node, so every entry goes to every node. A second service, "sticky" (source-ip,
// the algorithm affinity defaults to), is what "exception" shards: a client's record goes only to its
// shard's owners, and only picks that differ from the table reach every node. Its clients connect
// through the VIP too; after the node dies a third backend joins "sticky", so the table moves some
// clients and the surviving owners must write exceptions for them, the dead node's clients included.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { BackendTarget } from "../../../node/lb/algorithm.js";
import { hashString } from "../../../node/lb/hash.js";
import { MaglevPicker } from "../../../node/lb/maglev.js";
import { type ChaosCluster, type NodeMember, everyNodeSees, nodeOf, sleep, watchConntrack, watchRoutes } from "../cluster.js";
import { figures, formatFigures, recordFigure } from "../figures.js";
import { SHARED_SERVICE } from "../shared-cluster.js";

export const NODE_KILLED = "1 node killed";
/** BFD drops the route in ~300 ms; the rest is slack for a loaded 2-core machine. */
const RECOVERY_BOUND_MS = 3_000;
const LOAD = { durationMs: 12_000, concurrency: 24, requests: 3, firstHoldMs: 0, holdMs: 500, gapMs: 100, timeoutMs: 2_000 };
const KILL_AFTER_MS = 4_000;
/** Time for `docker exec` to start the load client before the load's agreed start. */
const EXEC_SLACK_MS = 2_000;
/** "sticky": longer than "web"'s load, so connections follow the table change after the kill. */
const STICKY_LOAD = { ...LOAD, durationMs: 20_000, concurrency: 8 };
/** After the kill: the dead node's record has expired (lease TTL 3 s), its shards have new owners. */
const ADD_BACKEND_AFTER_KILL_MS = 3_500;
const STICKY_PORT = 8081;

/** The source-ip table every node builds for these backend ids (Maglev depends on ids and weights only). */
function sourceIpPick(ids: string[], client: string): string {
  const picker = new MaglevPicker("source-ip", ids.map((id) => ({ id, weight: 1 }) as BackendTarget));
  return picker.peek(hashString(client), null)!.id;
}

/** Each client's answers came from one backend: its entry's. */
function keptBackend(conns: readonly { src: string | null; backends: (string | null)[] }[], entryBackend: ReadonlyMap<string, string>) {
  const keptBy = new Map<string, boolean>();
  for (const x of conns) {
    if (!x.src) continue;
    const kept = x.backends.every((b) => b === null || b === entryBackend.get(x.src!));
    keptBy.set(x.src, (keptBy.get(x.src) ?? true) && kept);
  }
  return { keptBy, kept: [...keptBy.values()].filter(Boolean).length, moved: [...keptBy].filter(([, k]) => !k).map(([src]) => src) };
}

export function nodeKilled(cluster: () => ChaosCluster): void {
  describe(NODE_KILLED, () => {
    beforeAll(() => cluster().restore());
    afterAll(() => {
      process.stdout.write(`\n${formatFigures(figures(NODE_KILLED))}`);
    });

    it("only connections open on the dead node fail, new ones recover within the bound, every client keeps its backend", async () => {
      const c = cluster();
      const leader = await c.healthLeader();
      // Not the health leader: scenario 2 is about that one.
      const victim = c.nodes.find((n) => n !== leader)!;
      const victimIp = victim.ip("fabric");
      const [b1, b2, b3] = c.backends.map((b) => c.backendId(b));
      const backendRecord = (i: number) => ({ address: c.backends[i].ip("fabric"), port: 8080 });
      try {
        // "sticky" on two of the three backends; the third joins after the kill.
        await c.putBackend("sticky", b1, backendRecord(0));
        await c.putBackend("sticky", b2, backendRecord(1));
        const { algorithm: _rr, ...stickyService } = SHARED_SERVICE;
        await c.putService("sticky", { ...stickyService, listen: `0.0.0.0:${STICKY_PORT}` });
        await everyNodeSees(c.nodes, (s) => (s.services.find((x) => x.name === "sticky")?.backends ?? []).filter((b) => b.routable && b.verdict?.state === "up").length === 2, {
          timeoutMs: 20_000,
          intervalMs: 200,
          message: "every node routing sticky to its two backends",
        });
        await scenario(c, victim, victimIp, [b1, b2, b3], backendRecord(2));
      } finally {
        // Later scenarios start from the baseline: only "web".
        await c.del(`${c.keyPrefix}services/sticky`);
        for (const b of [b1, b2, b3]) await c.del(`${c.keyPrefix}backends/sticky/${b}`);
      }
    });
  });
}

async function scenario(c: ChaosCluster, victim: NodeMember, victimIp: string, [b1, b2, b3]: string[], thirdBackend: Record<string, unknown>): Promise<void> {
  const client = c.client!;

  // Each client (source address) connects once, one after another, so each gets one affinity
  // entry, made by whichever node the router hashed that connection to.
  const warm = await client.load({ concurrency: 1, connections: client.sources.length, durationMs: 30_000 });
  expect(warm.failed, JSON.stringify(warm.errors)).toBe(0);
  await everyNodeSees(c.nodes, (s) => s.services.find((x) => x.name === "web")?.affinity.entries === client.sources.length, {
    timeoutMs: 10_000,
    intervalMs: 100,
    message: "every node holding every client's affinity entry (web: round-robin, so every entry is an exception)",
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

  // sticky: the same clients, each once; its entry is a record for the shard's owners (two of the
  // three nodes) and on the node that saw it; the others route by the table, which picks the same.
  const stickyWarm = await client.load({ target: `${c.vip}:${STICKY_PORT}`, concurrency: 1, connections: client.sources.length, durationMs: 30_000 });
  expect(stickyWarm.failed, JSON.stringify(stickyWarm.errors)).toBe(0);
  const stickyBackend = new Map<string, string>();
  let stickyByVictim = 0;
  let stickyWhy = "";
  const stickyDeadline = Date.now() + 10_000;
  for (;;) {
    stickyBackend.clear();
    stickyByVictim = 0;
    const problems: string[] = [];
    for (const src of client.sources) {
      const answers = await Promise.all(c.nodes.map((n) => n.route("sticky", src)));
      const ids = new Set(answers.map((r) => r.backend?.id));
      const holders = answers.filter((r) => String(r.reason).startsWith("affinity (from node "));
      // The node that saw it and the shard's owners: at least two nodes hold the record.
      if (ids.size !== 1 || holders.length < 2) problems.push(`${src}: ${JSON.stringify(answers.map((r) => [r.node, r.backend?.id, r.reason]))}`);
      stickyBackend.set(src, [...ids][0]!);
      if (holders.some((r) => String(r.reason).includes(`from node ${victim.nodeId},`))) stickyByVictim++;
    }
    stickyWhy = problems.slice(0, 5).join("; ");
    if (problems.length === 0 || Date.now() > stickyDeadline) break;
    await sleep(200);
  }
  expect(stickyWhy, "every node agrees on each sticky client's backend, and its record reached its shard's owners").toBe("");
  // The test's own table agrees with the nodes' (so it can tell which clients the third backend moves).
  for (const src of client.sources) expect(stickyBackend.get(src), `${src}: the table's pick`).toBe(sourceIpPick([b1, b2], src));
  const movedByTable = client.sources.filter((src) => sourceIpPick([b1, b2, b3], src) !== stickyBackend.get(src));

  const pins = watchConntrack(c);
  const routes = watchRoutes(c);
  const startAt = Date.now() + EXEC_SLACK_MS;
  const loading = client.load({ ...LOAD, startAt });
  const stickyLoading = client.load({ ...STICKY_LOAD, target: `${c.vip}:${STICKY_PORT}`, startAt });
  await sleep(startAt + KILL_AFTER_MS - Date.now());
  const killRequestedAt = Date.now();
  await victim.killWithAnnouncer();
  const finishedAt = (await victim.times()).finishedAt;
  // The third backend joins sticky: the table now sends movedByTable elsewhere; their entries must hold.
  await sleep(Math.max(0, killRequestedAt + ADD_BACKEND_AFTER_KILL_MS - Date.now()));
  const survivors = c.nodes.filter((n) => n !== victim);
  await c.putBackend("sticky", b3, thirdBackend);
  const tableChangedAt = (
    await everyNodeSees(survivors, (s) => (s.services.find((x) => x.name === "sticky")?.backends ?? []).filter((b) => b.routable).length === 3, {
      timeoutMs: 10_000,
      intervalMs: 100,
      message: "the surviving nodes routing sticky to three backends",
    })
  ).values();
  const changedAt = Math.max(...tableChangedAt);
  const load = await loading;
  const stickyLoad = await stickyLoading;
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
  // A connection refused at once (the dead node's kernel answering RST before the route went) fails
  // before the client could read its local port: no pin, no answer, so no node. It cannot be counted
  // against the survivors; it must be a new connection after the kill, inside the recovery bound.
  const unattributed = failed.filter((x) => x.node === null);
  const failedElsewhere = failed.filter((x) => x.node !== null && x.node !== victimIp);
  const lastFailedNew = failedNew.length === 0 ? killedAt : Math.max(...failedNew.map((x) => x.startAt));
  const recoveredAfterMs = lastFailedNew - killedAt;
  const okAfterRecovery = conns.filter((x) => x.ok && x.startAt > lastFailedNew).length;
  const withdrawn = routeSamples.find((s) => s.t >= killedAt && !s.announced.includes(victimIp));

  // Affinity: every answer a client got, through any node, came from its entry's backend.
  const { keptBy, kept: clientsKept, moved } = keptBackend(conns, entryBackend);
  const sticky = keptBackend(stickyLoad.connections, stickyBackend);
  const stickyAfterChange = stickyLoad.connections.filter((x) => x.ok && stickyLoad.t0 + x.start >= changedAt);
  const movedClientsAfterChange = new Set(stickyAfterChange.filter((x) => x.src && movedByTable.includes(x.src)).map((x) => x.src));
  // After the hold (previous table for clients without an entry), only entries keep them: every survivor routes every client to its backend.
  const afterHold = (await Promise.all(survivors.flatMap((n) => client.sources.map(async (src) => ({ n: n.nodeId, src, r: await n.route("sticky", src) }))))).filter(
    (x) => x.r.backend?.id !== stickyBackend.get(x.src),
  );

  const perNode = new Map<string, number>();
  for (const x of conns) if (x.startAt < killRequestedAt) perNode.set(x.node ?? "?", (perNode.get(x.node ?? "?") ?? 0) + 1);
  const perNodeText = c.nodes.map((n) => `${n.nodeId}${n === victim ? " (killed)" : ""} ${perNode.get(n.ip("fabric")) ?? 0}`).join(", ");

  const rec = (figure: string, value: number | string, unit?: string, bound?: string) => recordFigure({ scenario: NODE_KILLED, figure, value, unit, bound });
  rec("client connections", load.total);
  rec("  per node before the kill", perNodeText);
  rec("open on the killed node at the kill", openOnVictim.length);
  rec("  of which failed", failedOpenOnVictim.length, undefined, `≤ ${openOnVictim.length}`);
  rec("failed among connections not on the killed node", failedElsewhere.length, undefined, "= 0");
  rec("failed without a node (refused before the client read its port), all after the kill", `${unattributed.length}, ${unattributed.filter((x) => x.startAt >= killedAt).length} after`, undefined, "all after");
  rec("failed before the kill", failedBeforeKill.length, undefined, "= 0");
  rec("new connections failed (sent to it before the route went)", failedNew.length);
  rec("route withdrawn at the router after", withdrawn ? withdrawn.t - killedAt : "never", withdrawn ? "ms" : undefined);
  rec("new connections succeed again after", recoveredAfterMs, "ms", `≤ ${RECOVERY_BOUND_MS} ms`);
  rec("clients with affinity entries", entryBackend.size);
  rec("  entries made by the killed node", madeByVictim);
  rec("  clients that kept their backend", `${clientsKept}/${keptBy.size} (${Math.round((100 * clientsKept) / Math.max(1, keptBy.size))}%)`, undefined, "100%");
  rec("sticky (source-ip, replication exception): clients", stickyBackend.size);
  rec("  entries made by the killed node", stickyByVictim);
  rec("  third backend routable on the survivors after the kill", changedAt - killRequestedAt, "ms");
  rec("  clients the new table moves (kept by exceptions)", `${movedByTable.length} (${movedClientsAfterChange.size} connected after the change)`);
  rec("  connections / failed", `${stickyLoad.total} / ${stickyLoad.failed}`);
  rec("  clients that kept their backend", `${sticky.kept}/${sticky.keptBy.size} (${Math.round((100 * sticky.kept) / Math.max(1, sticky.keptBy.size))}%)`, undefined, "100%");
  rec("  survivors' route answers off the entry after the load", afterHold.length, undefined, "= 0");

  const failures = JSON.stringify(failed.slice(0, 20).map((x) => ({ src: x.src, port: x.port, node: x.node, start: x.start, end: x.end, err: x.err })));
  expect(load.cutShort).toBe(false);
  expect(openOnVictim.length, "connections were open on the victim when it died").toBeGreaterThan(0);
  expect(failedBeforeKill.length, failures).toBe(0);
  expect(failedElsewhere.length, failures).toBe(0);
  expect(unattributed.filter((x) => x.startAt < killedAt), failures).toEqual([]);
  expect(recoveredAfterMs, failures).toBeLessThanOrEqual(RECOVERY_BOUND_MS);
  expect(okAfterRecovery, "connections after the recovery").toBeGreaterThan(0);
  expect(withdrawn, "the router dropped the dead node's route").toBeDefined();
  expect(madeByVictim, "some entries were made by the killed node").toBeGreaterThan(0);
  expect(keptBy.size).toBe(client.sources.length);
  expect(moved, "clients whose backend changed").toEqual([]);

  expect(stickyLoad.cutShort).toBe(false);
  expect(stickyByVictim, "some sticky entries were made by the killed node").toBeGreaterThan(0);
  expect(movedByTable.length, "the third backend moves some clients' table pick").toBeGreaterThan(0);
  expect(movedClientsAfterChange.size, "clients the table moved connected after the change").toBeGreaterThan(0);
  expect(sticky.keptBy.size).toBe(client.sources.length);
  expect(sticky.moved, "sticky clients whose backend changed").toEqual([]);
  expect(afterHold.map((x) => `${x.src} via ${x.n}: ${x.r.backend?.id} (${x.r.reason})`)).toEqual([]);
}
