// Control-plane figures: put → routed on 3 nodes, backend death → down, leader failover, Maglev build
// time, affinity replication and lag, RSS with 1M affinity entries. Each figure probes for its feature
// and is reported as skipped ("not built yet") when the node does not have it.
import { existsSync } from "node:fs";
import net from "node:net";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { parseRecordKey, recordsPrefix } from "../../node/affinity/shards.js";
import { decodeValue } from "../../shared/codec.js";
import { KeySchema } from "../../shared/keys.js";
import { agentPath, startTcpSink } from "./backends.js";
import { affinityEntries, type BallastNode, listeningPorts, repoRoot, route, seedServices, serviceState, startNode, stateRevision } from "./ballast.js";
import type { Context } from "./context.js";
import type { Etcd } from "./etcd.js";
import { rssBytes, sleep } from "./net.js";
import type { Proc } from "./procs.js";
import type { Figure } from "./report.js";
import { median, percentile } from "./stats.js";

const CLUSTER = "cp";
const PREFIX = `/ballast/${CLUSTER}/`;
const STICKY_ADDRESS = "127.0.0.201";

const idRe = (id: string) => new RegExp(`\\b${id.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}\\b`);
const ms = (x: number) => (Number.isFinite(x) ? `${x < 10 ? x.toFixed(1) : Math.round(x)} ms` : "–");
const secs = (x: number) => (Number.isFinite(x) ? `${(x / 1000).toFixed(2)} s` : "–");

function add(ctx: Context, f: Figure): void {
  ctx.results.controlPlane.push(f);
  ctx.log(`  ${f.name}: ${f.value}${f.note ? ` (${f.note})` : ""}`);
}

function skip(ctx: Context, name: string, note: string, target?: string): void {
  add(ctx, { name, value: "skipped", target, meets: null, note });
}

async function maglev(ctx: Context): Promise<void> {
  const name = "Maglev table build, 100 / 1k / 10k backends";
  const mod = join(repoRoot, "dist/node/lb/maglev.js");
  if (!existsSync(mod)) return skip(ctx, name, "not built yet (dist/node/lb/maglev.js missing)", "10k ≤ 50 ms");
  const p = ctx.group.start("maglev-time", process.execPath, [agentPath("maglev-time"), "--module", mod, "--repeats", ctx.opts.quick ? "3" : "7"]);
  await p.exited;
  const rows = p.jsonLines();
  const err = rows.find((r) => r.error);
  if (err || rows.length === 0) return skip(ctx, name, `not built yet (${String(err?.error ?? p.tail(2))})`, "10k ≤ 50 ms");
  const byN = new Map(rows.map((r) => [r.backends as number, r]));
  const t10k = Number(byN.get(10_000)?.medianMs);
  add(ctx, {
    name,
    value: [100, 1000, 10_000].map((n) => `${n >= 1000 ? `${n / 1000}k` : n}: ${ms(Number(byN.get(n)?.medianMs))}`).join(" / "),
    target: "10k ≤ 50 ms",
    meets: Number.isFinite(t10k) ? t10k <= 50 : null,
    note: `table sizes ${rows.map((r) => r.tableSize).join(" / ")}; median of ${ctx.opts.quick ? 3 : 7} builds after a warm-up`,
    data: rows,
  });
}

/** Polls `check` on every node until it holds on all; returns per-node elapsed ms from `t0` (NaN on timeout). */
async function untilAll(nodes: BallastNode[], t0: number, timeoutMs: number, check: (n: BallastNode) => Promise<boolean>): Promise<number[]> {
  return Promise.all(
    nodes.map(async (n) => {
      while (performance.now() - t0 < timeoutMs) {
        if (await check(n)) return performance.now() - t0;
        await sleep(2);
      }
      return Number.NaN;
    }),
  );
}

