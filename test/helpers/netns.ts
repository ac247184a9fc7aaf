// Test topologies made of network namespaces: namespaces with unique random names, veth pairs
// between them, an optional "switch" namespace holding a bridge, addresses, routes, sysctls, and
// commands or long-running processes inside a namespace. Every link is created with `ip -n NS`
// (inside a namespace the topology made), so the host namespace's links, routes and nftables
// ruleset are never touched. Cleanup kills the processes this file spawned and deletes the
// namespaces: on destroy(), on process exit, and — for namespaces left by a run that was
// SIGKILLed — the next time a topology is created (names carry the creating pid).
import { type ChildProcess, execFile, execFileSync, type SpawnOptions, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync, readdirSync } from "node:fs";

/** Every namespace this module creates starts with this, then `<pid>-<random>-`. */
export const NETNS_PREFIX = "bt";

export interface ExecResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Why namespace tests cannot run here (not root, no `ip`), or null when they can. */
export function netnsUnavailable(): string | null {
  if (process.getuid?.() !== 0) return "network namespaces need root";
  if (!existsSync("/usr/sbin/ip") && !existsSync("/sbin/ip") && !existsSync("/usr/bin/ip")) return "iproute2 (`ip`) is not installed";
  return null;
}

/** Runs a command with a deadline; resolves with its exit code and output (never rejects on exit status). */
export function execCommand(file: string, args: string[], opts: { timeoutMs?: number; input?: string } = {}): Promise<ExecResult> {
  return new Promise((resolve) => {
    const child = execFile(file, args, { timeout: opts.timeoutMs ?? 20_000, maxBuffer: 64 * 1024 * 1024 }, (err, stdout, stderr) => {
      const code = err ? (typeof (err as { code?: unknown }).code === "number" ? ((err as { code: number }).code) : 1) : 0;
      resolve({ code, stdout: String(stdout), stderr: String(stderr) || (err && code !== 0 && !stderr ? err.message : "") });
    });
    if (opts.input !== undefined) child.stdin?.end(opts.input);
  });
}

async function mustRun(file: string, args: string[], timeoutMs?: number): Promise<string> {
  const r = await execCommand(file, args, { timeoutMs });
  if (r.code !== 0) throw new Error(`${file} ${args.join(" ")} failed (${r.code}): ${r.stderr.trim() || r.stdout.trim()}`);
  return r.stdout;
}

const live = new Set<Topology>();
process.once("exit", () => {
  for (const t of live) t.destroySync();
});

/** Deletes namespaces that earlier runs of this helper left behind (their creating process is gone). */
function sweepOrphans(): void {
  let names: string[];
  try {
    names = readdirSync("/run/netns");
  } catch {
    return;
  }
  const re = new RegExp(`^${NETNS_PREFIX}(\\d+)-[0-9a-f]+-`);
  for (const name of names) {
    const m = re.exec(name);
    if (!m) continue;
    const pid = Number(m[1]);
    if (pid === process.pid || existsSync(`/proc/${pid}`)) continue;
    try {
      execFileSync("ip", ["netns", "del", name], { stdio: "ignore" });
    } catch {
      // another sweeper got there first
    }
  }
}

/** One network namespace of a topology. */
export class Namespace {
  constructor(
    readonly topology: Topology,
    /** The full netns name (`ip netns exec <name>`). */
    readonly name: string,
  ) {}

  /** Runs a command inside the namespace; resolves with code and output whatever the exit status. */
  exec(cmd: string, args: string[] = [], opts: { timeoutMs?: number; input?: string } = {}): Promise<ExecResult> {
    return execCommand("ip", ["netns", "exec", this.name, cmd, ...args], opts);
  }

  /** Runs a command inside the namespace and returns stdout; throws with stderr on a non-zero exit. */
  run(cmd: string, args: string[] = [], timeoutMs?: number): Promise<string> {
    return mustRun("ip", ["netns", "exec", this.name, cmd, ...args], timeoutMs);
  }

  /** `ip -n <ns> ...args`: throws on failure. */
  ip(...args: string[]): Promise<string> {
    return mustRun("ip", ["-n", this.name, ...args]);
  }

  /** Starts a long-running process inside the namespace; it is killed (SIGKILL) at cleanup if still running. */
  spawn(cmd: string, args: string[] = [], opts: SpawnOptions = {}): ChildProcess {
    const child = spawn("ip", ["netns", "exec", this.name, cmd, ...args], { stdio: ["ignore", "pipe", "pipe"], ...opts });
    this.topology.track(child);
    return child;
  }

  async sysctl(key: string, value: string | number): Promise<void> {
    await this.run("sysctl", ["-q", "-w", `${key}=${value}`]);
  }

  /** Adds an address (CIDR) to a device in this namespace and sets the device up. */
  async addAddress(dev: string, cidr: string): Promise<void> {
    await this.ip(...(cidr.includes(":") ? ["-6"] : []), "addr", "add", cidr, "dev", dev, ...(cidr.includes(":") ? ["nodad"] : []));
    await this.ip("link", "set", dev, "up");
  }

  /** `ip route add <dst> via <via>` (dst may be "default"); IPv6 chosen from the gateway. */
  async addRoute(dst: string, via: string, dev?: string): Promise<void> {
    await this.ip(...(via.includes(":") ? ["-6"] : []), "route", "add", dst, "via", via, ...(dev ? ["dev", dev] : []));
  }

