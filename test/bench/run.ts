// `npm run bench [-- --quick] [-- --profile]`: Ballast against HAProxy (1 thread, mode tcp) and a direct
// connection, on loopback, in one run; control-plane figures after. See test/bench/README.md.
import { mkdirSync } from "node:fs";
import os from "node:os";
import { join } from "node:path";
import { startHttpBackends, startIperfServer, startTcpSink, startUdpEcho } from "./backends.js";
import { type BallastNode, probeBallast, repoRoot, seedServices, type ServiceRecord, startNode, stopNode } from "./ballast.js";
import type { Context, Options } from "./context.js";
import { runControlPlane } from "./control-plane.js";
import { runDns } from "./dns.js";
import { startEtcd } from "./etcd.js";
import { type Frontend, startHaproxy } from "./haproxy.js";
import { iperf, killLoadTools, logLoadToolsTo, udpBlast, wrk } from "./load.js";
import { runMemory } from "./memory.js";
import { cpuSeconds, freePort, httpGet, rssBytes, sleep } from "./net.js";
import { ProcessGroup } from "./procs.js";
import { profileRun } from "./profiling.js";
import { addSample, newResults, type Target, writeResults } from "./report.js";
import { median } from "./stats.js";
import { ensureNginx, ensureTools, machineFacts } from "./tools.js";

function parseOptions(argv: string[]): Options {
  // `npm run bench --quick` hands the flag to npm, which passes it on as npm_config_quick.
  const flag = (name: string) => argv.includes(`--${name}`) || process.env[`npm_config_${name.replace(/-/g, "_")}`] === "true";
  const value = (name: string) => {
    const i = argv.indexOf(`--${name}`);
    return i >= 0 ? argv[i + 1] : undefined;
  };
  const quick = flag("quick");
  return {
    quick,
    profile: flag("profile"),
    rounds: Number(value("rounds") ?? (quick ? 1 : 3)),
    durationS: Number(value("duration") ?? (quick ? 2 : 10)),
    controlPlane: !flag("no-control-plane"),
    nodeBackend: flag("node-backend"),
  };
}

const opts = parseOptions(process.argv.slice(2));
const t0 = Date.now();
const stamp = new Date().toISOString().replace(/[:.]/g, "-");
const resultsDir = join(repoRoot, "results");
const runDir = join(resultsDir, `run-${stamp}`);
mkdirSync(runDir, { recursive: true });
const group = new ProcessGroup(join(runDir, "logs"));
logLoadToolsTo(join(runDir, "logs", "load-tools.log"));
const results = newResults(opts.quick ? "quick" : "full", { ...opts });

const log = (msg: string) => {
  const s = ((Date.now() - t0) / 1000).toFixed(0).padStart(4);
  process.stdout.write(`[${s}s] ${msg}\n`);
};
const ctx: Context = { opts, group, runDir, resultsDir, results, log };

let finishing = false;
async function finish(code: number): Promise<never> {
  // A second caller (the main flow failing because an interrupt stopped its processes) waits for the first.
  if (finishing) return new Promise<never>(() => {});
  finishing = true;
  log("stopping every process the bench started …");
  killLoadTools();
  await group.stopAll();
  results.finished = new Date().toISOString();
  results.notes.push(`Load average (1 min) at the end: ${os.loadavg()[0].toFixed(2)} on ${os.cpus().length} cores; anything else running on the machine competes with wrk, the proxies and the backends.`);
  const files = writeResults(resultsDir, results);
  log(`results: ${files.md}\n        ${files.json}\n        logs and configs: ${runDir}`);
  process.exit(code);
}
process.on("SIGINT", () => {
  results.error = "interrupted (SIGINT)";
  void finish(130);
});
process.on("SIGTERM", () => {
  results.error = "terminated (SIGTERM)";
  void finish(143);
});
process.on("exit", () => {
  killLoadTools();
  group.killAllNow();
});

interface Paths {
  /** Service port per target for the HTTP runs. */
  http: Partial<Record<Target, number>>;
  bulk: Partial<Record<Target, number>>;
  udp: Partial<Record<Target, number>>;
  /** Process whose CPU and RSS are charged to each target (none for direct). */
  pid: Partial<Record<Target, () => number>>;
}

async function checkHttp(port: number, what: string): Promise<void> {
  const end = Date.now() + 15_000;
  let last = "";
  while (Date.now() < end) {
    const r = await httpGet(`http://127.0.0.1:${port}/`, 2000);
    if (r.status === 200) return;
    last = `${r.status} ${r.body.slice(0, 100)}`;
    await sleep(200);
  }
  throw new Error(`${what}: GET through 127.0.0.1:${port} did not answer 200 (last: ${last})`);
}

