// `npm run build && node dist/test/bench/soak.js [minutes] [--nodes N] [--rate R] [--ttl 5m] [--flip-every 180] [--flip-down 60]`:
// the etcd soak of issue 19. One real etcd run as the demo runs it (periodic auto-compaction, 5 min
// retention), N simulated nodes (test/bench/agents/scale-nodes.ts, the real BallastNode, one per process,
// default config: affinity.replication is the default), a service with source-ip affinity, steady new
// clients (R per node per second, routed by each node as a new connection would be) plus returning
// clients through another node, and a backend whose verdict flips (its listener closes for --flip-down
// seconds every --flip-every). Every minute: etcd's db size (total and in use), keys, revisions/min,
// affinity entries per node. At the end the least-squares slope of the db size over the steady window
// (after the keys' lifetime and two compaction retentions have passed) and over the run's last half.
// Results: results/soak-<time>.md and .json.
import { mkdirSync, writeFileSync } from "node:fs";
import net from "node:net";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { unpack } from "msgpackr";
import { GRACE_FACTOR, REFRESH_FACTOR } from "../../node/affinity/entries.js";
import { nodeConfigSchema } from "../../shared/schema.js";
import { type EtcdProcess, startEtcd } from "../helpers/etcd.js";
import { repoRoot, seedServices } from "./ballast.js";
import { Etcd } from "./etcd.js";
import { freePort, httpGet, sleep } from "./net.js";
import type { Proc } from "./procs.js";
import { type Agent, startAgent } from "./scale.js";

/** As deploy/demo.ts runs etcd: compaction every retention/10, keeping 5 min of history. */
export const COMPACTION_ARGS = ["--auto-compaction-mode=periodic", "--auto-compaction-retention=5m"];
const RETENTION_MIN = 5;

export interface SoakOptions {
  minutes: number;
  nodes: number;
  /** New clients per node per second (each also brings back half as many earlier clients, through another node). */
  rate: number;
  ttlMs: number;
  flipEveryS: number;
  flipDownS: number;
}

export interface SoakSample {
  minute: number;
  revision: number;
  revisionsPerMin: number;
  dbTotalBytes: number;
  dbInUseBytes: number;
  keys: number;
  recordKeys: number;
  batchKeys: number;
  entriesPerNodeMean: number;
  entriesPerNodeMax: number;
  clientsSoFar: number;
  notShared: number;
  flapVerdict: string;
}

export interface SoakResult {
  options: SoakOptions;
  replication: string;
  samples: SoakSample[];
  warmupMinute: number;
  slope: { lastHalfKeys: number | null; steadyInUse: number | null; steadyTotal: number | null; lastHalfInUse: number | null; lastHalfTotal: number | null };
  verdictFlips: number;
  /** Minutes whose sample etcd did not answer in time. */
  missedSamples: number[];
  /** Times b3's listener was closed (each should make two verdict changes: down, then up). */
  listenerCloses: number;
  quotaBytes: number;
}

/** etcd's own counters (its /metrics). */
async function etcdMetrics(url: string): Promise<{ total: number; inUse: number; keys: number; quota: number }> {
  const r = await httpGet(`${url}/metrics`, 10_000);
  const get = (name: string) => {
    for (const line of r.body.split("\n")) if (line.startsWith(`${name} `)) return Number(line.slice(name.length + 1));
    return Number.NaN;
  };
  return {
    total: get("etcd_mvcc_db_total_size_in_bytes"),
    inUse: get("etcd_mvcc_db_total_size_in_use_in_bytes"),
    keys: get("etcd_debugging_mvcc_keys_total"),
    quota: get("etcd_server_quota_backend_bytes"),
  };
}