  /** Lets the namespace route between its interfaces (a router or a balancer node). */
  async enableForwarding(): Promise<void> {
    await this.sysctl("net.ipv4.ip_forward", 1);
    await this.sysctl("net.ipv6.conf.all.forwarding", 1);
  }
}

/** A veth end: its namespace, device name and (first) address without prefix length. */
export interface Endpoint {
  ns: Namespace;
  dev: string;
  address?: string;
}

/**
 * A set of namespaces with one cleanup. Create with `await Topology.create()`, then add namespaces,
 * links and processes; call `destroy()` in afterAll (process exit reaps it too).
 */
export class Topology {
  readonly id: string;
  private readonly namespaces: Namespace[] = [];
  private readonly children = new Set<ChildProcess>();
  private switchNs: Namespace | null = null;
  private ports = 0;
  private destroyed = false;

  private constructor() {
    this.id = `${NETNS_PREFIX}${process.pid}-${randomBytes(3).toString("hex")}`;
  }

  static async create(): Promise<Topology> {
    const why = netnsUnavailable();
    if (why) throw new Error(why);
    sweepOrphans();
    const t = new Topology();
    live.add(t);
    return t;
  }

  /** A new namespace named `<topology id>-<label>`, loopback up. */
  async namespace(label: string): Promise<Namespace> {
    if (this.destroyed) throw new Error("topology destroyed");
    const ns = new Namespace(this, `${this.id}-${label}`);
    await mustRun("ip", ["netns", "add", ns.name]);
    this.namespaces.push(ns);
    await ns.ip("link", "set", "lo", "up");
    return ns;
  }

  /**
   * A veth pair from `a` to `b` (device names ≤ 15 characters, local to each namespace), with
   * optional CIDR addresses on each end; both ends up.
   */
  async link(a: Namespace, aDev: string, b: Namespace, bDev: string, opts: { aAddr?: string; bAddr?: string; mtu?: number } = {}): Promise<[Endpoint, Endpoint]> {
    await a.ip("link", "add", aDev, ...(opts.mtu ? ["mtu", String(opts.mtu)] : []), "type", "veth", "peer", "name", bDev, "netns", b.name);
    if (opts.mtu) await b.ip("link", "set", bDev, "mtu", String(opts.mtu));
    await a.ip("link", "set", aDev, "up");
    await b.ip("link", "set", bDev, "up");
    if (opts.aAddr) await a.addAddress(aDev, opts.aAddr);
    if (opts.bAddr) await b.addAddress(bDev, opts.bAddr);
    return [
      { ns: a, dev: aDev, address: opts.aAddr?.split("/")[0] },
      { ns: b, dev: bDev, address: opts.bAddr?.split("/")[0] },
    ];
  }

  /** The switch: a namespace holding bridge `br0` (created on first use). */
  async bridge(): Promise<Namespace> {
    if (this.switchNs) return this.switchNs;
    const sw = await this.namespace("sw");
    await sw.ip("link", "add", "br0", "type", "bridge");
    await sw.ip("link", "set", "br0", "up");
    this.switchNs = sw;
    return sw;
  }

  /** Plugs `ns` into the switch through device `dev` (default eth0) with the given CIDR addresses. */
  async attach(ns: Namespace, addrs: string[], dev = "eth0"): Promise<Endpoint> {
    const sw = await this.bridge();
    const port = `p${this.ports++}`;
    await ns.ip("link", "add", dev, "type", "veth", "peer", "name", port, "netns", sw.name);
    await sw.ip("link", "set", port, "master", "br0");
    await sw.ip("link", "set", port, "up");
    await ns.ip("link", "set", dev, "up");
    for (const a of addrs) await ns.addAddress(dev, a);
    return { ns, dev, address: addrs[0]?.split("/")[0] };
  }

  /** @internal Namespace.spawn registers its child here so cleanup can kill it. */
  track(child: ChildProcess): void {
    this.children.add(child);
    child.once("exit", () => this.children.delete(child));
  }

  /** Names of this topology's namespaces that exist right now (for tests of the helper itself). */
  existing(): string[] {
    let names: string[] = [];
    try {
      names = readdirSync("/run/netns");
    } catch {
      // no namespaces at all
    }
    return names.filter((n) => n.startsWith(`${this.id}-`));
  }

  /** Kills this topology's processes and deletes its namespaces. Safe to call twice. */
  async destroy(): Promise<void> {
    if (this.destroyed) return;
    const exits = [...this.children].map((c) => new Promise<void>((r) => (c.exitCode !== null || c.signalCode !== null ? r() : c.once("exit", () => r()))));
    for (const c of this.children) c.kill("SIGKILL");
    await Promise.race([Promise.all(exits), new Promise((r) => setTimeout(r, 3000))]);
    this.destroyed = true;
    for (const ns of this.namespaces.reverse()) await execCommand("ip", ["netns", "del", ns.name]);
    live.delete(this);
  }

  /** The exit-hook variant: synchronous, best effort. */
  destroySync(): void {
    if (this.destroyed) return;
    this.destroyed = true;
    for (const c of this.children) {
      try {
        c.kill("SIGKILL");
      } catch {
        // already gone
      }
    }
    for (const ns of this.namespaces) {
      try {
        execFileSync("ip", ["netns", "del", ns.name], { stdio: "ignore" });
      } catch {
        // already deleted
      }
    }
    live.delete(this);
  }
}
