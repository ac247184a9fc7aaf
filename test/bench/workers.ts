// `npm run bench:workers [-- --duration 5] [-- --rounds 1] [-- --only ballast|haproxy] [-- --threads 1|2]`: the proxy on more than one core (issue 18).
// Ballast proxy `workers: 1` and `workers: 2` against HAProxy `nbthread 1` and `nbthread 2`, on loopback,
// same nginx backends, same load: keep-alive req/s, new conn/s, bulk Gbit/s (iperf3, 2 streams), added
// p99 at light load, CPU per request / per new connection / per GB summed over every process of the
// proxy (Ballast: the primary and its workers), RSS per process, and 2 ÷ 1 throughput. A bare Node.js
// pipe proxy (agents/pipe-proxy.ts) runs beside them: the runtime's floor, to tell our cost from Node's.
// Narrower than `npm run bench` (no namespaces, no etcd, no kernel modes): the ratios are what it is for.
import { mkdirSync, readdirSync, writeFileSync } from "node:fs";
import os from "node:os";
import { join } from "node:path";
import { agentPath, sinkOpen, startHttpBackends, startIperfServer, startTcpSink } from "./backends.js";
import { cliPath, repoRoot } from "./ballast.js";
import { startHaproxy } from "./haproxy.js";
import { iperf, killLoadTools, loopback, wrk } from "./load.js";
import { freePort, httpGet, processTree, rssBytes, sleep, treeCpuSeconds } from "./net.js";
import { type Proc, ProcessGroup } from "./procs.js";
import { summarizeProfile } from "./profile.js";
import { median } from "./stats.js";
import { ensureNginx } from "./tools.js";

const argv = process.argv.slice(2);
const value = (name: string) => {
  const i = argv.indexOf(`--${name}`);
  return i >= 0 ? argv[i + 1] : undefined;
};
const durationS = Number(value("duration") ?? 5);
const rounds = Number(value("rounds") ?? 1);
const stamp = new Date().toISOString().replace(/[:.]/g, "-");
const runDir = join(repoRoot, "results", `workers-${stamp}`);
mkdirSync(runDir, { recursive: true });
const group = new ProcessGroup(join(runDir, "logs"));
const t0 = Date.now();
const log = (m: string) => process.stdout.write(`[${((Date.now() - t0) / 1000).toFixed(0).padStart(4)}s] ${m}\n`);


interface Target {
  name: string;
  http: number;
  /** Two bulk services, one iperf3 server behind each (a server runs one test at a time). */
  bulk: [number, number];
  pid: () => number;
  stop(): Promise<void>;
}

interface Sample {
  kaRps: number;
  kaP99: number;
  kaCpuUs: number;
  ncRps: number;
  ncCpuUs: number;
  gbps: number;
  cpuSPerGB: number;
  latP99: number;
  rssMiB: number[];
}

async function ballast(workers: number, backends: number[], iperfPorts: [number, number], profileDir?: string): Promise<Target> {
  const http = await freePort();
  const bulk: [number, number] = [await freePort(), await freePort()];
  const admin = await freePort();
  const file = join(runDir, `ballast-w${workers}.yaml`);
  const svc = (name: string, port: number, to: number[]) => ({ name, listen: `127.0.0.1:${port}`, protocol: "tcp", algorithm: "round-robin", health: { type: "none" }, backends: to.map((p, i) => ({ id: `b${i + 1}`, address: "127.0.0.1", port: p })) });
  writeFileSync(file, JSON.stringify({ workers, admin: { listen: `127.0.0.1:${admin}` }, log: { level: "warn" }, accessLog: { enabled: false }, services: [svc("http", http, backends), svc("bulk1", bulk[0], [iperfPorts[0]]), svc("bulk2", bulk[1], [iperfPorts[1]])] }));
  // --profile: the primary under --cpu-prof; SIGUSR2 (profile-exit preload) makes it exit and write the file.
  const prof = profileDir === undefined ? [] : ["--cpu-prof", "--cpu-prof-dir", profileDir, "--import", agentPath("profile-exit")];
  const proc = group.start(`ballast-w${workers}`, process.execPath, [...prof, cliPath, "node", "--config", file], { nofile: 100_000 });
  const end = Date.now() + 60_000;
  while ((await httpGet(`http://127.0.0.1:${admin}/readyz`, 1000).catch(() => ({ status: 0 }))).status !== 200) {
    if (Date.now() > end) throw new Error(`ballast workers ${workers}: not ready in 60 s`);
    await sleep(200);
  }
  const stop = async () => {
    if (profileDir === undefined) return proc.stop(5000);
    proc.signal("SIGUSR2");
    const t = setTimeout(() => proc.signal("SIGTERM"), 10_000);
    await proc.exited;
    clearTimeout(t);
  };
  return { name: `Ballast proxy, workers: ${workers}`, http, bulk, pid: () => proc.child.pid ?? 0, stop };
}