async function putToRouted(ctx: Context, etcd: Etcd, nodes: BallastNode[], backendPort: number): Promise<void> {
  const name = "etcd put → routed on all 3 nodes";
  const target = "p99 ≤ 100 ms";
  const key = (i: number) => `${PREFIX}backends/cp-route/gen-${i}`;
  // Which admin answer tells us the new backend is in use: /api/route naming it, else /api/state's revision.
  const ready = await untilAll(nodes, performance.now(), 10_000, async (n) => idRe("gen-0").test((await route(n, "cp-route", "127.0.9.1")).body));
  let mode: "route" | "revision";
  if (ready.every(Number.isFinite)) mode = "route";
  else if (Number.isFinite(await stateRevision(nodes[0]))) mode = "revision";
  else return skip(ctx, name, "not built yet (/api/route does not name the backend and /api/state has no revision)", target);

  const n = ctx.opts.quick ? 5 : 50;
  const all: number[] = [];
  const perNode: number[] = [];
  for (let i = 1; i <= n; i++) {
    const t0 = performance.now();
    const rev = await etcd.replace(key(i), `127.0.0.1:${backendPort}`, key(i - 1));
    const re = idRe(`gen-${i}`);
    const times = await untilAll(nodes, t0, 5000, async (node) =>
      mode === "route" ? re.test((await route(node, "cp-route", "127.0.9.1")).body) : (await stateRevision(node)) >= rev,
    );
    perNode.push(...times);
    all.push(Math.max(...times));
    await sleep(50);
  }
  const p99 = percentile(all, 99);
  add(ctx, {
    name,
    value: `p50 ${ms(median(all))}, p99 ${ms(p99)} (per node p50 ${ms(median(perNode))})`,
    target,
    meets: Number.isFinite(p99) ? p99 <= 100 : null,
    note: `${n} puts; ${mode === "route" ? "polling /api/route until it names the new backend" : "polling /api/state until revision ≥ the put's"}; includes the put's own round trip; timeouts: ${all.filter((x) => !Number.isFinite(x)).length}`,
    data: { allNodesMs: all, mode },
  });
}

async function deathToDown(ctx: Context, nodes: BallastNode[], victimPort: number, victim: { proc: Proc }): Promise<void> {
  const name = "backend death → down on all 3 nodes";
  const routesTo = async (node: BallastNode, ip: string, id: string) => idRe(id).test((await route(node, "cp-health", ip)).body);
  let client = "";
  for (let k = 1; k <= 200 && !client; k++) {
    const ip = `127.3.0.${k}`;
    if (await routesTo(nodes[0], ip, "victim")) client = ip;
  }
  if (!client) return skip(ctx, name, "not built yet (/api/route never names the victim backend for source-ip)");
  const trials = ctx.opts.quick ? 1 : 3;
  const all: number[] = [];
  for (let t = 0; t < trials; t++) {
    const back = await untilAll(nodes, performance.now(), 20_000, (n) => routesTo(n, client, "victim"));
    if (!back.every(Number.isFinite)) break;
    const t0 = performance.now();
    victim.proc.kill();
    const times = await untilAll(nodes, t0, 20_000, async (n) => !(await routesTo(n, client, "victim")));
    all.push(Math.max(...times));
    victim.proc = (await startTcpSink(ctx.group, "cp-victim", 1, [victimPort])).proc;
  }
  if (all.length === 0 || !all.some(Number.isFinite)) return skip(ctx, name, "not built yet (a dead backend was still routed after 20 s)");
  add(ctx, {
    name,
    value: `median ${secs(median(all))}, max ${secs(Math.max(...all))}`,
    meets: null,
    note: `${all.length} SIGKILLs of a backend; checks every 1 s, timeout 500 ms, fall 2 (expected ≈ 2–3 s)`,
    data: all,
  });
}

interface ElectionKey {
  value: string;
  createRevision: number;
}

async function leader(etcd: Etcd): Promise<ElectionKey | null> {
  const r = await etcd.range(`${PREFIX}health/election/`);
  if (r.kvs.length === 0) return null;
  const first = [...r.kvs].sort((a, b) => a.createRevision - b.createRevision)[0];
  return { value: first.value.toString("utf8"), createRevision: first.createRevision };
}

async function heartbeatLeader(etcd: Etcd): Promise<string> {
  const r = await etcd.range(`${PREFIX}health/heartbeat`);
  if (r.kvs.length === 0) return "";
  try {
    return String(decodeValue(r.kvs[0].value).leader ?? "");
  } catch {
    return "";
  }
}

