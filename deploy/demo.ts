// `npm run demo`: a whole Ballast cluster on loopback — one etcd, three nodes, four demo backends
// (three registered), a demo service — and instructions. Ctrl-C stops everything it started.
import { type ChildProcess, execFileSync, spawn, spawnSync } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import http from "node:http";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { stringify } from "yaml";

const repo = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
const CLI = join(repo, "dist/node/cli.js");
const ETCD_PORT = Number(process.env.DEMO_ETCD_PORT ?? 23790);
const ETCD = `http://127.0.0.1:${ETCD_PORT}`;
const CLUSTER = "demo";
const SERVICE_PORT = Number(process.env.DEMO_PORT ?? 8080);
const DNS_PORT = Number(process.env.DEMO_DNS_PORT ?? 8053);
const BACKEND_PORTS = [9001, 9002, 9003, 9004];
const NODES = [
  { id: "node-1", bind: "127.0.0.1", admin: "127.0.0.1:9101" },
  { id: "node-2", bind: "127.0.0.2", admin: "127.0.0.2:9101" },
  { id: "node-3", bind: "127.0.0.3", admin: "127.0.0.3:9101" },
];

const children: ChildProcess[] = [];
const servers: http.Server[] = [];
let workDir = "";

function which(cmd: string): boolean {
  return spawnSync("sh", ["-c", `command -v ${cmd}`], { stdio: "ignore" }).status === 0;
}

/** etcd from PATH; as root on Debian, installs Debian's etcd-server; otherwise says how to get it. */
function ensureEtcd(): void {
  if (which("etcd") && which("etcdctl")) return;
  const isRoot = process.getuid?.() === 0;
  if (isRoot && existsSync("/etc/debian_version")) {
    console.log("etcd is not installed: installing Debian's etcd-server and etcd-client …");
    execFileSync("sh", ["-c", "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server etcd-client"], { stdio: "inherit" });
    return;
  }
  console.error("etcd is needed for the demo and is not on PATH.\n  Debian/Ubuntu: sudo apt-get install etcd-server etcd-client\n  Elsewhere: https://etcd.io/docs/ (any etcd ≥ 3.4; put etcd and etcdctl on PATH)");
  process.exit(1);
}

async function waitUntil(what: string, cond: () => Promise<boolean>, timeoutMs = 15_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (await cond().catch(() => false)) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`timed out waiting for ${what}`);
}

const ok = async (url: string) => (await fetch(url, { signal: AbortSignal.timeout(1000) })).ok;

function start(name: string, cmd: string, args: string[]): ChildProcess {
  const child = spawn(cmd, args, { stdio: ["ignore", "pipe", "pipe"] });
  const log = join(workDir, `${name}.log`);
  const out = (d: Buffer) => writeFileSync(log, d, { flag: "a" });
  child.stdout!.on("data", out);
  child.stderr!.on("data", out);
  child.on("exit", (code, signal) => {
    if (!stopping) console.error(`${name} exited (${code ?? signal}); see ${log}`);
  });
  children.push(child);
  return child;
}

function demoBackend(name: string, port: number): Promise<void> {
  const server = http.createServer((req, res) => {
    res.writeHead(200, { "content-type": "text/plain" });
    res.end(`hello from ${name} (port ${port}), you are ${req.socket.remoteAddress}\n`);
  });
  servers.push(server);
  return new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, "127.0.0.1", () => resolve());
  });
}

function etcdctl(...args: string[]): void {
  execFileSync("etcdctl", ["--endpoints", ETCD, ...args], { env: { ...process.env, ETCDCTL_API: "3" }, stdio: "ignore" });
}

let stopping = false;
async function stopAll(code = 0): Promise<never> {
  if (!stopping) {
    stopping = true;
    console.log("\nstopping the demo …");
    for (const c of children.slice().reverse()) c.kill("SIGTERM");
    await Promise.all(children.map((c) => (c.exitCode !== null || c.signalCode !== null ? null : new Promise((r) => {
      const t = setTimeout(() => { c.kill("SIGKILL"); r(null); }, 5000);
      c.on("exit", () => { clearTimeout(t); r(null); });
    }))));
    for (const s of servers) s.close();
    if (workDir) rmSync(workDir, { recursive: true, force: true });
  }
  process.exit(code);
}