/** Least-squares slope of y over x (bytes per minute); null with fewer than 3 points. */
export function slopePerMinute(points: readonly { x: number; y: number }[]): number | null {
  if (points.length < 3) return null;
  const n = points.length;
  const mx = points.reduce((t, p) => t + p.x, 0) / n;
  const my = points.reduce((t, p) => t + p.y, 0) / n;
  let num = 0;
  let den = 0;
  for (const p of points) {
    num += (p.x - mx) * (p.y - my);
    den += (p.x - mx) ** 2;
  }
  return den === 0 ? null : num / den;
}

/** A backend whose listener can be closed and opened again on the same port (its verdict flips). */
class FlappingBackend {
  private server: net.Server | null = null;
  port = 0;
  async open(): Promise<void> {
    const server = net.createServer((s) => s.destroy());
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(this.port, "127.0.0.1", () => resolve());
    });
    this.port = (server.address() as net.AddressInfo).port;
    this.server = server;
  }
  async close(): Promise<void> {
    const s = this.server;
    this.server = null;
    if (s) await new Promise<void>((r) => s.close(() => r()));
  }
}

/** Client addresses: distinct, never contacted (the simulated nodes only route them). */
const clientIp = (k: number) => `10.${(k >>> 16) & 255}.${(k >>> 8) & 255}.${k & 255}`;