async function failover(ctx: Context, etcd: Etcd, nodes: BallastNode[], restart: (i: number) => Promise<BallastNode>): Promise<void> {
  const name = "health leader failover (leader SIGKILLed)";
  const end = Date.now() + 10_000;
  let l = await leader(etcd);
  while (!l && Date.now() < end) {
    await sleep(200);
    l = await leader(etcd);
  }
  if (!l) return skip(ctx, name, "not built yet (no keys under health/election/)");
  const trials = ctx.opts.quick ? 1 : 3;
  const elected: number[] = [];
  const beat: number[] = [];
  for (let t = 0; t < trials; t++) {
    const cur = await leader(etcd);
    const idx = cur ? nodes.findIndex((n) => idRe(n.id).test(cur.value)) : -1;
    if (!cur || idx < 0) {
      if (t === 0) return skip(ctx, name, `election value ${JSON.stringify(cur?.value ?? "")} names no node id`);
      break;
    }
    const old = nodes[idx].id;
    const t0 = performance.now();
    nodes[idx].proc.kill();
    let t1 = Number.NaN;
    let t2 = Number.NaN;
    while (performance.now() - t0 < 30_000 && !(Number.isFinite(t1) && Number.isFinite(t2))) {
      if (!Number.isFinite(t1)) {
        const now = await leader(etcd);
        if (now && !idRe(old).test(now.value)) t1 = performance.now() - t0;
      }
      if (!Number.isFinite(t2)) {
        const hb = await heartbeatLeader(etcd);
        if (hb && !idRe(old).test(hb)) t2 = performance.now() - t0;
      }
      await sleep(10);
    }
    elected.push(t1);
    beat.push(t2);
    nodes[idx] = await restart(idx);
  }
  add(ctx, {
    name,
    value: `new leader elected after median ${secs(median(elected))}; its first heartbeat after ${secs(median(beat))}`,
    meets: null,
    note: `${elected.length} trial(s); lease TTL 5 s (the dead leader's lease must expire)`,
    data: { electedMs: elected, heartbeatMs: beat },
  });
}

/** Entries in an affinity batch value: the length of its largest array or map; 1 when it has neither. */
function entriesIn(value: Buffer): number {
  try {
    const v = decodeValue(value);
    let best = 0;
    for (const x of Object.values(v)) {
      if (Array.isArray(x)) best = Math.max(best, x.length);
      else if (x && typeof x === "object") best = Math.max(best, Object.keys(x).length);
    }
    return best || 1;
  } catch {
    return 1;
  }
}

/**
 * Counts affinity entries in etcd under a prefix, decoding only batches written since the last call;
 * with `only`, just the keys it accepts (a service's records among every service's).
 */
class AffinityCounter {
  private readonly seen = new Map<string, number>();
  private since = 0;
  total = 0;

  constructor(
    private readonly etcd: Etcd,
    private readonly prefix: string,
    private readonly only: (key: string) => boolean = () => true,
  ) {}

  async poll(): Promise<number> {
    const r = await this.etcd.range(this.prefix, { minModRevision: this.since });
    for (const kv of r.kvs) {
      if (!this.only(kv.key)) continue;
      const n = entriesIn(kv.value);
      this.total += n - (this.seen.get(kv.key) ?? 0);
      this.seen.set(kv.key, n);
    }
    this.since = r.revision + 1;
    return this.total;
  }
}

function connectOnce(port: number, localAddress: string): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect({ port, host: STICKY_ADDRESS, localAddress });
    const done = (ok: boolean) => {
      clearTimeout(timer);
      s.destroy();
      resolve(ok);
    };
    const timer = setTimeout(() => done(false), 3000);
    s.once("data", () => done(true));
    s.once("error", () => done(false));
  });
}

/** String values of reason-like fields anywhere in a JSON body. */
function reasons(body: string): string[] {
  const out: string[] = [];
  const walk = (x: unknown, key: string) => {
    if (typeof x === "string") {
      if (/reason|source|via|decision|by|how/i.test(key)) out.push(x);
    } else if (Array.isArray(x)) {
      for (const y of x) walk(y, key);
    }
    else if (x && typeof x === "object") for (const [k, v] of Object.entries(x)) walk(v, k);
  };
  try {
    walk(JSON.parse(body), "");
  } catch {
    // not JSON
  }
  return out;
}
const affinityDecided = (body: string) => reasons(body).some((r) => /affin|sticky/i.test(r));

