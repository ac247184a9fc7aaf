// `npm run bench [-- --quick] [-- --profile]`: direct, HAProxy (1 thread, mode tcp), Ballast proxy, Ballast
// NAT and Ballast DSR through the same namespace hops (client ns → balancer ns → backend ns), in one run;
// UDP and memory on loopback; control-plane figures after. See test/bench/README.md.
// `npm run bench -- --scale 3,12,40,100` runs only the scale bench (test/bench/scale.ts).
// `npm run bench -- --workers` adds Ballast `workers: 2` and HAProxy `nbthread 2` to the namespace rounds.
import { mkdirSync } from "node:fs";
import os from "node:os";
import { join } from "node:path";
import { startHttpBackends, startIperfServer, startTcpSink, startUdpEcho } from "./backends.js";
import { type BallastNode, type NodeOptions, probeBallast, repoRoot, seedServices, type ServiceRecord, startNode, stopNode } from "./ballast.js";
import type { Context, Options } from "./context.js";
import { runControlPlane } from "./control-plane.js";
import { type Paths, tcpRounds, udpRounds } from "./dataplane.js";
import { runDns } from "./dns.js";
import { type Etcd, startEtcd } from "./etcd.js";
import { type Frontend, startHaproxy } from "./haproxy.js";
import { KERNEL_MODES, kernelNodeConfig, kernelServices, probeKernelMode, runNatControlPlane } from "./kernel-modes.js";
import { killLoadTools, logLoadToolsTo } from "./load.js";
import { runMemory } from "./memory.js";
import { runScale, scaleOptions } from "./scale.js";
import { buildNamespaces, NET, namespacesUnavailable } from "./netns-plane.js";
import { cpuSeconds, freePort, httpGet, rssBytes, sleep } from "./net.js";
import { type Proc, ProcessGroup } from "./procs.js";
import { profileRun } from "./profiling.js";
import { newResults, type Target, writeResults } from "./report.js";
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
    workers: flag("workers"),
  };
}

const opts = parseOptions(process.argv.slice(2));
/** `--scale N[,N…]`: simulated cluster sizes; the scale bench replaces the usual phases. */
const scaleSizes = (() => {
  const argv = process.argv.slice(2);
  const i = argv.indexOf("--scale");
  const raw = i >= 0 ? argv[i + 1] : process.env.npm_config_scale;
  if (raw === undefined) return null;
  const sizes = raw.split(",").map(Number);
  if (sizes.length === 0 || sizes.some((n) => !Number.isInteger(n) || n < 1 || n > 2000)) {
    process.stderr.write(`--scale: expected node counts like 3,12,40,100 (1..2000), got ${JSON.stringify(raw)}\n`);
    process.exit(2);
  }
  return sizes;
})();
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
const ctx: Context = { opts, group, runDir, resultsDir, results, log, cleanups: [] };

