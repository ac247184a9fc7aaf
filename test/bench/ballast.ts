// Ballast nodes as the bench runs them: etcd-backed config files, service records seeded into etcd,
// start (optionally under --cpu-prof), readiness, and probes for which admin features exist yet.
import { spawnSync } from "node:child_process";
import { existsSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import type { Etcd } from "./etcd.js";
import { freePort, httpGet, sleep } from "./net.js";
import type { Proc, ProcessGroup } from "./procs.js";
import { agentPath } from "./backends.js";

export const repoRoot = fileURLToPath(new URL("../../../", import.meta.url));
export const cliPath = join(repoRoot, "dist/node/cli.js");

export interface Availability {
  available: boolean;
  note: string;
}

/** Whether a Ballast node can be run at all: the compiled CLI exists and answers --help. */
export function probeBallast(): Availability {
  if (!existsSync(cliPath)) return { available: false, note: "not built yet (dist/node/cli.js missing)" };
  const r = spawnSync(process.execPath, [cliPath, "node", "--help"], { encoding: "utf8", timeout: 15_000 });
  if (r.status !== 0) return { available: false, note: `not built yet (\`cli.js node --help\` exited ${r.status}: ${(r.stderr || r.stdout).trim().split("\n")[0] ?? ""})` };
  return { available: true, note: "" };
}

export interface ServiceRecord {
  name: string;
  record: Record<string, unknown>;
  backends: { id: string; value: Record<string, unknown> | string }[];
}

export async function seedServices(etcd: Etcd, cluster: string, services: ServiceRecord[]): Promise<number> {
  let rev = 0;
  for (const s of services) {
    for (const b of s.backends) rev = await etcd.put(`/ballast/${cluster}/backends/${s.name}/${b.id}`, typeof b.value === "string" ? b.value : JSON.stringify(b.value));
    rev = await etcd.put(`/ballast/${cluster}/services/${s.name}`, JSON.stringify(s.record));
  }
  return rev;
}

export interface NodeOptions {
  id: string;
  cluster: string;
  etcdUrl: string;
  runDir: string;
  /** Write a CPU profile into this folder (node --cpu-prof). */
  profileDir?: string;
  leaseTtl?: number;
  logLevel?: string;
  /**
   * Run the node inside this network namespace (`ip netns exec`). Its admin API then listens on
   * 127.0.0.1 inside the namespace and reaches the bench through a Unix-socket relay in `sockDir`
   * (the host namespace gets no link); `etcdUrl` must be reachable from inside the namespace.
   */
  netns?: { name: string; sockDir: string };
  /** Admin port inside the namespace (default 9901); a second node in the same namespace needs its own. */
  nsAdminPort?: number;
  /** More top-level YAML lines for the node config (for example the kernel data plane's settings). */
  extraConfig?: string[];
}

export class BallastNode {
  constructor(
    readonly id: string,
    readonly proc: Proc,
    readonly adminPort: number,
    readonly opts: NodeOptions,
    /** Relays that carry the admin API out of the node's namespace; stopped with the node. */
    readonly relays: Proc[] = [],
  ) {}

  get admin(): string {
    return `http://127.0.0.1:${this.adminPort}`;
  }

  get pid(): number {
    return this.proc.pid;
  }
}

/** Admin port of a node inside a namespace (the namespace is the bench's own, so a fixed port is free). */
const NS_ADMIN_PORT = 9901;

/** A relay agent (see agents/relay.ts), in a namespace or in the host; resolves once it listens. */
export async function startRelay(group: ProcessGroup, name: string, listen: string, to: string, ns?: string): Promise<Proc> {
  const argv = [agentPath("relay"), "--listen", listen, "--to", to];
  const proc = ns ? group.start(name, "ip", ["netns", "exec", ns, process.execPath, ...argv]) : group.start(name, process.execPath, argv);
  await proc.waitForLine(/"ready":true/, 10_000);
  return proc;
}

export async function startNode(group: ProcessGroup, o: NodeOptions, adminPort?: number): Promise<BallastNode> {
  const port = o.netns ? (o.nsAdminPort ?? NS_ADMIN_PORT) : (adminPort ?? (await freePort()));
  const config = [
    `node: { id: ${o.id} }`,
    `cluster: ${o.cluster}`,
    `admin: { listen: "127.0.0.1:${port}" }`,
    `log: { level: ${o.logLevel ?? "warn"} }`,
    `etcd: { endpoints: ["${o.etcdUrl}"]${o.leaseTtl ? `, leaseTtl: ${o.leaseTtl}` : ""} }`,
    `drainTimeout: 1s`,
    ...(o.extraConfig ?? []),
    "",
  ].join("\n");
  const file = join(o.runDir, `ballast-${o.id}.yaml`);
  writeFileSync(file, config);
  const nodeArgs: string[] = [];
  if (o.profileDir) {
    nodeArgs.push("--cpu-prof", "--cpu-prof-dir", o.profileDir, "--import", fileURLToPath(new URL("./agents/profile-exit.js", import.meta.url)));
  }
  // Each proxied connection holds two descriptors; ask for far more than the default so the limit
  // reached (and reported) is the machine's hard limit, not a soft default.
  const argv = [...nodeArgs, cliPath, "node", "--config", file];
  const spawnOpts = { nofile: 1_000_000, cwd: repoRoot };
  const proc = o.netns
    ? group.start(`ballast-${o.id}`, "ip", ["netns", "exec", o.netns.name, process.execPath, ...argv], spawnOpts)
    : group.start(`ballast-${o.id}`, process.execPath, argv, spawnOpts);
  let node: BallastNode;
  if (o.netns) {
    const sock = join(o.netns.sockDir, `admin-${o.id}.sock`);
    const hostPort = adminPort ?? (await freePort());
    const inner = await startRelay(group, `relay-admin-${o.id}-ns`, `unix:${sock}`, `tcp:127.0.0.1:${port}`, o.netns.name);
    const outer = await startRelay(group, `relay-admin-${o.id}-host`, `tcp:127.0.0.1:${hostPort}`, `unix:${sock}`);
    node = new BallastNode(o.id, proc, hostPort, o, [inner, outer]);
  } else {
    node = new BallastNode(o.id, proc, port, o);
  }
  await waitReady(node, 30_000);
  return node;
}

export async function waitReady(node: BallastNode, timeoutMs: number): Promise<void> {
  const end = Date.now() + timeoutMs;
  let last = "";
  while (Date.now() < end) {
    if (!node.proc.running) throw new Error(`ballast node ${node.id} exited (${node.proc.exitCode}); last output:\n${node.proc.tail()}`);
    const r = await httpGet(`${node.admin}/readyz`, 1000);
    if (r.status === 200) return;
    last = `${r.status} ${r.body.slice(0, 200)}`;
    await sleep(100);
  }
  throw new Error(`ballast node ${node.id} not ready after ${timeoutMs} ms (last /readyz: ${last}); output:\n${node.proc.tail()}`);
}

/** Stops a node so that a --cpu-prof profile gets written (SIGUSR2 → process.exit via the preload). */
export async function stopNode(node: BallastNode, profiled = false): Promise<void> {
  if (profiled) {
    node.proc.signal("SIGUSR2");
    const t = setTimeout(() => node.proc.signal("SIGTERM"), 10_000);
    await node.proc.exited;
    clearTimeout(t);
  } else {
    await node.proc.stop(5000);
  }
  await Promise.all(node.relays.map((r) => r.stop(1000)));
}

/** The node's snapshot revision from /api/state, or NaN when the endpoint is missing or has no revision. */
export async function stateRevision(node: BallastNode): Promise<number> {
  const r = await httpGet(`${node.admin}/api/state`, 1000);
  if (r.status !== 200) return Number.NaN;
  try {
    const j = JSON.parse(r.body) as Record<string, unknown>;
    const rev = j.revision ?? (j.snapshot as Record<string, unknown> | undefined)?.revision;
    return typeof rev === "number" ? rev : typeof rev === "string" ? Number(rev) : Number.NaN;
  } catch {
    return Number.NaN;
  }
}

export async function route(node: BallastNode, service: string, client: string): Promise<{ status: number; body: string }> {
  return httpGet(`${node.admin}/api/route?service=${encodeURIComponent(service)}&client=${encodeURIComponent(client)}`, 1000);
}

/** The TCP ports a process listens on at `address` (from `ss`), for services bound to port 0. */
export function listeningPorts(pid: number, address: string): number[] {
  const r = spawnSync("ss", ["-Hltnp"], { encoding: "utf8" });
  const ports: number[] = [];
  for (const line of (r.stdout ?? "").split("\n")) {
    if (!line.includes(`pid=${pid},`)) continue;
    const m = new RegExp(`\\s${address.replace(/\./g, "\\.")}:(\\d+)\\s`).exec(line);
    if (m) ports.push(Number(m[1]));
  }
  return ports;
}

/** JS heap in use (sum over V8 heap spaces) from the node's /metrics, in MiB; NaN when not exported. */
export async function heapUsedMiB(node: BallastNode): Promise<number> {
  const r = await httpGet(`${node.admin}/metrics`, 2000);
  if (r.status !== 200) return Number.NaN;
  let sum = 0;
  let found = false;
  for (const line of r.body.split("\n")) {
    if (line.startsWith("#") || !/nodejs_heap_space_size_used_bytes\{/.test(line)) continue;
    sum += Number(line.slice(line.lastIndexOf(" ") + 1));
    found = true;
  }
  return found ? sum / 2 ** 20 : Number.NaN;
}

/** One service's entry in /api/state (boundPort, affinity.entries, backends, …), or null. */
export async function serviceState(node: BallastNode, name: string): Promise<Record<string, unknown> | null> {
  const r = await httpGet(`${node.admin}/api/state`, 2000);
  if (r.status !== 200) return null;
  try {
    const j = JSON.parse(r.body) as { services?: Record<string, unknown>[] };
    return j.services?.find((s) => s.name === name) ?? null;
  } catch {
    return null;
  }
}

/** Affinity entries a node holds for a service (from /api/state), NaN when not reported. */
export async function affinityEntries(node: BallastNode, service: string): Promise<number> {
  const s = await serviceState(node, service);
  const n = (s?.affinity as { entries?: unknown } | undefined)?.entries;
  return typeof n === "number" ? n : Number.NaN;
}