/** The runtime's floor: a bare Node.js pipe proxy (agents/pipe-proxy.ts), one process, the same services. */
async function pipeFloor(backends: number[], iperfPorts: [number, number]): Promise<Target> {
  const http = await freePort();
  const bulk: [number, number] = [await freePort(), await freePort()];
  const spec = [`${http}:${backends.join(",")}`, `${bulk[0]}:${iperfPorts[0]}`, `${bulk[1]}:${iperfPorts[1]}`].join(";");
  const proc = group.start("pipe-proxy", process.execPath, [agentPath("pipe-proxy"), "--listen", spec], { nofile: 100_000 });
  await proc.waitForLine(/"ready":true/, 30_000);
  return { name: FLOOR, http, bulk, pid: () => proc.child.pid ?? 0, stop: () => proc.stop(5000) };
}
const FLOOR = "Node.js pipe proxy (floor)";

async function haproxy(threads: number, backends: number[], iperfPorts: [number, number], checkPort: number): Promise<Target> {
  const http = await freePort();
  const bulk: [number, number] = [await freePort(), await freePort()];
  const proc: Proc = await startHaproxy(
    group,
    runDir,
    [
      { name: "http", port: http, servers: backends.map((p, i) => ({ name: `b${i + 1}`, port: p })) },
      { name: "bulk1", port: bulk[0], servers: [{ name: "i1", port: iperfPorts[0], checkPort }] },
      { name: "bulk2", port: bulk[1], servers: [{ name: "i2", port: iperfPorts[1], checkPort }] },
    ],
    undefined,
    threads,
  );
  return { name: `HAProxy, nbthread ${threads}`, http, bulk, pid: () => proc.child.pid ?? 0, stop: () => proc.stop(5000) };
}

async function measure(t: Target, threads: number): Promise<Sample> {
  const pid = t.pid();
  let c0 = treeCpuSeconds(pid);
  const ka = await wrk(loopback(t.http), { connections: 64, durationS, close: false, threads });
  const kaCpu = treeCpuSeconds(pid) - c0;
  const rssMiB = processTree(pid).map((p) => rssBytes(p) / 2 ** 20);
  await sleep(500);
  const lat = await wrk(loopback(t.http), { connections: 4, durationS: Math.max(1, Math.round(durationS / 2)), close: false });
  await sleep(500);
  c0 = treeCpuSeconds(pid);
  const nc = await wrk(loopback(t.http), { connections: 32, durationS, close: true, threads });
  const ncCpu = treeCpuSeconds(pid) - c0;
  await sleep(1000);
  c0 = treeCpuSeconds(pid);
  const bulk = await iperfParallel(t.bulk, Math.max(1, Math.round(durationS / 2)));
  const bulkCpu = treeCpuSeconds(pid) - c0;
  return {
    kaRps: ka.rps,
    kaP99: ka.p99Ms,
    kaCpuUs: (kaCpu * 1e6) / Math.max(1, ka.requests),
    ncRps: nc.rps,
    ncCpuUs: (ncCpu * 1e6) / Math.max(1, nc.requests),
    gbps: bulk.gbps,
    cpuSPerGB: bulk.bytes > 0 ? bulkCpu / (bulk.bytes / 1e9) : Number.NaN,
    latP99: lat.p99Ms,
    rssMiB,
  };
}