async function churn(ctx: Context, port: number, first: number, count: number, timeoutMs: number): Promise<{ done: number; elapsedMs: number }> {
  const p = ctx.group.start("conn-churn", process.execPath, [
    agentPath("conn-churn"),
    "--host", STICKY_ADDRESS,
    "--port", String(port),
    "--first", String(first),
    "--count", String(count),
    "--concurrency", "200",
    "--timeoutMs", String(timeoutMs),
  ]);
  let lastLog = Date.now();
  const progress = setInterval(() => {
    const last = p.jsonLines().filter((j) => j.progress).pop();
    if (last && Date.now() - lastLog > 10_000) {
      lastLog = Date.now();
      ctx.log(`    … ${last.done} connections from distinct addresses (${last.failed} failed)`);
    }
  }, 1000);
  await p.exited;
  clearInterval(progress);
  const r = p.jsonLines().find((j) => j.complete) as { done: number; elapsedMs: number } | undefined;
  return r ?? { done: 0, elapsedMs: Number.NaN };
}

async function affinity(ctx: Context, etcd: Etcd, nodes: BallastNode[]): Promise<void> {
  const repl = "affinity entries replicated per second";
  const lagName = "affinity visibility lag (node A → node B)";
  const rssName = "RSS with 1M affinity entries";
  const bound = Number((await serviceState(nodes[0], "cp-sticky"))?.boundPort ?? 0);
  const ports = bound > 0 ? [bound] : listeningPorts(nodes[0].pid, STICKY_ADDRESS);
  if (ports.length !== 1) {
    const note = `not built yet (node A has ${ports.length} listeners on ${STICKY_ADDRESS} for the affinity service)`;
    for (const n of [repl, lagName, rssName]) skip(ctx, n, note);
    return;
  }
  const port = ports[0];
  // Sharded replication (the default) writes each client's record once, under
  // `/ballast/<cluster>.clients/<shard>/<service>/…` (node/affinity/shards.ts); the broadcast prefix
  // then holds only exceptions. Broadcast replication writes every entry to `affinity/<service>/…`.
  // Counting the broadcast prefix alone skipped these three figures as "not built yet" since sharding
  // became the default.
  const keys = KeySchema.forCluster(CLUSTER);
  const sharded = new AffinityCounter(etcd, recordsPrefix(keys), (key) => {
    const r = parseRecordKey(keys, key);
    return typeof r !== "string" && r.service === "cp-sticky";
  });
  const broadcast = new AffinityCounter(etcd, `${PREFIX}affinity/cp-sticky/`);
  await connectOnce(port, "127.1.0.1");
  const end = Date.now() + 3000;
  let counter: AffinityCounter | null = null;
  while (counter === null && Date.now() < end) {
    if ((await sharded.poll()) > 0) counter = sharded;
    else if ((await broadcast.poll()) > 0) counter = broadcast;
    else await sleep(100);
  }
  if (counter === null) {
    const note = "not built yet (no affinity record or entry in etcd after a connection)";
    for (const n of [repl, lagName, rssName]) skip(ctx, n, note);
    return;
  }

  // Replication rate: a burst of distinct clients through node A, counted as entries land in etcd.
  const n = ctx.opts.quick ? 2000 : 20_000;
  const base = counter.total;
  const t0 = performance.now();
  const churnDone = churn(ctx, port, 0x020000, n, 60_000);
  let lastGrowth = t0;
  let lastTotal = base;
  let churned: { done: number; elapsedMs: number } | undefined;
  void churnDone.then((r) => {
    churned = r;
  });
  while (performance.now() - t0 < 120_000) {
    const total = await counter.poll();
    if (total > lastTotal) {
      lastTotal = total;
      lastGrowth = performance.now();
    }
    if (churned && (total - base >= churned.done || performance.now() - lastGrowth > 5000)) break;
    await sleep(100);
  }
  await churnDone;
  const replicated = lastTotal - base;
  const rate = replicated / ((lastGrowth - t0) / 1000);
  add(ctx, {
    name: repl,
    value: `${Math.round(rate).toLocaleString("en-US")} entries/s`,
    meets: null,
    note: `${replicated} of ${churned?.done ?? 0} new clients in etcd; clients arrived at ${Math.round(((churned?.done ?? 0) / (churned?.elapsedMs ?? Number.NaN)) * 1000)}/s (the rate cannot exceed that)`,
    data: { replicated, clients: churned, seconds: (lastGrowth - t0) / 1000 },
  });

  // Lag: one new client through A, until B answers /api/route with an affinity decision.
  const trials = ctx.opts.quick ? 3 : 20;
  const lags: number[] = [];
  let usable = true;
  for (let k = 1; k <= trials && usable; k++) {
    const ip = `127.4.0.${k}`;
    if (affinityDecided((await route(nodes[1], "cp-sticky", ip)).body)) {
      usable = false;
      break;
    }
    const t = performance.now();
    await connectOnce(port, ip);
    const [lag] = await untilAll([nodes[1]], t, 5000, async (b) => affinityDecided((await route(b, "cp-sticky", ip)).body));
    if (!Number.isFinite(lag) && k === 1) usable = false;
    lags.push(lag);
  }
  if (!usable || lags.length === 0)
    skip(
      ctx,
      lagName,
      counter === sharded
        ? "not measurable this way with sharded replication (the default): node B names affinity in /api/route only for a client whose recorded backend differs from its own table's pick (an exception), which a new client's is not"
        : "not measurable yet (/api/route on node B gives no reason naming affinity)",
    );
  else
    add(ctx, {
      name: lagName,
      value: `p50 ${ms(median(lags))}, p99 ${ms(percentile(lags, 99))}`,
      meets: null,
      note: `${lags.length} new clients; batch interval 100 ms (default)`,
      data: lags,
    });

  await manyEntries(ctx, etcd, nodes, ctx.opts.quick ? 50_000 : 1_000_000);
}

