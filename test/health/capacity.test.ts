// How many backends one checker keeps up with at a 1 s interval: N listening sockets on loopback (in
// a separate process, so the checker's CPU is its own), TCP probes through the real check engine, and
// the lag of each probe behind its schedule. A measurement, not an assertion on speed: it only runs
// with BALLAST_HEALTH_CAPACITY set, e.g.
//   BALLAST_HEALTH_CAPACITY=1000,2000,4000 npx vitest run test/health/capacity.test.ts
// The first case runs the check engine alone; the second a whole node leading over real etcd.
import { type ChildProcess, spawn } from "node:child_process";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { EtcdStore } from "../../node/control/etcd-store.js";
import { type CheckTarget, Checker } from "../../node/health/checker.js";
import { KeySchema } from "../../shared/keys.js";
import { parseHealth } from "../helpers/health.js";
import { startEtcd } from "../helpers/etcd.js";
import { startNode, stopAllNodes } from "../helpers/node.js";
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
// Three nodes (in this process) on one etcd; the same backends checked with `observers: 1` (the leader
// alone) and `observers: 3`. Probes per second are summed over the nodes; observation writes are
// seen in etcd's revision (made only on change: a steady state adds none beyond the heartbeats).
describe.skipIf(sizes.length === 0)("probe load of a three-node cluster: K observers against the leader alone", () => {
  it.each(sizes.flatMap((n) => [[n, 1], [n, 3]]))("%i backends, observers %i, at a 1 s interval", async (n, k) => {
    const etcd = await startEtcd();
    const { child, ports } = await startServers(n);
    const keys = KeySchema.forCluster("quorum-capacity");
    const writer = new EtcdStore({ endpoints: [etcd.endpoint] });
    try {
      await writer.put(keys.service("svc"), JSON.stringify({ listen: "127.0.0.1:0", health: { type: "tcp", interval: "1s", timeout: "1s", rise: 2, fall: 3, observers: k } }));
      for (let i = 0; i < ports.length; i += 200) {
        await Promise.all(ports.slice(i, i + 200).map((port, j) => writer.put(keys.backend("svc", `b${i + j}`), `127.0.0.1:${port}`)));
      }
      const nodes = await Promise.all(["q1", "q2", "q3"].map((id) => startNode({ node: { id }, cluster: "quorum-capacity", etcd: { endpoints: [etcd.endpoint], leaseTtl: 2 } })));
      const decided = (node: (typeof nodes)[number]) =>
        node.reconciler.snapshot?.services.get("svc")?.backends.filter((b) => b.verdict?.state === "up" && (k === 1 || Object.values(b.verdict.votes ?? {}).filter((v) => v === "pass").length === k)).length ?? 0;
      await waitFor(() => nodes.every((node) => decided(node) === n), { timeoutMs: 180_000, intervalMs: 500, message: `all verdicts up with ${k} votes` }).catch((err: Error) => {
        const seen = nodes.map((node) => `${node.id}: ${decided(node)} decided, mode ${node.health.mode}, leader ${node.health.status().leader}, observing ${node.health.status().observing.join(",")}`);
        throw new Error(`${err.message} (${seen.join("; ")})`);
      });
      const checks = async () => Promise.all(nodes.map(async (node) => (await node.health.metrics.checks.get()).values.reduce((sum, v) => sum + v.value, 0)));
      const revision = async () => (await writer.list(keys.observations)).revision;
      const cpu0 = process.cpuUsage();
      const before = await checks();
      const rev0 = await revision();
      await new Promise((r) => setTimeout(r, RUN_MS));
      const after = await checks();
      const rev1 = await revision();
      const cpu = process.cpuUsage(cpu0);
      const perNode = after.map((c, i) => Math.round((c - before[i]) / (RUN_MS / 1000)));
      const total = perNode.reduce((a, b) => a + b, 0);
      const report = {
        backends: n,
        observers: k,
        expectedChecksPerSecond: k * n,
        checksPerSecond: total,
        perNode: Object.fromEntries(nodes.map((node, i) => [node.id, perNode[i]])),
        etcdRevisionsDuringRun: rev1 - rev0, // every write to the cluster prefix: heartbeats included
        cpuOfOneCoreAllThreeNodes: `${((100 * (cpu.user + cpu.system)) / 1e6 / (RUN_MS / 1000)).toFixed(1)}%`,
      };
      console.log(`[health capacity, quorum] ${JSON.stringify(report)}`);
      expect(total).toBeGreaterThan(0);
    } finally {
      await stopAllNodes();
      await writer.close();
      child.kill("SIGKILL");
      await etcd.stop();
    }
  }, 300_000);
});