export async function runSoak(o: SoakOptions, log: (s: string) => void): Promise<SoakResult> {
  const stamp = new Date().toISOString().replace(/[:.]/g, "-");
  const runDir = join(repoRoot, "results", `soak-${stamp}`);
  mkdirSync(join(runDir, "logs"), { recursive: true });
  const replication = nodeConfigSchema.parse({}).affinity.replication;
  const cluster = "soak";
  let etcdProc: EtcdProcess | null = null;
  const agents: Agent[] = [];
  const backends = [new FlappingBackend(), new FlappingBackend(), new FlappingBackend()];
  let stop = false;
  try {
    etcdProc = await startEtcd({ extraArgs: COMPACTION_ARGS });
    const etcd = new Etcd(etcdProc.endpoint, null as unknown as Proc);
    for (const b of backends) await b.open();
    const servicePort = await freePort();
    await seedServices(etcd, cluster, [
      {
        name: "web",
        record: { listen: `127.0.0.1:${servicePort}`, protocol: "tcp", affinity: { mode: "source-ip", ttl: `${o.ttlMs}ms` }, health: { type: "tcp", interval: "1s", rise: 2, fall: 2 } },
        backends: backends.map((b, i) => ({ id: `b${i + 1}`, value: { address: "127.0.0.1", port: b.port } })),
      },
    ]);
    for (let i = 0; i < o.nodes; i++) {
      const id = `soak-${i + 1}`;
      // Each node binds the service's listener on a loopback address of its own (no traffic goes to it).
      const agent = await startAgent(join(runDir, "logs"), id, { etcd: etcdProc.endpoint, cluster, nodes: [{ id, bind: `127.2.0.${i + 1}` }] }, [id]);
      // A send to an agent that exited fails its call (the call's own error); without this listener
      // the ChildProcess 'error' event would end the whole soak.
      agent.child.on("error", (err) => log(`soak: ${id}: ${err.message}`));
      agent.child.on("exit", (code, signal) => {
        if (!stop) log(`soak: ${id} exited (${code ?? signal}) before the end; see its log`);
      });
      agents.push(agent);
    }
    await Promise.all(agents.map((a) => a.call({ op: "start" }, 300_000)));
    const settleEnd = Date.now() + 120_000;
    for (;;) {
      const stats = await Promise.all(agents.map((a) => a.call({ op: "stats" }, 30_000)));
      const ready = stats.filter((s) => s.ready === 1 && (s.modes as Record<string, number>).shared === 1).length;
      if (ready === o.nodes && (await etcd.count(`/ballast/${cluster}/health/verdicts/web/`)) === backends.length) break;
      if (Date.now() > settleEnd) throw new Error(`cluster not settled after 120 s: ${JSON.stringify(stats)}`);
      await sleep(500);
    }
    log(`soak: ${o.nodes} nodes ready (replication ${replication}), etcd ${etcdProc.endpoint}; ${o.minutes} min, ${o.rate} new clients/s per node, TTL ${o.ttlMs / 1000} s`);

    // Traffic: every second each node routes its new clients and brings back earlier ones (seen by another node).
    let next = 0;
    const t0 = Date.now();
    const endAt = t0 + o.minutes * 60_000;
    let routeErrors = 0;
    const traffic = (async () => {
      for (let tick = 0; !stop; tick++) {
        const at = t0 + tick * 1000;
        if (at > Date.now()) await sleep(at - Date.now());
        if (stop) break;
        const live = Math.min(next, Math.floor(o.rate * o.nodes * (o.ttlMs / 1000) * 0.9));
        await Promise.all(
          agents.map((a) => {
            const clients: string[] = [];
            for (let k = 0; k < o.rate; k++) clients.push(clientIp(next++));
            for (let k = 0; k < Math.floor(o.rate / 2) && live > 0; k++) clients.push(clientIp(next - 1 - Math.floor(Math.random() * live)));
            return a.call({ op: "route", service: "web", clients }, 30_000).catch(() => {
              routeErrors++;
            });
          }),
        );
      }
    })();

    // Verdict flips: b3's listener closes for flipDownS every flipEveryS.
    let closes = 0;
    const flapping = (async () => {
      for (let k = 1; !stop; k++) {
        const downAt = t0 + k * o.flipEveryS * 1000 - o.flipDownS * 1000;
        while (!stop && Date.now() < downAt) await sleep(Math.min(1000, downAt - Date.now()));
        if (stop) break;
        await backends[2].close();
        closes++;
        const upAt = Date.now() + o.flipDownS * 1000;
        while (!stop && Date.now() < upAt) await sleep(Math.min(1000, upAt - Date.now()));
        await backends[2].open();
      }
    })();

    const samples: SoakSample[] = [];
    let lastRev = await etcdProc.revision();
    let lastMinute = 0;
    let verdictFlips = 0;
    let lastVerdict = "";
    const sample = async (minute: number) => {
      const m = await etcdMetrics(etcdProc!.endpoint);
      const rev = await etcdProc!.revision();
      const stats = (await Promise.all(agents.map((a) => a.call({ op: "stats" }, 30_000).catch(() => null)))).filter((x) => x !== null);
      const entries = stats.map((s) => s.affinityEntries as number);
      const v = (await etcd.range(`/ballast/${cluster}/health/verdicts/web/b3`)).kvs[0];
      const state = v ? String((unpack(v.value) as { state?: string }).state) : "none";
      const s: SoakSample = {
        minute,
        revision: rev,
        revisionsPerMin: Math.round((rev - lastRev) / Math.max(1, minute - lastMinute)),
        dbTotalBytes: m.total,
        dbInUseBytes: m.inUse,
        keys: m.keys,
        recordKeys: await etcd.count(`/ballast/${cluster}.clients/`),
        batchKeys: await etcd.count(`/ballast/${cluster}/affinity/`),
        entriesPerNodeMean: entries.reduce((t, x) => t + x, 0) / entries.length,
        entriesPerNodeMax: Math.max(...entries),
        clientsSoFar: next,
        notShared: stats.filter((x) => (x.modes as Record<string, number>).shared !== 1).length + (agents.length - stats.length),
        flapVerdict: state,
      };
      lastRev = rev;
      lastMinute = minute;
      samples.push(s);
      log(
        `soak ${String(minute).padStart(3)} min: db ${(s.dbTotalBytes / 2 ** 20).toFixed(2)} MiB total, ${(s.dbInUseBytes / 2 ** 20).toFixed(2)} MiB in use, ${s.keys} keys (${s.recordKeys} record, ${s.batchKeys} batch), ${s.revisionsPerMin} rev/min, entries/node ${s.entriesPerNodeMean.toFixed(0)} (max ${s.entriesPerNodeMax}), clients ${s.clientsSoFar}, b3 ${s.flapVerdict}${s.notShared ? `, ${s.notShared} nodes not shared` : ""}`,
      );
      return { quota: m.quota, state };
    };
    const missed: number[] = [];
    let quota = Number.NaN;
    ({ quota } = await sample(0));
    for (let minute = 1; minute <= o.minutes; minute++) {
      const at = t0 + minute * 60_000;
      while (Date.now() < at) {
        await sleep(Math.min(5_000, at - Date.now()));
        // Verdicts between samples: read the key every 5 s (flips last flipDownS, longer than that).
        try {
          const v = (await etcd.range(`/ballast/${cluster}/health/verdicts/web/b3`)).kvs[0];
          const state = v ? String((unpack(v.value) as { state?: string }).state) : "none";
          if (lastVerdict !== "" && state !== lastVerdict) verdictFlips++;
          lastVerdict = state;
        } catch {
          // etcd slow on a busy machine: the next read counts the flip.
        }
      }
      // A sample etcd does not answer in time (a busy machine) is missed, not the end of the soak.
      await sample(minute).catch((err: Error) => {
        missed.push(minute);
        log(`soak ${minute} min: sample missed (${err.message})`);
      });
    }
    stop = true;
    await Promise.all([traffic, flapping]);
    if (Date.now() > endAt + 120_000) log(`soak: sampling ran late (${Math.round((Date.now() - endAt) / 1000)} s): the machine was busy`);
    if (routeErrors > 0) log(`soak: ${routeErrors} route calls failed`);

    // etcd 3.4's periodic compactor with a retention under 1 h compacts once per retention (not every
    // retention/10), to the revision of one retention ago: history sways between 1 and 2 retentions,
    // so the db is steady only after the keys' lifetime and two retentions.
    const warmupMinute = Math.ceil((o.ttlMs * (GRACE_FACTOR + REFRESH_FACTOR * 2)) / 60_000) + 2 * RETENTION_MIN;
    const pts = (from: number, f: (s: SoakSample) => number) => samples.filter((s) => s.minute >= from).map((s) => ({ x: s.minute, y: f(s) }));
    const half = Math.floor(o.minutes / 2);
    const result: SoakResult = {
      options: o,
      replication,
      samples,
      warmupMinute,
      slope: {
        lastHalfKeys: slopePerMinute(pts(half, (s) => s.keys)),
        steadyInUse: slopePerMinute(pts(warmupMinute, (s) => s.dbInUseBytes)),
        steadyTotal: slopePerMinute(pts(warmupMinute, (s) => s.dbTotalBytes)),
        lastHalfInUse: slopePerMinute(pts(half, (s) => s.dbInUseBytes)),
        lastHalfTotal: slopePerMinute(pts(half, (s) => s.dbTotalBytes)),
      },
      verdictFlips,
      missedSamples: missed,
      listenerCloses: closes,
      quotaBytes: quota,
    };
    writeFileSync(join(runDir, "soak.json"), JSON.stringify(result, null, 2));
    writeFileSync(join(runDir, "soak.md"), soakMarkdown(result));
    log(`soak: results in ${runDir}`);
    return result;
  } finally {
    stop = true;
    await Promise.all(agents.map((a) => a.call({ op: "stop" }, 20_000).catch(() => a.child.kill("SIGKILL"))));
    for (const b of backends) await b.close();
    await etcdProc?.stop();
  }
}