/** Two iperf3 clients at once, so two proxy workers (or threads) can each carry one stream. */
async function iperfParallel(ports: [number, number], seconds: number): Promise<{ gbps: number; bytes: number }> {
  const rs = await Promise.all(ports.map((p) => iperf(loopback(p), seconds)));
  return { gbps: rs.reduce((a, r) => a + (r.gbps || 0), 0), bytes: rs.reduce((a, r) => a + r.bytes, 0) };
}

/**
 * `--idle 10000,50000`: RSS of the primary and of each worker of a `workers: 2` node holding that many
 * idle proxied connections (conn-hold agents from several loopback sources → a TCP sink). Each
 * connection costs its worker two descriptors; the agents and the sink one each.
 */
async function idleMemory(steps: number[]): Promise<string[]> {
  const sink = await startTcpSink(group, "idle-sink", 1);
  const port = await freePort();
  const admin = await freePort();
  const file = join(runDir, "ballast-idle.yaml");
  writeFileSync(file, JSON.stringify({ workers: 2, admin: { listen: `127.0.0.1:${admin}` }, log: { level: "warn" }, accessLog: { enabled: false }, services: [{ name: "hold", listen: `127.0.0.1:${port}`, timeouts: { idle: "30m" }, health: { type: "none" }, backends: [{ id: "s1", address: "127.0.0.1", port: sink.ports[0] }] }] }));
  const node = group.start("ballast-idle", process.execPath, [cliPath, "node", "--config", file], { nofile: 2 * steps[steps.length - 1] + 10_000 });
  const end = Date.now() + 60_000;
  while ((await httpGet(`http://127.0.0.1:${admin}/readyz`, 1000).catch(() => ({ status: 0 }))).status !== 200) {
    if (Date.now() > end) throw new Error("idle node: not ready in 60 s");
    await sleep(200);
  }
  const pid = node.child.pid ?? 0;
  // The workers by their pids in /api/state (the primary may have other children: nft, ip).
  const workerPids = async () => (JSON.parse((await httpGet(`http://127.0.0.1:${admin}/api/state`, 5000)).body) as { workers: Array<{ pid: number }> }).workers.map((w) => w.pid);
  const workerRss = async () => (await workerPids()).map((p) => rssBytes(p) / 2 ** 20);
  const out = [`| idle connections | RSS primary (MiB) | RSS per worker (MiB) |`, "|---|---|---|", `| 0 | ${(rssBytes(pid) / 2 ** 20).toFixed(0)} | ${(await workerRss()).map((x) => x.toFixed(0)).join(" + ")} |`];
  const perAgent = 15_000;
  const agents = Math.max(1, Math.ceil(steps[steps.length - 1] / perAgent));
  const share = (n: number) => Math.ceil(n / agents);
  const procs: Proc[] = [];
  for (let a = 0; a < agents; a++) {
    procs.push(group.start(`idle-hold-${a}`, process.execPath, [agentPath("conn-hold"), "--port", String(port), "--steps", steps.map(share).join(","), "--sources", "8", "--sourceOffset", String(a * 8), "--concurrency", "32", "--timeoutMs", "300000"], { nofile: perAgent + 1000 }));
  }
  try {
    for (const step of steps) {
      const lines = await Promise.all(procs.map((p) => p.waitForLine(new RegExp(`"step":${share(step)},|"done":true`), 300_000)));
      const parsed = lines.map((l) => JSON.parse(l) as { open: number; failed: number; lastError?: string; done?: boolean });
      const open = parsed.reduce((a, p) => a + p.open, 0);
      await sleep(2000);
      const workers = await workerRss();
      out.push(`| ${open} (backend sees ${sinkOpen(sink.proc)}) | ${(rssBytes(pid) / 2 ** 20).toFixed(0)} | ${workers.map((x) => x.toFixed(0)).join(" + ")} |`);
      log(`idle: ${open} open → primary ${(rssBytes(pid) / 2 ** 20).toFixed(0)} MiB, workers ${workers.map((x) => x.toFixed(0)).join(" + ")} MiB${parsed.some((p) => p.failed) ? ` (${parsed.reduce((a, p) => a + p.failed, 0)} failed: ${parsed.find((p) => p.lastError)?.lastError})` : ""}`);
      if (parsed.some((p) => p.done) || open < step * 0.98) break;
      for (const p of procs) p.signal("SIGUSR2");
    }
  } finally {
    await Promise.all(procs.map((p) => p.stop(2000)));
    await node.stop(5000);
  }
  return out;
}