let finishing = false;
async function finish(code: number): Promise<never> {
  // A second caller (the main flow failing because an interrupt stopped its processes) waits for the first.
  if (finishing) return new Promise<never>(() => {});
  finishing = true;
  log("stopping every process the bench started …");
  killLoadTools();
  await group.stopAll();
  // Namespaces go after the processes in them; a cleanup that fails must not keep the others from running.
  for (const c of ctx.cleanups.splice(0).reverse()) await c().catch((e: Error) => log(`cleanup: ${e.message}`));
  results.finished = new Date().toISOString();
  results.notes.push(`Load average (1 min) at the end: ${os.loadavg()[0].toFixed(2)} on ${os.cpus().length} cores; anything else running on the machine competes with wrk, the proxies and the backends.`);
  if (scaleSizes === null) {
    const files = writeResults(resultsDir, results);
    log(`results: ${files.md}\n        ${files.json}\n        logs and configs: ${runDir}`);
  } else log(`logs: ${runDir}`);
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

/** Says whether the backend could have limited the proxied figures: direct must be well above them. */
function backendHeadroomNote(kind: string): void {
  const direct = median(results.samples["ka.rps"]?.direct ?? []);
  const proxied = Math.max(median(results.samples["ka.rps"]?.haproxy ?? []), median(results.samples["ka.rps"]?.ballast ?? []) || 0);
  if (!Number.isFinite(direct) || !Number.isFinite(proxied) || proxied <= 0) return;
  const x = direct / proxied;
  results.notes.push(
    `Backend (${kind}) headroom: direct keep-alive ${Math.round(direct)} req/s is ${x.toFixed(2)}× the best proxied (HAProxy, Ballast proxy) rate` +
      (x >= 1.3 ? " — the backend is not what limits the proxied figures." : " — close to the proxied rate, so the backend may be limiting them; read ratios with care."),
  );
}

/** Keeps the node's metrics scraped as Prometheus would, a little more often; returns the stop function. */
function scrapeMetrics(node: () => BallastNode | undefined): () => void {
  const t = setInterval(() => {
    const n = node();
    if (n) void httpGet(`${n.admin}/metrics`, 2000);
  }, 5000);
  return () => clearInterval(t);
}

/**
 * The TCP data plane in namespaces: direct, HAProxy, Ballast proxy (and with affinity), Ballast NAT and
 * Ballast DSR, each through client ns → balancer ns → backend ns. Kernel modes the node does not have
 * are reported as skipped. Then the NAT control-plane figures, while the topology is up.
 */
async function namespacePlane(etcd: Etcd, nginx: string | null): Promise<void> {
  const why = namespacesUnavailable();
  if (why) {
    for (const t of ["direct", "haproxy", "ballast", "ballast-log", "ballast-nolog", "ballast-affinity", "ballast-nat", "ballast-dsr", ...(opts.workers ? (["haproxy-2t", "ballast-w2"] as const) : [])] as Target[]) results.skipped[t] = `skipped — the namespace data plane cannot run here: ${why}`;
    log(`TCP data plane skipped: ${why}`);
    return;
  }
  log("creating the namespaces (client → balancer → backend) …");
  const ns = await buildNamespaces(ctx, etcd);
  results.topology =
    `Topology: network namespaces made by the bench, one-armed as a Maglev/DSR node is — client (\`${NET.client}\`), balancer (\`${NET.lbFront}\` + \`${NET.lbBack}\`, IP forwarding on, no redirects) and backend (\`${NET.backends.join("`, `")}\`; VIP \`${NET.dsrVip}\` on lo) on one switch (a bridge namespace), in two subnets; ` +
    "the client's and the backends' default routes point at the balancer, so every path crosses client → switch → balancer → switch → backend, both ways. " +
    `**direct**: the balancer only routes. HAProxy and Ballast proxy listen on \`${NET.lbFront}\`. Ballast NAT's VIP \`${NET.natVip}\` and Ballast DSR's VIP \`${NET.dsrVip}\` are no address of the balancer: only the node's nftables tables make them answer (DSR replies are routed by the balancer straight back to the client, untouched by Ballast). wrk and iperf3 run in the client namespace.`;

  log("starting backends in the backend namespace …");
  const http = await startHttpBackends(group, runDir, nginx, 1, ns.backendAt([NET.httpPort]));
  ns.procs.push(http.proc);
  results.backend = {
    kind: http.kind,
    note: http.kind === "nginx" ? "nginx, 1 worker, `return 200`, on every backend address" : "Node http server (nginx not installed); check direct req/s ≫ proxied req/s to see it is not the bottleneck",
  };
  ns.procs.push((await startIperfServer(group, ns.backendAt([NET.iperfPort]))).proc);
  ns.procs.push((await startTcpSink(group, "tcp-sink-ns", 1, undefined, ns.backendAt([NET.sinkPort]))).proc);

  log("starting HAProxy in the balancer namespace …");
  const frontends: Frontend[] = [
    { name: "http", bind: NET.lbFront, port: NET.haproxy.http, servers: NET.backends.map((a, i) => ({ name: `b${i + 1}`, address: a, port: NET.httpPort })) },
    { name: "bulk", bind: NET.lbFront, port: NET.haproxy.bulk, servers: [{ name: "i1", address: NET.backends[0], port: NET.iperfPort, checkPort: NET.sinkPort }] },
  ];
  const haproxy = await startHaproxy(group, join(runDir), frontends, { ns: ns.lb.name, waitListening: (p) => ns.waitListening(ns.lb, p) });
  for (const [what, host, port] of [["backend (direct)", NET.backends[0], NET.httpPort], ["HAProxy", NET.lbFront, NET.haproxy.http]] as const) {
    const r = await ns.probeHttp(host, port, 15_000);
    if (!r.ok) throw new Error(`${what}: GET http://${host}:${port}/ from the client namespace did not answer 200 (last: ${r.last})`);
  }

  const paths: Paths = {
    http: { direct: ns.dest(NET.backends[0], NET.httpPort), haproxy: ns.dest(NET.lbFront, NET.haproxy.http) },
    bulk: { direct: ns.dest(NET.backends[0], NET.iperfPort), haproxy: ns.dest(NET.lbFront, NET.haproxy.bulk) },
    pid: { haproxy: () => haproxy.pid },
  };
  const targets: Target[] = ["direct", "haproxy"];
  // --workers: HAProxy with 2 threads beside the 1-thread one, same backends (issue 18's pair).
  let haproxy2: Proc | undefined;
  if (opts.workers) {
    const frontends2: Frontend[] = [
      { ...frontends[0], port: NET.haproxy.http2t },
      { ...frontends[1], port: NET.haproxy.bulk2t },
    ];
    const h2 = await startHaproxy(group, join(runDir), frontends2, { ns: ns.lb.name, waitListening: (p) => ns.waitListening(ns.lb, p) }, 2);
    haproxy2 = h2;
    const r = await ns.probeHttp(NET.lbFront, NET.haproxy.http2t, 15_000);
    if (!r.ok) throw new Error(`HAProxy nbthread 2: GET http://${NET.lbFront}:${NET.haproxy.http2t}/ from the client namespace did not answer 200 (last: ${r.last})`);
    paths.http["haproxy-2t"] = ns.dest(NET.lbFront, NET.haproxy.http2t);
    paths.bulk["haproxy-2t"] = ns.dest(NET.lbFront, NET.haproxy.bulk2t);
    paths.pid["haproxy-2t"] = () => h2.pid;
    targets.push("haproxy-2t");
  }
  let node: BallastNode | undefined;
  const sideNodes: BallastNode[] = [];
  const nodeOpts: NodeOptions = { id: "bench-ns", cluster: "bench", etcdUrl: ns.etcdUrl, runDir, netns: { name: ns.lb.name, sockDir: ns.sockDir }, extraConfig: kernelNodeConfig(ns) };
  if (results.ballast.available) {
    const backends = NET.backends.map((a, i) => ({ id: `b${i + 1}`, value: { address: a, port: NET.httpPort } }));
    const iperfBackend = [{ id: "i1", value: { address: NET.backends[0], port: NET.iperfPort, checkPort: NET.sinkPort } }];
    const services: ServiceRecord[] = [
      { name: "http", record: { listen: `${NET.lbFront}:${NET.ballast.http}`, protocol: "tcp", algorithm: "round-robin" }, backends },
      { name: "http-affinity", record: { listen: `${NET.lbFront}:${NET.ballast.affinity}`, protocol: "tcp", affinity: { mode: "source-ip", ttl: "10m" } }, backends },
      { name: "bulk", record: { listen: `${NET.lbFront}:${NET.ballast.bulk}`, protocol: "tcp" }, backends: iperfBackend },
      ...kernelServices(backends, iperfBackend),
    ];
    log("seeding services into etcd and starting the Ballast node in the balancer namespace …");
    await seedServices(etcd, "bench", services);
    for (const side of ACCESS_LOG_SIDES) await seedServices(etcd, side.cluster, [{ name: "http", record: { listen: `${NET.lbFront}:${side.port}`, protocol: "tcp", algorithm: "round-robin" }, backends }]);
    node = await startNode(group, nodeOpts);
    log(`Ballast node ready (admin through ${node.admin}, RSS idle ${(rssBytes(node.pid) / 2 ** 20).toFixed(1)} MiB)`);
    for (const [name, port] of [["http", NET.ballast.http], ["http-affinity", NET.ballast.affinity]] as const) {
      const r = await ns.probeHttp(NET.lbFront, port, 15_000);
      if (!r.ok) throw new Error(`Ballast ${name} service: GET http://${NET.lbFront}:${port}/ from the client namespace did not answer 200 (last: ${r.last})`);
    }
    const current = () => node!.pid;
    paths.http.ballast = ns.dest(NET.lbFront, NET.ballast.http);
    paths.http["ballast-affinity"] = ns.dest(NET.lbFront, NET.ballast.affinity);
    paths.bulk.ballast = ns.dest(NET.lbFront, NET.ballast.bulk);
    paths.pid.ballast = current;
    paths.pid["ballast-affinity"] = current;
    targets.push("ballast");
    // The access log's cost: two more nodes that differ only in the switch (it is per node), each with
    // just the HTTP service, in a cluster of its own so it binds only its own port. The main node is
    // not the "on" side: its nft/conntrack children (NAT, DSR) are charged to its CPU.
    for (const side of ACCESS_LOG_SIDES) {
      const n = await startNode(group, { ...nodeOpts, id: `bench-ns-${side.cluster}`, cluster: side.cluster, nsAdminPort: side.adminPort, extraConfig: [...side.extraConfig] }).catch((err: Error) => {
        results.skipped[side.target] = `skipped — the node did not start: ${err.message.split("\n")[0]}`;
        return undefined;
      });
      if (!n) continue;
      sideNodes.push(n);
      const r = await ns.probeHttp(NET.lbFront, side.port, 15_000);
      if (!r.ok) throw new Error(`${side.target}: GET http://${NET.lbFront}:${side.port}/ from the client namespace did not answer 200 (last: ${r.last})`);
      paths.http[side.target] = ns.dest(NET.lbFront, side.port);
      paths.pid[side.target] = () => n.pid;
      targets.push(side.target);
    }
    targets.push("ballast-affinity");
    // --workers: a node of its own with `workers: 2` (primary + 2 forked workers), the HTTP and bulk
    // services only (no kernel modes: its CPU is the proxy's), in a cluster of its own.
    if (opts.workers) {
      await seedServices(etcd, "bench-w2", [
        { name: "http", record: { listen: `${NET.lbFront}:${NET.ballast.w2http}`, protocol: "tcp", algorithm: "round-robin" }, backends },
        { name: "bulk", record: { listen: `${NET.lbFront}:${NET.ballast.w2bulk}`, protocol: "tcp" }, backends: iperfBackend },
      ]);
      const n = await startNode(group, { ...nodeOpts, id: "bench-ns-w2", cluster: "bench-w2", nsAdminPort: 9904, extraConfig: ["workers: 2"] }).catch((err: Error) => {
        results.skipped["ballast-w2"] = `skipped — the node did not start: ${err.message.split("\n")[0]}`;
        return undefined;
      });
      if (n) {
        sideNodes.push(n);
        const r = await ns.probeHttp(NET.lbFront, NET.ballast.w2http, 15_000);
        if (!r.ok) throw new Error(`Ballast workers: 2: GET http://${NET.lbFront}:${NET.ballast.w2http}/ from the client namespace did not answer 200 (last: ${r.last})`);
        paths.http["ballast-w2"] = ns.dest(NET.lbFront, NET.ballast.w2http);
        paths.bulk["ballast-w2"] = ns.dest(NET.lbFront, NET.ballast.w2bulk);
        paths.pid["ballast-w2"] = () => n.pid;
        targets.push("ballast-w2");
      }
    }
    for (const mode of KERNEL_MODES) {
      const skip = await probeKernelMode(ctx, node, ns, mode);
      if (skip) {
        results.skipped[mode.target] = skip;
        log(`${TARGET_NAME[mode.target]}: ${skip}`);
        continue;
      }
      log(`${TARGET_NAME[mode.target]}: answering through ${mode.vip}`);
      paths.http[mode.target] = ns.dest(mode.vip, NET.httpPort);
      paths.bulk[mode.target] = ns.dest(mode.vip, NET.iperfPort);
      // The kernel forwards; the node's own process is what Ballast costs in CPU for these paths.
      paths.pid[mode.target] = current;
      targets.push(mode.target);
    }
  } else {
    for (const t of ["ballast", "ballast-log", "ballast-nolog", "ballast-affinity", "ballast-nat", "ballast-dsr", ...(opts.workers ? (["ballast-w2"] as const) : [])] as Target[]) results.skipped[t] = `skipped — ${results.ballast.note}`;
  }

  // Let the node settle first: right after start every backend's verdict goes unknown → up, and each
  // new snapshot is programmed again (nft runs), which would load whichever path runs first.
  for (const n of sideNodes) await settle(n);
  if (node) {
    await settle(node);
    // The node's baseline with no traffic: what its CPU per request on the kernel paths is made of.
    const idleS = opts.quick ? 1 : 3;
    const c0 = cpuSeconds(node.pid);
    await sleep(idleS * 1000);
    results.nodeIdleCpuMsPerS = ((cpuSeconds(node.pid) - c0) * 1000) / idleS;
  }
  const stopScrape = scrapeMetrics(() => node);
  const stopScrapeLog = sideNodes.map((n) => scrapeMetrics(() => n));
  log(`data plane: ${targets.join(", ")} (backend: ${http.kind})`);
  const loadBefore = os.loadavg()[0];
  await tcpRounds(ctx, paths, targets);
  results.dataPlaneLoad = { before: loadBefore, after: os.loadavg()[0] };
  stopScrape();
  for (const stop of stopScrapeLog) stop();
  for (const n of sideNodes) await stopNode(n);
  backendHeadroomNote(http.kind);

  if (node && opts.profile) {
    results.notes.push(`Ballast RSS after the data-plane rounds (before the profile runs): ${(rssBytes(node.pid) / 2 ** 20).toFixed(1)} MiB.`);
    await stopNode(node);
    node = undefined;
    await profileRun(ctx, (id, profileDir) => startNode(group, { ...nodeOpts, id, profileDir }), { http: paths.http.ballast!, bulk: paths.bulk.ballast! });
  }
  if (node) await stopNode(node);
  if (results.ballast.available && paths.http["ballast-nat"]) {
    // As the other control-plane figures: a failure is reported in its row, the run goes on.
    await runNatControlPlane(ctx, etcd, ns, nodeOpts).catch((err: Error) => {
      results.controlPlane.push({ name: "NAT: verdict flip → map updated / service map loaded / table size", value: "skipped", meets: null, note: `failed: ${err.message.split("\n")[0]}` });
      log(`NAT control plane failed: ${err.stack ?? err.message}`);
    });
  }
  else if (results.ballast.available) results.controlPlane.push({ name: "NAT: verdict flip → map updated / service map loaded / table size", value: "skipped", meets: null, note: results.skipped["ballast-nat"] ?? "" });
  await haproxy.stop();
  await haproxy2?.stop();
  await ns.destroy();
}

/** The access log's two sides: nodes alike but for `accessLog.enabled` (on is the default). */
const ACCESS_LOG_SIDES = [
  { target: "ballast-log", cluster: "bench-log", port: NET.ballast.log, adminPort: 9903, extraConfig: [] as string[] },
  { target: "ballast-nolog", cluster: "bench-nolog", port: NET.ballast.nolog, adminPort: 9902, extraConfig: ["accessLog: { enabled: false }"] },
] as const;

/** Waits (up to 20 s) until every backend of every service on the node has an "up" verdict. */
async function settle(node: BallastNode): Promise<void> {
  const end = Date.now() + 20_000;
  let pending = "";
  while (Date.now() < end) {
    const r = await httpGet(`${node.admin}/api/state`, 2000);
    try {
      const services = (JSON.parse(r.body) as { services: { name: string; backends: { id: string; verdict: { state?: string } | null }[] }[] }).services;
      pending = services.flatMap((s) => s.backends.filter((b) => b.verdict?.state !== "up").map((b) => `${s.name}/${b.id}`)).join(", ");
      if (pending === "") return;
    } catch {
      pending = `/api/state: ${r.status}`;
    }
    await sleep(250);
  }
  results.notes.push(`The node had not settled when the rounds began (backends without an "up" verdict after 20 s: ${pending}).`);
}

const TARGET_NAME: Record<string, string> = { "ballast-nat": "Ballast NAT", "ballast-dsr": "Ballast DSR" };

/** UDP and memory stay on loopback: a Ballast node and HAProxy on 127.0.0.1, a UDP echo and a TCP sink. */
async function loopbackPlane(etcd: Etcd): Promise<number[]> {
  log("loopback: UDP echo, TCP sink, HAProxy and a Ballast node for UDP and memory …");
  const udpEcho = await startUdpEcho(group);
  const sink = await startTcpSink(group, "tcp-sink", 2);
  const hp = { hold: await freePort() };
  const haproxy = await startHaproxy(group, runDir, [{ name: "hold", port: hp.hold, servers: sink.ports.map((p, i) => ({ name: `s${i + 1}`, port: p })) }]);
  const bp = { udp: await freePort(), hold: await freePort() };
  const services: ServiceRecord[] = [
    // The echo also listens on TCP at the same port, so the default tcp health check sees it up.
    { name: "udp", record: { listen: `127.0.0.1:${bp.udp}`, protocol: "udp" }, backends: [{ id: "u1", value: { address: "127.0.0.1", port: udpEcho.port } }] },
    { name: "hold", record: { listen: `127.0.0.1:${bp.hold}`, protocol: "tcp", timeouts: { idle: "30m" } }, backends: sink.ports.map((p, i) => ({ id: `s${i + 1}`, value: { address: "127.0.0.1", port: p } })) },
  ];
  const nodeOpts = { id: "bench-lo", cluster: "bench-lo", etcdUrl: etcd.url, runDir };
  let node: BallastNode | undefined;
  if (results.ballast.available) {
    await seedServices(etcd, "bench-lo", services);
    node = await startNode(group, nodeOpts);
  }
  const udpPorts: Partial<Record<Target, number>> = { direct: udpEcho.port };
  if (node) udpPorts.ballast = bp.udp;
  log(`UDP on loopback: ${Object.keys(udpPorts).join(", ")}`);
  await udpRounds(ctx, udpPorts, { ballast: () => node!.pid });

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
  // The sink keeps running: the control-plane phase uses it as its backends.
  return sink.ports;
}

async function main(): Promise<void> {
  if (scaleSizes !== null) {
    log(`Ballast scale bench: ${scaleSizes.join(", ")} simulated nodes${opts.quick ? " (quick)" : ""}`);
    await runScale(ctx, scaleOptions(scaleSizes, opts.quick, process.argv.includes("--status-only") || process.env.npm_config_status_only === "true"));
    return;
  }
  log(`Ballast bench, ${opts.quick ? "quick smoke run" : "full run"}: ${opts.rounds} round(s) of ${opts.durationS} s${opts.profile ? ", with CPU profiles" : ""}`);
  log("checking tools …");
  ensureTools(log);
  const nginx = opts.nodeBackend ? null : ensureNginx(!opts.quick, log);
  results.machine = machineFacts(nginx);
  log(`${results.machine.cpuModel}, ${results.machine.cores} cores, Node ${results.machine.node}, ${results.machine.haproxy}, load average ${results.machine.loadAverage}`);
  results.ballast = probeBallast();
  if (!results.ballast.available) log(`Ballast node: ${results.ballast.note} — measuring direct and HAProxy only`);

  log("starting etcd …");
  const etcd = await startEtcd(group, runDir);
  await namespacePlane(etcd, nginx);
  const sinkPorts = await loopbackPlane(etcd);
  if (opts.controlPlane) await runControlPlane(ctx, etcd, sinkPorts);
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