/**
 * RSS with many affinity entries: batches in the node's own wire format (dist/node/affinity/batch.js)
 * are written straight to etcd, as a busy peer would, so every node loads them through its watch.
 * Creating a million entries by connection would take minutes; the replicated path is what all nodes hold.
 */
async function manyEntries(ctx: Context, etcd: Etcd, nodes: BallastNode[], count: number): Promise<void> {
  const name = count >= 1_000_000 ? "RSS with 1M affinity entries" : `RSS with ${count / 1000}k affinity entries`;
  const modPath = join(repoRoot, "dist/node/affinity/batch.js");
  if (!existsSync(modPath)) return skip(ctx, name, "not built yet (dist/node/affinity/batch.js missing)");
  const mod = (await import(pathToFileURL(modPath).href)) as {
    encodeBatches?: (writer: string, entries: { ip: string; backend: string; lastUsed: number; created: number; gen: number; creator: string }[]) => Buffer[];
  };
  if (typeof mod.encodeBatches !== "function") return skip(ctx, name, "not built yet (no encodeBatches in affinity/batch.js)");
  const before = await Promise.all(nodes.map((n) => affinityEntries(n, "cp-sticky")));
  if (!before.every(Number.isFinite)) return skip(ctx, name, "not measurable (/api/state reports no affinity entry count)");
  const rss0 = nodes.map((n) => rssBytes(n.pid));
  ctx.log(`  writing ${count.toLocaleString("en-US")} affinity entries to etcd as batches of 500 …`);
  const now = Date.now();
  const writer = "bench-writer";
  let seq = 0;
  const per = 500;
  const batches: number[] = [];
  for (let i = 0; i < count; i += per) batches.push(i);
  const t0 = performance.now();
  // A few writers at once: sequential puts through the gateway would take most of a minute.
  await Promise.all(
    Array.from({ length: 8 }, async () => {
      for (let b = batches.shift(); b !== undefined; b = batches.shift()) {
        const entries = [];
        for (let j = b; j < Math.min(b + per, count); j++) {
          // Addresses are only keys in the table here: no traffic is sent to or from them.
          entries.push({ ip: `127.${32 + ((j >>> 16) & 63)}.${(j >>> 8) & 255}.${j & 255}`, backend: j % 2 ? "s1" : "s2", lastUsed: now, created: now, gen: 1, creator: writer });
        }
        for (const v of mod.encodeBatches!(writer, entries)) await etcd.put(`${PREFIX}affinity/cp-sticky/${writer}/${seq++}`, v);
      }
    }),
  );
  const writeS = (performance.now() - t0) / 1000;
  // Wait until every node holds them (or stops growing).
  const want = before.map((b) => b + count);
  let held = before;
  let stableSince = performance.now();
  while (performance.now() - t0 < 180_000) {
    const now2 = await Promise.all(nodes.map((n) => affinityEntries(n, "cp-sticky")));
    if (now2.some((x, i) => x !== held[i])) stableSince = performance.now();
    held = now2;
    if (held.every((h, i) => h >= Math.min(want[i], 1_000_000) * 0.99)) break;
    if (performance.now() - stableSince > 10_000) break;
    await sleep(500);
  }
  const loadS = (performance.now() - t0) / 1000;
  await sleep(2000);
  const rss = nodes.map((n) => rssBytes(n.pid));
  const mib = (b: number) => `${(b / 2 ** 20).toFixed(0)} MiB`;
  const perEntry = nodes.map((_, i) => (rss[i] - rss0[i]) / Math.max(1, held[i] - before[i]));
  add(ctx, {
    name,
    value: nodes.map((n, i) => `${n.id} ${mib(rss[i])} (+${mib(rss[i] - rss0[i])}, ${held[i].toLocaleString("en-US")} entries)`).join("; "),
    meets: null,
    note: `≈ ${Math.round(median(perEntry))} B RSS per entry; ${count.toLocaleString("en-US")} entries written to etcd in ${writeS.toFixed(1)} s as ${seq} batches and loaded by all 3 nodes after ${loadS.toFixed(1)} s (affinity.maxEntries default 1M)`,
    data: { rss0, rss, before, held, writeS, loadS },
  });
}