const kib = (b: number | null) => (b === null ? "n/a" : `${(b / 1024).toFixed(1)} KiB/min`);

export function soakMarkdown(r: SoakResult): string {
  const o = r.options;
  const out = [
    `Soak: ${o.nodes} nodes, ${o.minutes} min, ${o.rate} new clients/s per node (+ ${Math.floor(o.rate / 2)} returning through another node), affinity TTL ${o.ttlMs / 1000} s, replication ${r.replication}, b3 down ${o.flipDownS} s every ${o.flipEveryS} s (${r.listenerCloses} times; ${r.verdictFlips} verdict changes seen), etcd ${COMPACTION_ARGS.join(" ")}, quota ${(r.quotaBytes / 2 ** 20).toFixed(0)} MiB`,
    "",
    "| min | db total MiB | db in use MiB | keys | record keys | batch keys | revisions/min | entries/node mean (max) | clients so far | b3 |",
    "|---|---|---|---|---|---|---|---|---|---|",
  ];
  for (const s of r.samples) {
    out.push(
      `| ${s.minute} | ${(s.dbTotalBytes / 2 ** 20).toFixed(2)} | ${(s.dbInUseBytes / 2 ** 20).toFixed(2)} | ${s.keys} | ${s.recordKeys} | ${s.batchKeys} | ${s.minute === 0 ? "" : s.revisionsPerMin} | ${s.entriesPerNodeMean.toFixed(0)} (${s.entriesPerNodeMax}) | ${s.clientsSoFar} | ${s.flapVerdict} |`,
    );
  }
  out.push(
    "",
    r.missedSamples.length > 0 ? `Missed samples (etcd did not answer in time): minutes ${r.missedSamples.join(", ")}.` : "",
    `Slope (least squares): steady window (minute ${r.warmupMinute} on: the keys' lease lifetime and twice the ${RETENTION_MIN} min retention passed) in use ${kib(r.slope.steadyInUse)}, total ${kib(r.slope.steadyTotal)}; last half (minute ${Math.floor(o.minutes / 2)} on) in use ${kib(r.slope.lastHalfInUse)}, total ${kib(r.slope.lastHalfTotal)}; keys ${r.slope.lastHalfKeys === null ? "n/a" : r.slope.lastHalfKeys.toFixed(0)}/min.`,
  );
  return `${out.join("\n")}\n`;
}