/** Samples a process's RSS until stopped; returns the maximum in MiB. */
function rssSampler(pid: number | undefined): () => number {
  if (!pid) return () => Number.NaN;
  let max = rssBytes(pid);
  const timer = setInterval(() => {
    const v = rssBytes(pid);
    if (v > max) max = v;
  }, 250);
  return () => {
    clearInterval(timer);
    return max / 2 ** 20;
  };
}

async function dataPlane(paths: Paths, targets: Target[]): Promise<void> {
  const d = opts.durationS;
  const short = Math.max(1, Math.round(d / 2));
  for (let round = 1; round <= opts.rounds; round++) {
    log(`round ${round}/${opts.rounds}`);
    for (const target of targets) {
      const port = paths.http[target]!;
      const pid = paths.pid[target]?.();
      const cpu0 = pid ? cpuSeconds(pid) : Number.NaN;
      const stopRss = rssSampler(pid);
      const ka = await wrk(port, { connections: 64, durationS: d, close: false });
      const cpu = pid ? cpuSeconds(pid) - cpu0 : Number.NaN;
      const rss = stopRss();
      addSample(results, "ka.rps", target, ka.rps);
      addSample(results, "ka.p50", target, ka.p50Ms);
      addSample(results, "ka.p99", target, ka.p99Ms);
      if (pid) addSample(results, "ka.cpuUsPerReq", target, (cpu * 1e6) / Math.max(1, ka.requests));
      if (pid) addSample(results, "ka.rssMiB", target, rss);
      results.runs.push({ round, test: "keep-alive", target, rps: ka.rps, p50Ms: ka.p50Ms, p99Ms: ka.p99Ms, errors: ka.errors, cpuS: cpu });
      log(`  keep-alive   ${target.padEnd(16)} ${Math.round(ka.rps).toString().padStart(7)} req/s  p50 ${ka.p50Ms.toFixed(2)} ms  p99 ${ka.p99Ms.toFixed(2)} ms${ka.errors ? `  errors ${ka.errors}` : ""}`);
      if (ka.requests === 0) throw new Error(`keep-alive through ${target} served no request:\n${ka.raw}`);
      await sleep(500);
    }
    for (const target of targets) {
      const lat = await wrk(paths.http[target]!, { connections: 4, durationS: short, close: false });
      addSample(results, "lat.p50", target, lat.p50Ms);
      addSample(results, "lat.p99", target, lat.p99Ms);
      results.runs.push({ round, test: "light-load", target, rps: lat.rps, p50Ms: lat.p50Ms, p99Ms: lat.p99Ms, errors: lat.errors });
      log(`  light load   ${target.padEnd(16)} p50 ${lat.p50Ms.toFixed(3)} ms  p99 ${lat.p99Ms.toFixed(3)} ms`);
      await sleep(300);
    }
    for (const target of targets) {
      const pid = paths.pid[target]?.();
      const cpu0 = pid ? cpuSeconds(pid) : Number.NaN;
      const nc = await wrk(paths.http[target]!, { connections: 32, durationS: d, close: true });
      const cpu = pid ? cpuSeconds(pid) - cpu0 : Number.NaN;
      addSample(results, "nc.rps", target, nc.rps);
      addSample(results, "nc.p99", target, nc.p99Ms);
      if (pid) addSample(results, "nc.cpuUsPerConn", target, (cpu * 1e6) / Math.max(1, nc.requests));
      results.runs.push({ round, test: "new-connections", target, rps: nc.rps, p50Ms: nc.p50Ms, p99Ms: nc.p99Ms, errors: nc.errors, cpuS: cpu });
      log(`  new conns    ${target.padEnd(16)} ${Math.round(nc.rps).toString().padStart(7)} conn/s p99 ${nc.p99Ms.toFixed(2)} ms${nc.errors ? `  errors ${nc.errors}` : ""}`);
      if (nc.requests === 0) throw new Error(`new connections through ${target} served no request:\n${nc.raw}`);
      await sleep(1000);
    }
    for (const target of targets) {
      const port = paths.bulk[target];
      if (!port) continue;
      const pid = paths.pid[target]?.();
      const cpu0 = pid ? cpuSeconds(pid) : Number.NaN;
      const r = await iperf(port, short);
      const cpu = pid ? cpuSeconds(pid) - cpu0 : Number.NaN;
      addSample(results, "bulk.gbps", target, r.gbps);
      if (pid && r.bytes > 0) addSample(results, "bulk.cpuMsPerGB", target, (cpu * 1000) / (r.bytes / 1e9));
      results.runs.push({ round, test: "bulk", target, gbps: r.gbps, error: r.error });
      log(`  bulk         ${target.padEnd(16)} ${Number.isFinite(r.gbps) ? r.gbps.toFixed(2) : "–"} Gbit/s${r.error ? `  (${r.error})` : ""}`);
      if (!(r.bytes > 0)) throw new Error(`bulk through ${target}: iperf3 moved nothing (${r.error ?? "no result"})`);
      await sleep(500);
    }
    for (const target of targets) {
      const port = paths.udp[target];
      if (!port) continue;
      const pid = paths.pid[target]?.();
      const cpu0 = pid ? cpuSeconds(pid) : Number.NaN;
      const u = await udpBlast(group, port, short * 1000);
      const cpu = pid ? cpuSeconds(pid) - cpu0 : Number.NaN;
      addSample(results, "udp.rate", target, u.rate);
      addSample(results, "udp.loss", target, u.loss);
      if (pid && u.received > 0) addSample(results, "udp.cpuUsPerDgram", target, (cpu * 1e6) / u.received);
      results.runs.push({ round, test: "udp", target, ...u });
      log(`  udp          ${target.padEnd(16)} ${Math.round(u.rate).toString().padStart(7)} dgram/s  loss ${(u.loss * 100).toFixed(2)}%${u.error ? `  (${u.error})` : ""}`);
      if (u.received === 0) throw new Error(`UDP through ${target}: nothing echoed (${u.error ?? "no reply"})`);
      await sleep(300);
    }
  }
}