export async function runControlPlane(ctx: Context, etcd: Etcd, sinkPorts: number[]): Promise<void> {
  ctx.log("control plane …");
  await maglev(ctx);
  if (!ctx.results.ballast.available) {
    for (const n of ["etcd put → routed on all 3 nodes", "backend death → down on all 3 nodes", "health leader failover (leader SIGKILLed)", "affinity entries replicated per second", "affinity visibility lag (node A → node B)", "RSS with 1M affinity entries"]) {
      skip(ctx, n, `Ballast node ${ctx.results.ballast.note}`);
    }
    return;
  }
  const victim = await startTcpSink(ctx.group, "cp-victim", 1);
  const victimPort = victim.ports[0];
  const sinks = sinkPorts.map((p, i) => ({ id: `s${i + 1}`, value: { address: "127.0.0.1", port: p } }));
  await etcd.deletePrefix(PREFIX);
  await seedServices(etcd, CLUSTER, [
    { name: "cp-route", record: { listen: "127.0.0.1:0", health: { type: "none" } }, backends: [{ id: "gen-0", value: `127.0.0.1:${sinkPorts[0]}` }] },
    {
      name: "cp-health",
      record: { listen: "127.0.0.1:0", algorithm: "source-ip", health: { interval: "1s", timeout: "500ms", fall: 2, rise: 2, jitter: 0 } },
      backends: [
        { id: "alive", value: `127.0.0.1:${sinkPorts[0]}` },
        { id: "victim", value: `127.0.0.1:${victimPort}` },
      ],
    },
    { name: "cp-sticky", record: { listen: `${STICKY_ADDRESS}:0`, affinity: { mode: "source-ip", ttl: "10m" } }, backends: sinks },
  ]);
  const ids = ["cp-a", "cp-b", "cp-c"];
  const nodes: BallastNode[] = [];
  try {
    for (const id of ids) nodes.push(await startNode(ctx.group, { id, cluster: CLUSTER, etcdUrl: etcd.url, runDir: ctx.runDir }));
  } catch (err) {
    const note = `3 nodes did not start: ${(err as Error).message.split("\n")[0]}`;
    for (const n of ["etcd put → routed on all 3 nodes", "backend death → down on all 3 nodes", "health leader failover (leader SIGKILLed)", "affinity entries replicated per second", "affinity visibility lag (node A → node B)", "RSS with 1M affinity entries"]) {
      skip(ctx, n, note);
    }
    return;
  }
  ctx.log(`  3 nodes up (${nodes.map((n) => n.admin).join(", ")})`);
  const guarded = async (name: string, f: () => Promise<void>) => {
    try {
      await f();
    } catch (err) {
      skip(ctx, name, `failed: ${(err as Error).message.split("\n")[0]}`);
    }
  };
  await guarded("etcd put → routed on all 3 nodes", () => putToRouted(ctx, etcd, nodes, sinkPorts[0]));
  await guarded("backend death → down on all 3 nodes", () => deathToDown(ctx, nodes, victimPort, victim));
  await guarded("affinity", () => affinity(ctx, etcd, nodes));
  await guarded("health leader failover (leader SIGKILLed)", () =>
    failover(ctx, etcd, nodes, (i) => startNode(ctx.group, { id: ids[i], cluster: CLUSTER, etcdUrl: etcd.url, runDir: ctx.runDir })),
  );
  await Promise.all(nodes.map((n) => n.proc.stop(5000)));
  await victim.proc.stop();
}