function parseArgs(argv: string[]): SoakOptions {
  const o: SoakOptions = { minutes: 30, nodes: 5, rate: 10, ttlMs: 300_000, flipEveryS: 180, flipDownS: 60 };
  const dur = (s: string) => {
    const m = /^(\d+(?:\.\d+)?)(ms|s|m)?$/.exec(s);
    if (!m) throw new Error(`bad duration ${s}`);
    return Number(m[1]) * (m[2] === "ms" ? 1 : m[2] === "m" ? 60_000 : 1000);
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const v = () => {
      const x = argv[++i];
      if (x === undefined) throw new Error(`${a} needs a value`);
      return x;
    };
    if (a === "--nodes") o.nodes = Number(v());
    else if (a === "--rate") o.rate = Number(v());
    else if (a === "--ttl") o.ttlMs = dur(v());
    else if (a === "--flip-every") o.flipEveryS = Number(v());
    else if (a === "--flip-down") o.flipDownS = Number(v());
    else if (/^\d+$/.test(a)) o.minutes = Number(a);
    else throw new Error(`unknown argument ${a}`);
  }
  if (!(o.nodes >= 1 && o.nodes <= 250)) throw new Error("--nodes: 1-250");
  if (!(o.rate >= 1) || !(o.minutes >= 1) || !(o.flipDownS < o.flipEveryS)) throw new Error("--rate and minutes ≥ 1, --flip-down < --flip-every");
  return o;
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const log = (s: string) => process.stdout.write(`${new Date().toISOString().slice(11, 19)} ${s}\n`);
  runSoak(parseArgs(process.argv.slice(2)), log).then(
    (r) => {
      process.stdout.write(`\n${soakMarkdown(r)}`);
      process.exit(0);
    },
    (err) => {
      process.stderr.write(`${(err as Error).stack}\n`);
      process.exit(1);
    },
  );
}