/**
 * `--profile [--threads N]`: one Ballast node (workers: N; the profile is the primary's, so N = 1 is
 * the useful one) per load — keep-alive, new connections, bulk — under --cpu-prof, each profile ranked
 * by self time (results/workers-<time>/profile-<load>/).
 */
async function profileLoads(workers: number): Promise<void> {
  const nginx = ensureNginx(false, log);
  const http = await startHttpBackends(group, runDir, nginx, 2);
  const ip1 = await startIperfServer(group);
  const ip2 = await startIperfServer(group);
  for (const load of ["keep-alive", "new-connections", "bulk"]) {
    const dir = join(runDir, `profile-${load}`);
    mkdirSync(dir, { recursive: true });
    const spawned = performance.now();
    const t = await ballast(workers, http.ports, [ip1.port, ip2.port], dir);
    await wrk(loopback(t.http), { connections: 8, durationS: 2, close: false });
    // Start-up and warm-up are not the hot path: the summary begins where the load does.
    const skipMs = performance.now() - spawned;
    const c0 = treeCpuSeconds(t.pid());
    let what: string;
    if (load === "bulk") {
      const r = await iperfParallel(t.bulk, durationS);
      what = `${r.gbps.toFixed(2)} Gbit/s, ${((treeCpuSeconds(t.pid()) - c0) / (r.bytes / 1e9)).toFixed(2)} s CPU/GB`;
    } else {
      const r = await wrk(loopback(t.http), { connections: load === "keep-alive" ? 64 : 32, durationS, close: load === "new-connections", threads: 2 });
      what = `${Math.round(r.rps)} req/s, ${(((treeCpuSeconds(t.pid()) - c0) * 1e6) / Math.max(1, r.requests)).toFixed(1)} µs CPU/req`;
    }
    await t.stop();
    const file = readdirSync(dir).find((f) => f.endsWith(".cpuprofile"));
    if (file === undefined) {
      log(`${load}: ${what}; no profile written`);
      continue;
    }
    const summary = summarizeProfile(join(dir, file), skipMs);
    log(`${load}: ${what}; busy ${summary.busyPct}%, by owner ${JSON.stringify(summary.byOwner)}`);
    for (const f of summary.top.slice(0, 15)) log(`  ${String(f.selfPctBusy).padStart(5)}%  ${f.name || "(anon)"}  ${f.where}`);
    for (const f of summary.ballastInclusive.slice(0, 10)) log(`  incl ${String(f.inclusivePctBusy).padStart(5)}%  ${f.name || "(anon)"}  ${f.where}`);
  }
}

