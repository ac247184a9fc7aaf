// Hosts several simulated Ballast nodes in one process for the scale bench (test/bench/scale.ts): each is
// the real BallastNode (its own etcd client and watch, reconciler, affinity table and replicator, health
// manager with election and observer probes, node record, admin API) with log level warn and no
// traffic. Its one service listener binds a loopback address of its own (node.bindAddress), so many
// nodes share a process and a port. The coordinator talks to it over the fork IPC channel; the agent
// answers each request with the same `id`.
import { nodeConfigSchema } from "../../../shared/schema.js";
import { BallastNode } from "../../../node/node.js";
import { EtcdStore } from "../../../node/control/etcd-store.js";

interface Spec {
  etcd: string;
  cluster: string;
  /** Node ids and the loopback address each binds its services on. */
  nodes: { id: string; bind: string }[];
}

type Request =
  | { id: number; op: "start" }
  | { id: number; op: "applied"; revision: number; deadlineMs: number }
  | { id: number; op: "stats" }
  | { id: number; op: "mark" }
  | { id: number; op: "route"; service: string; clients: string[] }
  | { id: number; op: "seen"; service: string; client: string; deadlineMs: number }
  | { id: number; op: "stop" };

const spec = JSON.parse(process.argv[2]) as Spec;
const nodes: BallastNode[] = [];
const send = (m: Record<string, unknown>) => process.send?.(m);
const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
const baselineRss = process.memoryUsage().rss;

// Per node since the last `mark`: did it enter local fallback, did its store disconnect. Sampled every
// 50 ms: a fallback lasts at least a health interval, far longer than that.
const fellBack = new Set<string>();
const disconnected = new Set<string>();
setInterval(() => {
  for (const n of nodes) {
    if (n.mode === "local-fallback") fellBack.add(n.id);
    if (!n.reconciler.connected) disconnected.add(n.id);
  }
}, 50).unref();

async function start(): Promise<Record<string, unknown>> {
  const t0 = Date.now();
  for (const s of spec.nodes) {
    const config = nodeConfigSchema.parse({
      node: { id: s.id, bindAddress: s.bind },
      cluster: spec.cluster,
      etcd: { endpoints: [spec.etcd] },
      admin: { listen: "127.0.0.1:0" },
      log: { level: "warn" },
      accessLog: { enabled: false },
    });
    const node = new BallastNode({ config });
    nodes.push(node);
    // One at a time: a node's first list and election join are the costly part of its start.
    await node.start();
  }
  return { startMs: Date.now() - t0, baselineRss, rss: process.memoryUsage().rss };
}

/** Polls (every 2 ms) until every node here has handed a snapshot of at least `revision` to its data plane. */
async function applied(revision: number, deadlineMs: number): Promise<Record<string, unknown>> {
  const at = new Map<string, number>();
  const end = Date.now() + deadlineMs;
  while (at.size < nodes.length && Date.now() < end) {
    const now = Date.now();
    for (const n of nodes) if (!at.has(n.id) && (n.plane.current?.revision ?? 0) >= revision) at.set(n.id, now);
    if (at.size < nodes.length) await sleep(2);
  }
  return { at: [...at.values()], missing: nodes.filter((n) => !at.has(n.id)).map((n) => n.id) };
}

function stats(): Record<string, unknown> {
  const modes: Record<string, number> = {};
  for (const n of nodes) modes[n.mode] = (modes[n.mode] ?? 0) + 1;
  let entries = 0;
  const perNode: number[] = [];
  for (const n of nodes) {
    let e = 0;
    for (const name of n.reconciler.snapshot?.services.keys() ?? []) e += n.affinity.entries.table(name)?.size ?? 0;
    perNode.push(e);
    entries += e;
  }
  // What riding out etcd outages cost, summed over the nodes here (counters since start; the bench
  // takes differences): the same figures as each node's ballast_etcd_* and registration metrics.
  const recovery = { leasesLost: 0, relists: 0, resumes: 0, staleElectionKeys: 0, revokesRetried: 0, registrations: 0 };
  for (const n of nodes) {
    recovery.registrations += n.registrations.registrations;
    if (!(n.store instanceof EtcdStore)) continue;
    const r = n.store.recovery;
    recovery.leasesLost += r.leasesLost;
    recovery.relists += r.relists;
    recovery.resumes += r.resumes;
    recovery.staleElectionKeys += r.staleElectionKeys;
    recovery.revokesRetried += r.revokesRetried;
  }
  return {
    recovery,
    rss: process.memoryUsage().rss,
    baselineRss,
    nodes: nodes.length,
    ready: nodes.filter((n) => n.ready).length,
    connected: nodes.filter((n) => n.reconciler.connected).length,
    leaders: nodes.filter((n) => n.health.status().isLeader).map((n) => n.id),
    modes,
    minApplied: Math.min(...nodes.map((n) => n.reconciler.appliedRevision)),
    affinityEntries: entries,
    affinityEntriesPerNode: perNode,
    fellBack: [...fellBack],
    disconnected: [...disconnected],
    admins: nodes.map((n) => n.admin.address),
  };
}

/** New clients through the first node here, as its data plane routes a new connection (recording affinity). */
function route(service: string, clients: string[]): Record<string, unknown> {
  const n = nodes[0];
  const svc = n.plane.current?.services.get(service);
  if (!svc) return { error: `no service ${service} on ${n.id}` };
  const picks: Record<string, string | null> = {};
  const now = Date.now();
  for (const c of clients) picks[c] = n.plane.router.route(svc, c, 0, n.plane.availabilityExclude(svc), now, true).target?.id ?? null;
  return { node: n.id, at: now, picks };
}

/** Until every node here knows the client's affinity entry (describe ≠ null); the time each saw it. */
async function seen(service: string, client: string, deadlineMs: number): Promise<Record<string, unknown>> {
  const at = new Map<string, number>();
  const end = Date.now() + deadlineMs;
  while (at.size < nodes.length && Date.now() < end) {
    const now = Date.now();
    for (const n of nodes) {
      if (at.has(n.id)) continue;
      const svc = n.reconciler.snapshot?.services.get(service);
      if (svc && n.affinity.describe(svc, client, now) !== null) at.set(n.id, now);
    }
    if (at.size < nodes.length) await sleep(2);
  }
  return { at: [...at.values()], missing: nodes.filter((n) => !at.has(n.id)).map((n) => n.id) };
}

process.on("message", (raw) => {
  const m = raw as Request;
  const reply = (p: Promise<Record<string, unknown>> | Record<string, unknown>) =>
    Promise.resolve(p).then(
      (body) => send({ id: m.id, ok: true, ...body }),
      (err: Error) => send({ id: m.id, ok: false, error: err.stack ?? err.message }),
    );
  switch (m.op) {
    case "start":
      return void reply(start());
    case "applied":
      return void reply(applied(m.revision, m.deadlineMs));
    case "stats":
      return void reply(stats());
    case "mark":
      fellBack.clear();
      disconnected.clear();
      return void reply({});
    case "route":
      return void reply(route(m.service, m.clients));
    case "seen":
      return void reply(seen(m.service, m.client, m.deadlineMs));
    case "stop":
      return void reply(Promise.all(nodes.map((n) => n.close().catch(() => {}))).then(() => ({}))).then(() => process.exit(0));
  }
});
// The coordinator gone (killed bench): nothing else would stop these nodes.
process.on("disconnect", () => process.exit(0));
send({ hello: true });