async function main(): Promise<void> {
  if (!existsSync(CLI)) {
    console.error("dist/ is missing: run `npm run build` (npm run demo does it for you)");
    process.exit(1);
  }
  // `npm run demo -- --nat`: kernel forwarding, in namespaces of its own (deploy/demo-nat.ts).
  if (process.argv.includes("--nat")) return (await import("./demo-nat.js")).runNatDemo();
  ensureEtcd();
  workDir = mkdtempSync(join(tmpdir(), "ballast-demo-"));
  process.on("SIGINT", () => void stopAll());
  process.on("SIGTERM", () => void stopAll());

  console.log(`starting etcd on ${ETCD} …`);
  const peer = ETCD_PORT + 1;
  start("etcd", "etcd", [
    "--name", "demo", "--data-dir", join(workDir, "etcd"),
    "--listen-client-urls", ETCD, "--advertise-client-urls", ETCD,
    "--listen-peer-urls", `http://127.0.0.1:${peer}`, "--initial-advertise-peer-urls", `http://127.0.0.1:${peer}`,
    "--initial-cluster", `demo=http://127.0.0.1:${peer}`, "--logger", "zap", "--log-level", "error",
    // etcd keeps every revision until compacted: without this, the health heartbeat and affinity
    // batches grow the database until its quota (2 GiB) and NOSPACE stops every write.
    // 5 min of history, as kube-apiserver compacts its etcd every 5 min: a shorter history keeps the
    // database steady sooner after a burst (docs/scale.md, the soak).
    "--auto-compaction-mode", "periodic", "--auto-compaction-retention", "5m",
  ]);
  await waitUntil("etcd", () => ok(`${ETCD}/health`));

  for (const [i, port] of BACKEND_PORTS.entries()) await demoBackend(`backend-${i + 1}`, port);

  etcdctl("put", `/ballast/${CLUSTER}/services/web`, JSON.stringify({ listen: `127.0.0.1:${SERVICE_PORT}`, protocol: "tcp", algorithm: "maglev", health: { type: "http", interval: "1s", timeout: "500ms", http: { path: "/" } } }));
  for (const [i, port] of BACKEND_PORTS.slice(0, 3).entries()) etcdctl("put", `/ballast/${CLUSTER}/backends/web/b${i + 1}`, `127.0.0.1:${port}`);
  // Every node also answers DNS for lb.demo with the addresses of the nodes that are live.
  etcdctl("put", `/ballast/${CLUSTER}/dns`, JSON.stringify({ zone: "lb.demo", ttl: 5 }));

  mkdirSync(join(workDir, "nodes"), { recursive: true });
  for (const n of NODES) {
    const file = join(workDir, "nodes", `${n.id}.yaml`);
    writeFileSync(file, stringify({ node: { id: n.id, bindAddress: n.bind, zone: "demo", publicAddresses: [n.bind] }, cluster: CLUSTER, etcd: { endpoints: [ETCD], leaseTtl: 3 }, admin: { listen: n.admin }, dns: { listen: `${n.bind}:${DNS_PORT}` }, log: { level: "info" } }));
    start(n.id, process.execPath, [CLI, "node", "--config", file]);
  }
  for (const n of NODES) await waitUntil(`${n.id} ready`, () => ok(`http://${n.admin}/readyz`));

  console.log(`
Ballast demo is up: etcd ${ETCD}, 3 nodes, service "web" on port ${SERVICE_PORT} of each node, backends b1–b3.

  Send traffic (each node serves the same service; Maglev sends a flow to the same backend from any node):
    curl http://127.0.0.1:${SERVICE_PORT}/   curl http://127.0.0.2:${SERVICE_PORT}/   curl http://127.0.0.3:${SERVICE_PORT}/

  Add backend-4 with etcdctl (every node routes to it within milliseconds):
    ETCDCTL_API=3 etcdctl --endpoints ${ETCD} put /ballast/${CLUSTER}/backends/web/b4 127.0.0.1:${BACKEND_PORTS[3]}
  … or with the ballast CLI:
    node bin/ballast.js --etcd ${ETCD} --cluster ${CLUSTER} backend add web b4 127.0.0.1:${BACKEND_PORTS[3]}

  Resolve the service through any node's DNS (the live nodes; stop one and it leaves the answer):
    dig @127.0.0.1 -p ${DNS_PORT} web.lb.demo +short

  Look around:
    node bin/ballast.js --etcd ${ETCD} --cluster ${CLUSTER} status
    node bin/ballast.js --etcd ${ETCD} --cluster ${CLUSTER} route web 192.0.2.10
    status page  http://${NODES[0].admin}/        metrics  http://${NODES[0].admin}/metrics
    logs         ${workDir}/*.log

Ctrl-C stops everything.`);
}

main().catch(async (err: Error) => {
  console.error(`demo failed: ${err.message}`);
  await stopAll(1);
});