async function main(): Promise<void> {
  const idle = value("idle");
  if (idle !== undefined) {
    const table = await idleMemory(idle.split(",").map(Number));
    const md = [`# Workers bench: idle connections (${new Date().toISOString()})`, "", ...table].join("\n");
    writeFileSync(join(runDir, "workers-idle.md"), `${md}\n`);
    process.stdout.write(`\n${md}\n`);
    return;
  }
  if (argv.includes("--profile")) {
    await profileLoads(Number(value("threads") ?? 1));
    return;
  }
  const load0 = os.loadavg();
  log(`workers bench: ${rounds} round(s) of ${durationS} s on ${os.cpus().length} cores, load average ${load0.map((x) => x.toFixed(2)).join(" / ")}`);
  const nginx = ensureNginx(false, log);
  const http = await startHttpBackends(group, runDir, nginx, 2);
  // Two iperf3 servers: one serves one test at a time, and the bulk row runs two streams.
  const ip1 = await startIperfServer(group);
  const ip2 = await startIperfServer(group);
  const sink = await startTcpSink(group, "check-sink");
  const rows: Array<{ t: Target; threads: number; samples: Sample[] }> = [];
  const direct = { kaRps: [] as number[], latP99: [] as number[] };
  // One proxy at a time (each alone on the cores), in the order 1, 2 for both.
  const iperfPorts: [number, number] = [ip1.port, ip2.port];
  const makers: Array<[() => Promise<Target>, number]> = [
    [() => haproxy(1, http.ports, iperfPorts, sink.ports[0]), 1],
    [() => haproxy(2, http.ports, iperfPorts, sink.ports[0]), 2],
    [() => ballast(1, http.ports, iperfPorts), 1],
    [() => ballast(2, http.ports, iperfPorts), 2],
    [() => pipeFloor(http.ports, iperfPorts), 1],
  ];
  // --only ballast|haproxy|floor: one side's rows (the ratios then need the other side's from an earlier run).
  const only = value("only");
  const side = (i: number) => (i < 2 ? "haproxy" : i < 4 ? "ballast" : "floor");
  if (only !== undefined) for (let i = makers.length - 1; i >= 0; i--) if (side(i) !== only) makers.splice(i, 1);
  // --threads 1|2: only the 1-worker/1-thread pair, or the 2 pair (before/after figures of one change).
  const threadsOnly = value("threads");
  if (threadsOnly !== undefined) for (let i = makers.length - 1; i >= 0; i--) if (String(makers[i][1]) !== threadsOnly) makers.splice(i, 1);
  for (let r = 0; r < rounds; r++) {
    const d = await wrk(loopback(http.ports[0]), { connections: 64, durationS, close: false, threads: 2 });
    direct.kaRps.push(d.rps);
    direct.latP99.push((await wrk(loopback(http.ports[0]), { connections: 4, durationS: Math.max(1, Math.round(durationS / 2)), close: false })).p99Ms);
    for (let i = 0; i < makers.length; i++) {
      const [make, threads] = makers[i];
      const t = await make();
      // Warm-up (JIT, first connections), not recorded.
      await wrk(loopback(t.http), { connections: 8, durationS: 2, close: false, threads });
      const s = await measure(t, 2);
      log(`${t.name.padEnd(30)} ka ${Math.round(s.kaRps)} req/s (${s.kaCpuUs.toFixed(1)} µs CPU/req), nc ${Math.round(s.ncRps)} conn/s (${s.ncCpuUs.toFixed(0)} µs/conn), bulk ${s.gbps.toFixed(2)} Gbit/s (${s.cpuSPerGB.toFixed(2)} s CPU/GB), light p99 ${s.latP99.toFixed(2)} ms, RSS ${s.rssMiB.map((m) => m.toFixed(0)).join("+")} MiB`);
      let row = rows.find((x) => x.t.name === t.name);
      if (row === undefined) {
        row = { t, threads, samples: [] };
        rows.push(row);
      }
      row.samples.push(s);
      await t.stop();
      await sleep(1000);
    }
  }
  const m = (row: (typeof rows)[number], f: (s: Sample) => number) => median(row.samples.map(f));
  const directP99 = median(direct.latP99);
  const lines = [
    `# Workers bench (${new Date().toISOString()})`,
    "",
    `${rounds} round(s) of ${durationS} s, loopback, ${os.cpus().length} cores, nginx backends (${http.kind}), wrk -t2 for keep-alive and new connections, iperf3 2 streams for bulk. Load average before: ${load0.map((x) => x.toFixed(2)).join(" / ")}; after: ${os.loadavg().map((x) => x.toFixed(2)).join(" / ")}. Direct keep-alive ${Math.round(median(direct.kaRps))} req/s, light-load p99 ${directP99.toFixed(2)} ms.`,
    "",
    "| proxy | keep-alive req/s | new conn/s | bulk Gbit/s | added p99 (ms, 4 conns) | CPU µs/req | CPU µs/new conn | CPU s/GB | RSS per process (MiB) |",
    "|---|---|---|---|---|---|---|---|---|",
    ...rows.map((row) => `| ${row.t.name} | ${Math.round(m(row, (s) => s.kaRps))} | ${Math.round(m(row, (s) => s.ncRps))} | ${m(row, (s) => s.gbps).toFixed(2)} | ${(m(row, (s) => s.latP99) - directP99).toFixed(2)} | ${m(row, (s) => s.kaCpuUs).toFixed(1)} | ${m(row, (s) => s.ncCpuUs).toFixed(0)} | ${m(row, (s) => s.cpuSPerGB).toFixed(2)} | ${row.samples[row.samples.length - 1].rssMiB.map((x) => x.toFixed(0)).join(" + ")} |`),
    "",
  ];
  const byName = (n: string) => rows.find((r) => r.t.name === n);
  for (const [two, one] of [["HAProxy, nbthread 2", "HAProxy, nbthread 1"], ["Ballast proxy, workers: 2", "Ballast proxy, workers: 1"]]) {
    const a = byName(two);
    const b = byName(one);
    if (a === undefined || b === undefined) continue;
    lines.push(`- ${two} ÷ ${one}: keep-alive ${(m(a, (s) => s.kaRps) / m(b, (s) => s.kaRps)).toFixed(2)}×, new conn ${(m(a, (s) => s.ncRps) / m(b, (s) => s.ncRps)).toFixed(2)}×, bulk ${(m(a, (s) => s.gbps) / m(b, (s) => s.gbps)).toFixed(2)}×`);
  }
  for (const n of ["1", "2"]) {
    const b = byName(`Ballast proxy, workers: ${n}`);
    const h = byName(`HAProxy, nbthread ${n}`);
    if (b === undefined || h === undefined) continue;
    lines.push(`- Ballast ÷ HAProxy at ${n}: CPU per request ${(m(b, (s) => s.kaCpuUs) / m(h, (s) => s.kaCpuUs)).toFixed(2)}×, per new connection ${(m(b, (s) => s.ncCpuUs) / m(h, (s) => s.ncCpuUs)).toFixed(2)}×, per GB ${(m(b, (s) => s.cpuSPerGB) / m(h, (s) => s.cpuSPerGB)).toFixed(2)}×, keep-alive req/s ${(m(b, (s) => s.kaRps) / m(h, (s) => s.kaRps)).toFixed(2)}×`);
  }
  // How much of the gap to HAProxy is the runtime's: the bare pipe proxy against HAProxy, and Ballast against it.
  const floor = byName(FLOOR);
  const h1 = byName("HAProxy, nbthread 1");
  const b1 = byName("Ballast proxy, workers: 1");
  if (floor !== undefined && h1 !== undefined) {
    lines.push(`- Floor ÷ HAProxy at 1: CPU per request ${(m(floor, (s) => s.kaCpuUs) / m(h1, (s) => s.kaCpuUs)).toFixed(2)}×, per new connection ${(m(floor, (s) => s.ncCpuUs) / m(h1, (s) => s.ncCpuUs)).toFixed(2)}×, per GB ${(m(floor, (s) => s.cpuSPerGB) / m(h1, (s) => s.cpuSPerGB)).toFixed(2)}× (a bare Node.js pipe proxy: what the runtime costs before any product logic)`);
  }
  if (floor !== undefined && b1 !== undefined) {
    lines.push(`- Ballast ÷ floor at 1: CPU per request ${(m(b1, (s) => s.kaCpuUs) / m(floor, (s) => s.kaCpuUs)).toFixed(2)}×, per new connection ${(m(b1, (s) => s.ncCpuUs) / m(floor, (s) => s.ncCpuUs)).toFixed(2)}×, per GB ${(m(b1, (s) => s.cpuSPerGB) / m(floor, (s) => s.cpuSPerGB)).toFixed(2)}×`);
  }
  const md = lines.join("\n");
  writeFileSync(join(runDir, "workers.md"), `${md}\n`);
  process.stdout.write(`\n${md}\n\nresults: ${join(runDir, "workers.md")}\n`);
}

process.on("exit", () => {
  killLoadTools();
  group.killAllNow();
});
main().then(
  async () => {
    await group.stopAll();
    process.exit(0);
  },
  async (err: Error) => {
    log(`failed: ${err.stack ?? err.message}`);
    await group.stopAll();
    process.exit(1);
  },
);