/** Says whether the backend could have limited the proxied figures: direct must be well above them. */
function backendHeadroomNote(kind: string): void {
  const direct = median(results.samples["ka.rps"]?.direct ?? []);
  const proxied = Math.max(median(results.samples["ka.rps"]?.haproxy ?? []), median(results.samples["ka.rps"]?.ballast ?? []) || 0);
  if (!Number.isFinite(direct) || !Number.isFinite(proxied) || proxied <= 0) return;
  const x = direct / proxied;
  results.notes.push(
    `Backend (${kind}) headroom: direct keep-alive ${Math.round(direct)} req/s is ${x.toFixed(2)}× the best proxied rate` +
      (x >= 1.3 ? " — the backend is not what limits the proxied figures." : " — close to the proxied rate, so the backend may be limiting them; read ratios with care."),
  );
}

async function main(): Promise<void> {
  log(`Ballast bench, ${opts.quick ? "quick smoke run" : "full run"}: ${opts.rounds} round(s) of ${opts.durationS} s${opts.profile ? ", with CPU profiles" : ""}`);
  log("checking tools …");
  ensureTools(log);
  const nginx = opts.nodeBackend ? null : ensureNginx(!opts.quick, log);
  results.machine = machineFacts(nginx);
  log(`${results.machine.cpuModel}, ${results.machine.cores} cores, Node ${results.machine.node}, ${results.machine.haproxy}`);
  results.ballast = probeBallast();
  if (!results.ballast.available) log(`Ballast node: ${results.ballast.note} — measuring direct and HAProxy only`);

  log("starting backends …");
  const http = await startHttpBackends(group, runDir, nginx, 2);
  results.backend = {
    kind: http.kind,
    note: http.kind === "nginx" ? "nginx, 1 worker, `return 200`" : "Node http server (nginx not installed); check direct req/s ≫ proxied req/s to see it is not the bottleneck",
  };
  const iperfServer = await startIperfServer(group);
  const udpEcho = await startUdpEcho(group);
  const sink = await startTcpSink(group, "tcp-sink", 2);

  log("starting HAProxy …");
  const hp = { http: await freePort(), bulk: await freePort(), hold: await freePort() };
  const frontends: Frontend[] = [
    { name: "http", port: hp.http, servers: http.ports.map((p, i) => ({ name: `b${i + 1}`, port: p })) },
    // Health checks of the iperf3 server go to the sink: a check connection would look like a test client.
    { name: "bulk", port: hp.bulk, servers: [{ name: "i1", port: iperfServer.port, checkPort: sink.ports[0] }] },
    { name: "hold", port: hp.hold, servers: sink.ports.map((p, i) => ({ name: `s${i + 1}`, port: p })) },
  ];
  const haproxy = await startHaproxy(group, runDir, frontends);
  await checkHttp(hp.http, "HAProxy");
  await checkHttp(http.ports[0], "backend");

  const paths: Paths = {
    http: { direct: http.ports[0], haproxy: hp.http },
    bulk: { direct: iperfServer.port, haproxy: hp.bulk },
    udp: { direct: udpEcho.port },
    pid: { haproxy: () => haproxy.pid },
  };
  const targets: Target[] = ["direct", "haproxy"];

  log("starting etcd …");
  const etcd = await startEtcd(group, runDir);

  let node: BallastNode | undefined;
  const bp = { http: await freePort(), aff: await freePort(), bulk: await freePort(), udp: await freePort(), hold: await freePort() };
  const httpBackends = http.ports.map((p, i) => ({ id: `b${i + 1}`, value: { address: "127.0.0.1", port: p } }));
  const services: ServiceRecord[] = [
    { name: "http", record: { listen: `127.0.0.1:${bp.http}`, protocol: "tcp", algorithm: "round-robin" }, backends: httpBackends },
    { name: "http-affinity", record: { listen: `127.0.0.1:${bp.aff}`, protocol: "tcp", affinity: { mode: "source-ip", ttl: "10m" } }, backends: httpBackends },
    { name: "bulk", record: { listen: `127.0.0.1:${bp.bulk}`, protocol: "tcp" }, backends: [{ id: "i1", value: { address: "127.0.0.1", port: iperfServer.port, checkPort: sink.ports[0] } }] },
    // The echo also listens on TCP at the same port, so the default tcp health check sees it up.
    { name: "udp", record: { listen: `127.0.0.1:${bp.udp}`, protocol: "udp" }, backends: [{ id: "u1", value: { address: "127.0.0.1", port: udpEcho.port } }] },
    { name: "hold", record: { listen: `127.0.0.1:${bp.hold}`, protocol: "tcp", timeouts: { idle: "30m" } }, backends: sink.ports.map((p, i) => ({ id: `s${i + 1}`, value: { address: "127.0.0.1", port: p } })) },
  ];
  const nodeOpts = { id: "bench-1", cluster: "bench", etcdUrl: etcd.url, runDir };
  let idleFreshMiB = Number.NaN;
  if (results.ballast.available) {
    log("seeding services into etcd and starting the Ballast node …");
    await seedServices(etcd, "bench", services);
    node = await startNode(group, nodeOpts);
    await sleep(2000);
    idleFreshMiB = rssBytes(node.pid) / 2 ** 20;
    log(`Ballast node ready (admin ${node.admin}, RSS idle ${idleFreshMiB.toFixed(1)} MiB)`);
    await checkHttp(bp.http, "Ballast http service");
    await checkHttp(bp.aff, "Ballast http-affinity service");
    const current = () => node!.pid;
    paths.http.ballast = bp.http;
    paths.http["ballast-affinity"] = bp.aff;
    paths.bulk.ballast = bp.bulk;
    paths.udp.ballast = bp.udp;
    paths.pid.ballast = current;
    paths.pid["ballast-affinity"] = current;
    targets.push("ballast", "ballast-affinity");
  }

  // Metrics stay on and get scraped as Prometheus would, a little more often.
  const scrape = setInterval(() => {
    if (node) void httpGet(`${node.admin}/metrics`, 2000);
  }, 5000);
  log(`data plane: ${targets.join(", ")} (backend: ${http.kind})`);
  await dataPlane(paths, targets);
  clearInterval(scrape);
  backendHeadroomNote(http.kind);

  if (node && opts.profile) {
    const idleAfterLoad = rssBytes(node.pid) / 2 ** 20;
    await stopNode(node);
    await profileRun(ctx, nodeOpts, { http: bp.http, bulk: bp.bulk });
    node = await startNode(group, { ...nodeOpts, id: "bench-2" });
    results.notes.push(`Ballast RSS after the data-plane rounds (before the profile runs): ${idleAfterLoad.toFixed(1)} MiB.`);
  }

  await runMemory(ctx, {
    restart: node
      ? async () => {
          const before = rssBytes(node!.pid) / 2 ** 20;
          await stopNode(node!);
          node = await startNode(group, { ...nodeOpts, id: "bench-mem" });
          await sleep(2000);
          return { afterLoadMiB: before, freshMiB: rssBytes(node.pid) / 2 ** 20, node };
        }
      : undefined,
    ballastPort: bp.hold,
    haproxyPid: haproxy.pid,
    haproxyPort: hp.hold,
    sink: sink.proc,
  });

  if (node) await stopNode(node);
  await haproxy.stop();
  if (opts.controlPlane) await runControlPlane(ctx, etcd, sink.ports);
  if (results.ballast.available) await runDns(ctx, etcd);
}

try {
  await main();
  log("done");
  await finish(0);
} catch (err) {
  const e = err as Error;
  // After an interrupt the main flow fails because its processes were stopped: not news.
  if (!finishing) {
    results.error = e.message.split("\n")[0];
    log(`FAILED: ${e.stack ?? e.message}`);
  }
  await finish(1);
}
