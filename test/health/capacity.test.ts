// How many backends one checker keeps up with at a 1 s interval: N listening sockets on loopback (in
// a separate process, so the checker's CPU is its own), TCP probes through the real check engine, and
// the lag of each probe behind its schedule. A measurement, not an assertion on speed: it only runs
// with BALLAST_HEALTH_CAPACITY set, e.g.
//   BALLAST_HEALTH_CAPACITY=1000,2000,4000 npx vitest run test/health/capacity.test.ts
// The first case runs the check engine alone; the second a whole node leading over real etcd.
import { type ChildProcess, spawn } from "node:child_process";
import { mkdirSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { describe, expect, it } from "vitest";
import { EtcdStore } from "../../node/control/etcd-store.js";
import { type CheckTarget, Checker } from "../../node/health/checker.js";
import { parseNodeRecord, parseVerdictValue, type Verdict } from "../../shared/codec.js";
import { KeySchema } from "../../shared/keys.js";
import { parseHealth } from "../helpers/health.js";
import { startEtcd } from "../helpers/etcd.js";
import { type NodeProcess, spawnNode, startNode, stopAllNodes } from "../helpers/node.js";
import { waitFor } from "../helpers/wait.js";

const sizes = (process.env.BALLAST_HEALTH_CAPACITY ?? "")
  .split(",")
  .map((s) => Number(s.trim()))
  .filter((n) => n > 0);
const RUN_MS = Number(process.env.BALLAST_HEALTH_CAPACITY_MS ?? 10_000);
const WARMUP_MS = 2_000;

const SERVERS = `
import net from "node:net";
const n = Number(process.argv[2]);
const ports = [];
for (let i = 0; i < n; i++) {
  const s = net.createServer((c) => { c.on("error", () => {}); c.end(); });
  await new Promise((r) => s.listen(0, "127.0.0.1", r));
  ports.push(s.address().port);
}
process.stdout.write(JSON.stringify(ports) + "\\n");
`;

async function startServers(n: number): Promise<{ child: ChildProcess; ports: number[] }> {
  const dir = mkdtempSync(join(tmpdir(), "ballast-capacity-"));
  const file = join(dir, "servers.mjs");
  writeFileSync(file, SERVERS);
  const child = spawn(process.execPath, [file, String(n)], { stdio: ["ignore", "pipe", "inherit"] });
  let out = "";
  const ports = await new Promise<number[]>((resolve, reject) => {
    child.stdout!.on("data", (d: Buffer) => {
      out += d.toString();
      if (out.includes("\n")) resolve(JSON.parse(out) as number[]);
    });
    child.once("exit", (code) => reject(new Error(`servers exited with ${code}`)));
  });
  return { child, ports };
}

function pct(sorted: number[], p: number): number {
  if (sorted.length === 0) return Number.NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}

describe.skipIf(sizes.length === 0)("health check capacity", () => {
  it.each(sizes)("%i backends at a 1 s interval", async (n) => {
    const { child, ports } = await startServers(n);
    try {
      const settings = parseHealth({ type: "tcp", interval: "1s", timeout: "1s", rise: 2, fall: 3 });
      const targets: CheckTarget[] = ports.map((port, i) => ({ key: `svc/b${i}`, service: "svc", id: `b${i}`, host: "127.0.0.1", port, kind: "tcp", settings }));
      const started = Date.now();
      const lags: number[] = [];
      const durations: number[] = [];
      let failures = 0;
      let probes = 0;
      const checker = new Checker("capacity", {
        onChange: () => {},
        onResult: (_t, outcome, seconds, lagMs) => {
          if (Date.now() - started < WARMUP_MS) return;
          probes++;
          if (!outcome.ok) failures++;
          lags.push(lagMs);
          durations.push(seconds * 1000);
        },
      });
      const cpu0 = process.cpuUsage();
      const loopLag = { max: 0 };
      let last = performance.now();
      const tick = setInterval(() => {
        const now = performance.now();
        if (Date.now() - started >= WARMUP_MS) loopLag.max = Math.max(loopLag.max, now - last - 50);
        last = now;
      }, 50);
      checker.setTargets(targets);
      await new Promise((r) => setTimeout(r, WARMUP_MS + RUN_MS));
      checker.stop();
      clearInterval(tick);
      const cpu = process.cpuUsage(cpu0);
      const seconds = RUN_MS / 1000;
      lags.sort((a, b) => a - b);
      durations.sort((a, b) => a - b);
      const rate = probes / seconds;
      const report = {
        backends: n,
        expectedChecksPerSecond: n,
        checksPerSecond: Math.round(rate),
        keptUp: `${((100 * rate) / n).toFixed(1)}%`,
        failures,
        lagMs: { p50: pct(lags, 50), p99: pct(lags, 99), max: lags.at(-1) },
        probeMs: { p50: +pct(durations, 50).toFixed(2), p99: +pct(durations, 99).toFixed(2) },
        eventLoopStallMaxMs: Math.round(loopLag.max),
        cpuOfOneCore: `${((100 * (cpu.user + cpu.system)) / 1e6 / (seconds + WARMUP_MS / 1000)).toFixed(1)}%`,
      };
      console.log(`[health capacity] ${JSON.stringify(report)}`);
      expect(probes).toBeGreaterThan(0);
    } finally {
      child.kill("SIGKILL");
    }
  }, 120_000);
});

describe.skipIf(sizes.length === 0)("health check capacity of a leader node on etcd", () => {
  it.each(sizes)("%i backends at a 1 s interval", async (n) => {
    const etcd = await startEtcd();
    const { child, ports } = await startServers(n);
    const keys = KeySchema.forCluster("capacity");
    const writer = new EtcdStore({ endpoints: [etcd.endpoint] });
    try {
      await writer.put(keys.service("svc"), JSON.stringify({ listen: "127.0.0.1:0", health: { type: "tcp", interval: "1s", timeout: "1s", rise: 2, fall: 3 } }));
      for (let i = 0; i < ports.length; i += 200) {
        await Promise.all(ports.slice(i, i + 200).map((port, j) => writer.put(keys.backend("svc", `b${i + j}`), `127.0.0.1:${port}`)));
      }
      const node = await startNode({ node: { id: "leader" }, cluster: "capacity", etcd: { endpoints: [etcd.endpoint], leaseTtl: 2 } });
      await waitFor(() => (node.reconciler.snapshot?.services.get("svc")?.backends.filter((b) => b.verdict?.state === "up").length ?? 0) === n, { timeoutMs: 120_000, message: "all verdicts up" });
      const read = async () => {
        const checks = (await node.health.metrics.checks.get()).values.reduce((sum, v) => sum + v.value, 0);
        const lag = (await node.health.metrics.lagSeconds.get()).values.filter((v) => v.metricName?.endsWith("_bucket"));
        return { checks, lag: new Map(lag.map((v) => [String(v.labels.le), v.value])) };
      };
      const cpu0 = process.cpuUsage();
      const before = await read();
      await new Promise((r) => setTimeout(r, RUN_MS));
      const after = await read();
      const cpu = process.cpuUsage(cpu0);
      const total = after.lag.get("+Inf")! - before.lag.get("+Inf")!;
      const within = (le: string) => `${((100 * (after.lag.get(le)! - before.lag.get(le)!)) / total).toFixed(1)}%`;
      const rate = (after.checks - before.checks) / (RUN_MS / 1000);
      const report = {
        backends: n,
        checksPerSecond: Math.round(rate),
        keptUp: `${((100 * rate) / n).toFixed(1)}%`,
        startedWithinMsOfSchedule: { 10: within("0.01"), 50: within("0.05"), 100: within("0.1"), 250: within("0.25") },
        verdictsUp: node.reconciler.snapshot!.services.get("svc")!.backends.filter((b) => b.verdict?.state === "up").length,
        cpuOfOneCore: `${((100 * (cpu.user + cpu.system)) / 1e6 / (RUN_MS / 1000)).toFixed(1)}%`,
      };
      console.log(`[health capacity, leader node] ${JSON.stringify(report)}`);
      expect(rate).toBeGreaterThan(0);
    } finally {
      await stopAllNodes();
      await writer.close();
      child.kill("SIGKILL");
      await etcd.stop();
    }
  }, 240_000);
});

// Observer quorum (issue 17): the cluster's probe load is K × backends per interval, not N × backends.
// Three nodes, each its own process (as deployed: one event loop per node), on one etcd; the same
// backends checked with `observers: 1` (the leader alone) and `observers: 3`. Probes per second are
// summed over the nodes' /metrics; "decided" is read from the verdicts in etcd (the leader's written
// word: up, and with K = 3 all three votes pass) and every node in shared mode, so a node in local
// fallback cannot hide or fake votes. Observation writes are seen in etcd's revision (made only on
// change: a steady state adds none beyond the heartbeats).
describe.skipIf(sizes.length === 0)("probe load of a three-node cluster: K observers against the leader alone", () => {
  it.each(sizes.flatMap((n) => [[n, 1], [n, 3]]))("%i backends, observers %i, at a 1 s interval", async (n, k) => {
    const etcd = await startEtcd();
    const { child, ports } = await startServers(n);
    const keys = KeySchema.forCluster("quorum-capacity");
    const writer = new EtcdStore({ endpoints: [etcd.endpoint] });
    const nodes: NodeProcess[] = [];
    try {
      await writer.put(keys.service("svc"), JSON.stringify({ listen: "127.0.0.1:0", health: { type: "tcp", interval: "1s", timeout: "1s", rise: 2, fall: 3, observers: k } }));
      for (let i = 0; i < ports.length; i += 200) {
        await Promise.all(ports.slice(i, i + 200).map((port, j) => writer.put(keys.backend("svc", `b${i + j}`), `127.0.0.1:${port}`)));
      }
      const ids = ["q1", "q2", "q3"];
      // Leases of 10 s: with 2 s, at load ~35 every node lost its lease and its watch within a minute
      // (etcd starved with the rest of the machine), fell back to its own checks, and no verdict was
      // ever written: that measured the machine, not the probe load this test is about.
      nodes.push(...(await Promise.all(ids.map((id) => spawnNode({ node: { id }, cluster: "quorum-capacity", etcd: { endpoints: [etcd.endpoint], leaseTtl: 10 }, accessLog: { enabled: false } })))));
      const api = async <T>(p: NodeProcess, path: string): Promise<T> => {
        const res = await fetch(`http://${p.admin}${path}`, { signal: AbortSignal.timeout(10_000) });
        return (await res.text()) as T;
      };
      const verdicts = async () => {
        const { kvs } = await writer.list(keys.verdicts);
        const out: Verdict[] = [];
        for (const kv of kvs) {
          try {
            out.push(parseVerdictValue(kv.value));
          } catch {
            // not a verdict this test wrote
          }
        }
        return out;
      };
      const decided = (vs: Verdict[]) => vs.filter((v) => v.state === "up" && (k === 1 || Object.values(v.votes ?? {}).filter((x) => x === "pass").length === k)).length;
      // Modes from the node records in etcd, not /api/state: a 1000-backend /api/state from three busy
      // nodes did not answer within 5 s for 240 s at load ~35 (the measurement starving what it measures).
      const modes = async () => {
        const { kvs } = await writer.list(keys.nodes);
        return kvs.map((kv) => parseNodeRecord(kv.key.slice(keys.nodes.length), kv.value));
      };
      let last = "";
      await waitFor(
        async () => {
          const [vs, records] = await Promise.all([verdicts(), modes()]);
          const votes = new Map<number, number>();
          for (const v of vs) {
            const passes = Object.values(v.votes ?? {}).filter((x) => x === "pass").length;
            votes.set(passes, (votes.get(passes) ?? 0) + 1);
          }
          last = `${decided(vs)} of ${n} decided in etcd (verdicts by pass votes: ${[...votes].map(([p, c]) => `${p}: ${c}`).join(", ")}); ${records.map((r) => `${r.id}: ${r.mode}, ready ${r.ready}`).join("; ")}`;
          return decided(vs) === n && records.length === ids.length && records.every((r) => r.mode === "shared");
        },
        { timeoutMs: 240_000, intervalMs: 1_000, message: `all verdicts up with ${k} votes, every node shared` },
      ).catch((err: Error) => {
        // The nodes' warnings and errors, for reading why (terms, fallbacks, local shortages).
        const dir = resolve(process.cwd(), "test-artifacts/capacity");
        mkdirSync(dir, { recursive: true });
        const file = resolve(dir, `quorum-${n}-k${k}.log`);
        writeFileSync(file, nodes.map((p, i) => p.logs.filter((l) => !l.includes('"level":30')).map((l) => `${ids[i]} ${l}`).join("\n")).join("\n"));
        throw new Error(`${err.message} (${last}; node warnings in ${file})`);
      });
      const checks = async () =>
        Promise.all(
          nodes.map(async (p) =>
            (await api<string>(p, "/metrics"))
              .split("\n")
              .filter((l) => l.startsWith("ballast_health_checks_total{"))
              .reduce((sum, l) => sum + Number(l.slice(l.lastIndexOf(" ") + 1)), 0),
          ),
        );
      const revision = async () => (await writer.list(keys.observations)).revision;
      const cpu0 = nodes.map((p) => cpuTicks(p.child.pid!));
      const before = await checks();
      const rev0 = await revision();
      await new Promise((r) => setTimeout(r, RUN_MS));
      const after = await checks();
      const rev1 = await revision();
      const cpu = nodes.map((p, i) => cpuTicks(p.child.pid!) - cpu0[i]);
      const perNode = after.map((c, i) => Math.round((c - before[i]) / (RUN_MS / 1000)));
      const total = perNode.reduce((a, b) => a + b, 0);
      const records = await modes();
      const report = {
        backends: n,
        observers: k,
        expectedChecksPerSecond: k * n,
        checksPerSecond: total,
        perNode: Object.fromEntries(ids.map((id, i) => [id, perNode[i]])),
        modes: Object.fromEntries(records.map((r) => [r.id, r.mode])),
        etcdRevisionsDuringRun: rev1 - rev0, // every write to the cluster prefix: heartbeats included
        // /proc ticks are 1/100 s: % of one core per node over the run.
        cpuOfOneCorePerNode: Object.fromEntries(ids.map((id, i) => [id, `${((100 * cpu[i]) / 100 / (RUN_MS / 1000)).toFixed(1)}%`])),
      };
      console.log(`[health capacity, quorum] ${JSON.stringify(report)}`);
      expect(total).toBeGreaterThan(0);
    } finally {
      for (const p of nodes) p.kill("SIGKILL");
      await Promise.all(nodes.map((p) => p.exited));
      await writer.close();
      child.kill("SIGKILL");
      await etcd.stop();
    }
  }, 420_000);
});

/** utime + stime of a process, in clock ticks (/proc/<pid>/stat fields 14 and 15). */
function cpuTicks(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return Number(fields[11]) + Number(fields[12]);
}
