// The chaos harness: starts a real Ballast cluster in containers (etcd members, nodes, demo backends,
// and the anycast rig: a BIRD router, a BIRD announcer beside each node, a client behind the router),
// on internal networks only, and gives each container the faults the scenarios need (kill, pause,
// network cut, graceful stop). Images come from deploy/images/build.sh; nothing is pulled.
//
// Networks, per cluster (X picked at random, retried when taken):
//   ctl      10.X+1.0.0/24  etcd members and nodes (cutting a node from etcd = disconnecting it here)
//   fabric   10.X.0.0/16    nodes, backends, router, client; containers get addresses from 10.X.0.0/24,
//                           client sources are 10.X.1.0/24, VIPs 10.X.255.0/24. Docker drops routed
//                           traffic whose addresses are outside a bridge's subnet, so the router is
//                           "one-armed": client → router → node all inside this one subnet.
// Every container and network is named ballast-chaos-<run>-… and labelled ballast.chaos=<run> and
// ballast.chaos.owner=<pid>; destroy() removes them, global setup sweeps those of dead owners.

import { mkdirSync, writeFileSync } from "node:fs";
import { dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import Docker from "dockerode";
import { GenericContainer, type StartedTestContainer } from "testcontainers";
import type { RouteAnswer, StateView } from "../../shared/api.js";
import { decodeValue } from "../../shared/codec.js";
import { waitFor } from "../helpers/wait.js";

process.env.TESTCONTAINERS_RYUK_DISABLED ??= "true";
process.env.TESTCONTAINERS_HOST_OVERRIDE ??= "127.0.0.1";

export const IMAGES = {
  node: "ballast-node:local",
  etcd: "ballast-etcd:local",
  bird: "ballast-bird:local",
  base: "ballast-base:local",
} as const;

export const RUN_LABEL = "ballast.chaos";
export const OWNER_LABEL = "ballast.chaos.owner";
const CHAOS_DIR = dirname(fileURLToPath(import.meta.url));
/** deploy/dsr: the backend-side script DSR backends run (mounted read-only). */
const DSR_DIR = resolve(process.cwd(), "deploy/dsr");
const LOG_DIR = resolve(process.cwd(), "test-artifacts/chaos");

export const docker = new Docker();

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** The demo service every scenario uses unless it says otherwise (a record at services/web). */
export const DEFAULT_SERVICE = {
  listen: "0.0.0.0:8080",
  protocol: "tcp",
  affinity: { mode: "source-ip", ttl: "10m" },
  health: { type: "http", interval: "1s", timeout: "500ms", rise: 2, fall: 2, http: { path: "/" } },
};

/** Withdraw before closing listeners (node config `withdrawDelay`): the announcer polls /readyz every 200 ms. */
export const WITHDRAW_DELAY_MS = 1_000;

export interface ClusterOptions {
  etcdMembers?: number;
  nodes?: number;
  backends?: number;
  /** Router, announcers and client (default true); without, the client reaches nodes directly. */
  anycast?: boolean;
  /** Source addresses the client spreads its connections over (each one a "client"), default 32. */
  clientSources?: number;
  service?: Record<string, unknown>;
  /** Extra node config merged over the default (top-level keys replace). */
  nodeConfig?: (index: number) => Record<string, unknown>;
  leaseTtl?: number;
  cluster?: string;
  /** Router: pin each connection to its first node through conntrack (default true). */
  sticky?: boolean;
  /**
   * Also a `forwarding: dsr` service "dsr" on a second VIP (port 8080, same backends): nodes run as
   * root with NET_ADMIN and `dsr.interface` on the fabric, backends hold that VIP on lo
   * (deploy/dsr/ballast-dsr-backend.sh) with the ARP sysctls. Default false.
   */
  dsr?: boolean;
}

/** A DSR service on the chaos cluster's second VIP (its address is filled in at start). */
export const DSR_SERVICE = {
  protocol: "tcp",
  forwarding: "dsr",
  health: { type: "http", interval: "1s", timeout: "500ms", rise: 2, fall: 2, http: { path: "/" } },
};

type NetKey = "ctl" | "fabric";

interface NetworkInfo {
  name: string;
  subnet: string;
  /** First three octets of the address range containers get, e.g. "10.140.0". */
  base: string;
}

// GenericContainer with what the harness needs and testcontainers does not offer: a network chosen
// at create time with aliases and no default bridge (testcontainers' withNetworkAliases attaches the
// default bridge first), further networks connected before start, and sysctls.
class ChaosContainer extends GenericContainer {
  private extraNetworks: { network: string; aliases: string[] }[] = [];

  constructor(image: string, name: string, run: string) {
    super(image);
    this.withName(name).withLabels({ [RUN_LABEL]: run, [OWNER_LABEL]: String(process.pid) });
  }

  onNetwork(network: string, aliases: string[] = []): this {
    this.networkMode = network;
    this.createOpts.NetworkingConfig = { EndpointsConfig: { [network]: { Aliases: aliases } } };
    return this;
  }

  alsoOn(network: string, aliases: string[] = []): this {
    this.extraNetworks.push({ network, aliases });
    return this;
  }

  inNetworkNamespaceOf(containerId: string): this {
    this.networkMode = `container:${containerId}`;
    return this;
  }

  withSysctls(sysctls: Record<string, string>): this {
    this.hostConfig.Sysctls = { ...this.hostConfig.Sysctls, ...sysctls };
    return this;
  }

  protected override async containerCreated(containerId: string): Promise<void> {
    for (const { network, aliases } of this.extraNetworks) {
      await docker.getNetwork(network).connect({ Container: containerId, EndpointConfig: { Aliases: aliases } });
    }
  }
}

export interface ExecResult {
  exitCode: number;
  stdout: string;
  stderr: string;
}

/** One container and the faults it can suffer. */
export class Member {
  private addresses = new Map<string, string>();

  constructor(
    readonly cluster: ChaosCluster,
    readonly role: string,
    readonly name: string,
    readonly container: StartedTestContainer,
  ) {}

  get id(): string {
    return this.container.getId();
  }

  private get handle(): Docker.Container {
    return docker.getContainer(this.id);
  }

  /** Address on a network (as of the last start/connect). */
  ip(net: NetKey): string {
    const ip = this.addresses.get(this.cluster.networks[net].name);
    if (!ip) throw new Error(`${this.name} has no address on ${net}`);
    return ip;
  }

  async refresh(): Promise<void> {
    const info = await this.handle.inspect();
    this.addresses.clear();
    for (const [net, ep] of Object.entries(info.NetworkSettings.Networks ?? {})) if (ep.IPAddress) this.addresses.set(net, ep.IPAddress);
  }

  /** SIGKILL (or another signal); the container stays, start() brings it back. */
  async kill(signal = "SIGKILL"): Promise<void> {
    await this.handle.kill({ signal });
  }

  /** docker stop: SIGTERM, then SIGKILL after `graceSeconds`; resolves when the container has exited. */
  async stop(graceSeconds = 30): Promise<void> {
    await this.handle.stop({ t: graceSeconds });
  }

  /** Sends SIGTERM and returns at once (the scenario watches the drain). */
  async terminate(): Promise<void> {
    await this.kill("SIGTERM");
  }

  async start(): Promise<void> {
    await this.handle.start();
    await this.refresh();
  }

  async pause(): Promise<void> {
    await this.handle.pause();
  }

  async unpause(): Promise<void> {
    await this.handle.unpause();
  }

  /** Cuts the container from a network; it keeps its address there for connect(). */
  async disconnect(net: NetKey): Promise<void> {
    await docker.getNetwork(this.cluster.networks[net].name).disconnect({ Container: this.id, Force: true });
  }

  async connect(net: NetKey): Promise<void> {
    const network = this.cluster.networks[net].name;
    const ip = this.addresses.get(network);
    await docker.getNetwork(network).connect({
      Container: this.id,
      EndpointConfig: { IPAMConfig: ip ? { IPv4Address: ip } : undefined, Aliases: this.aliases(net) },
    });
  }

  protected aliases(_net: NetKey): string[] {
    return [];
  }

  async running(): Promise<boolean> {
    const info = await this.handle.inspect();
    return info.State.Running && !info.State.Paused;
  }

  async inspect(): Promise<Docker.ContainerInspectInfo> {
    return this.handle.inspect();
  }

  /** When the container's process last started and last ended (epoch ms, docker's own clock = host's). */
  async times(): Promise<{ startedAt: number; finishedAt: number; running: boolean; paused: boolean; exitCode: number }> {
    const s = (await this.handle.inspect()).State;
    return { startedAt: Date.parse(s.StartedAt), finishedAt: Date.parse(s.FinishedAt), running: s.Running, paused: s.Paused, exitCode: s.ExitCode };
  }

  /** Networks the container is attached to now (names). */
  async attached(): Promise<string[]> {
    return Object.keys((await this.handle.inspect()).NetworkSettings.Networks ?? {});
  }

  async exitCode(): Promise<number | null> {
    const info = await this.handle.inspect();
    return info.State.Running ? null : info.State.ExitCode;
  }

  async exec(cmd: string[], opts: { user?: string } = {}): Promise<ExecResult> {
    const r = await this.container.exec(cmd, opts.user ? { user: opts.user } : undefined);
    return { exitCode: r.exitCode, stdout: r.stdout, stderr: r.stderr };
  }

  /** Runs a command and fails with its output when it exits non-zero. */
  async sh(script: string): Promise<string> {
    const r = await this.exec(["/bin/sh", "-c", script]);
    if (r.exitCode !== 0) throw new Error(`${this.name}: \`${script}\` exited ${r.exitCode}: ${r.stderr || r.stdout}`);
    return r.stdout;
  }

  /** The container's log (stdout and stderr), each line prefixed with docker's RFC 3339 timestamp. */
  async logs(): Promise<string> {
    const buf = (await this.handle.logs({ stdout: true, stderr: true, timestamps: true, follow: false })) as unknown as Buffer;
    return demuxDockerLog(buf);
  }
}

/** Strips docker's 8-byte stream headers from a non-TTY log. */
function demuxDockerLog(buf: Buffer): string {
  const out: Buffer[] = [];
  let i = 0;
  while (i + 8 <= buf.length) {
    const len = buf.readUInt32BE(i + 4);
    out.push(buf.subarray(i + 8, i + 8 + len));
    i += 8 + len;
  }
  return Buffer.concat(out).toString("utf8");
}

export class EtcdMember extends Member {
  constructor(
    cluster: ChaosCluster,
    name: string,
    container: StartedTestContainer,
    readonly memberName: string,
  ) {
    super(cluster, "etcd", name, container);
  }

  get clientUrl(): string {
    return `http://${this.ip("ctl")}:2379`;
  }

  protected override aliases(): string[] {
    return [this.memberName];
  }

  async healthy(): Promise<boolean> {
    const res = await fetch(`${this.clientUrl}/health`, { signal: AbortSignal.timeout(1000) });
    return res.ok && ((await res.json()) as { health?: string }).health === "true";
  }

  /** Member id and the leader's id as this member sees them (decimal strings). */
  async status(timeoutMs = 3000): Promise<{ memberId: string; leader: string }> {
    const s = (await this.gateway("/v3/maintenance/status", {}, timeoutMs)) as { header: { member_id: string }; leader: string };
    return { memberId: s.header.member_id, leader: s.leader };
  }

  /** etcd's JSON gateway (grpc-gateway): keys and values base64. */
  async gateway(path: string, body: unknown, timeoutMs = 3000): Promise<unknown> {
    const res = await fetch(`${this.clientUrl}${path}`, {
      method: "POST",
      body: JSON.stringify(body),
      headers: { "content-type": "application/json" },
      signal: AbortSignal.timeout(timeoutMs),
    });
    if (!res.ok) throw new Error(`${this.name} ${path}: ${res.status} ${await res.text()}`);
    return res.json();
  }
}

export class BallastNode extends Member {
  /** The BIRD announcer sharing this node's network namespace (anycast only). */
  announcer?: Member;

  constructor(
    cluster: ChaosCluster,
    name: string,
    container: StartedTestContainer,
    readonly nodeId: string,
  ) {
    super(cluster, "node", name, container);
  }

  protected override aliases(net: NetKey): string[] {
    return net === "ctl" ? [this.nodeId] : [];
  }

  /** Admin API over the fabric network (it stays reachable when the node is cut from etcd). */
  get adminUrl(): string {
    return `http://${this.ip("fabric")}:9090`;
  }

  async ready(): Promise<boolean> {
    try {
      const res = await fetch(`${this.adminUrl}/readyz`, { signal: AbortSignal.timeout(1000) });
      await res.arrayBuffer();
      return res.status === 200;
    } catch {
      return false;
    }
  }

  async api<T = Record<string, unknown>>(path: string): Promise<T> {
    const res = await fetch(`${this.adminUrl}${path}`, { signal: AbortSignal.timeout(3000) });
    if (!res.ok) throw new Error(`${this.name} ${path}: ${res.status} ${await res.text()}`);
    return (await res.json()) as T;
  }

  state(): Promise<NodeState> {
    return this.api<NodeState>("/api/state");
  }

  /** One counter or gauge from /metrics (summed over label sets matching `labels`), 0 when absent. */
  async metric(name: string, labels = ""): Promise<number> {
    const text = await this.metrics();
    let sum = 0;
    for (const line of text.split("\n")) {
      if (!line.startsWith(name) || (line[name.length] !== " " && line[name.length] !== "{")) continue;
      if (labels && !line.includes(labels)) continue;
      sum += Number(line.slice(line.lastIndexOf(" ") + 1));
    }
    return sum;
  }

  route(service: string, client: string): Promise<RouteAnswer> {
    return this.api(`/api/route?service=${encodeURIComponent(service)}&client=${encodeURIComponent(client)}`);
  }

  async metrics(): Promise<string> {
    const res = await fetch(`${this.adminUrl}/metrics`, { signal: AbortSignal.timeout(3000) });
    return res.text();
  }

  /** The node's JSON log lines (pino), each with its own `time` as epoch ms; other lines are skipped. */
  async logEvents(): Promise<LogEvent[]> {
    const out: LogEvent[] = [];
    for (const line of (await this.logs()).split("\n")) {
      const brace = line.indexOf("{");
      if (brace < 0) continue;
      try {
        const e = JSON.parse(line.slice(brace)) as Record<string, unknown>;
        out.push({ ...e, at: Date.parse(String(e.time)), level: Number(e.level), msg: String(e.msg ?? "") });
      } catch {
        // not a log record
      }
    }
    return out;
  }

  /** Kill the node and its announcer together, as when the whole machine dies. */
  async killWithAnnouncer(): Promise<void> {
    await Promise.all([this.kill(), this.announcer?.kill()]);
  }
}

export interface LogEvent extends Record<string, unknown> {
  at: number;
  /** pino levels: 30 info, 40 warn, 50 error, 60 fatal */
  level: number;
  msg: string;
}

/** /api/state, as the node declares it. */
export type NodeState = StateView;

export interface LoadOptions {
  /** "ip:port"; default the VIP (anycast) or the first node (without). */
  target?: string;
  /** How many of the client's source addresses to use (default all). */
  sources?: number;
  concurrency?: number;
  connections?: number;
  durationMs: number;
  timeoutMs?: number;
  requests?: number;
  gapMs?: number;
  holdMs?: number;
  /** Hold of the first request (default holdMs); 0 makes the first answer name node and backend at once. */
  firstHoldMs?: number;
  /** Epoch ms to start at (same clock as the host): lines a fault up with the load, whatever exec's delay. */
  startAt?: number;
}

export interface ConnectionRecord {
  i: number;
  src: string | null;
  /** The client's local port (0 if the socket never got one): with src, the connection's conntrack key. */
  port: number;
  /** ms after the load started */
  start: number;
  connectMs: number;
  end: number;
  ok: boolean;
  err: string | null;
  backends: (string | null)[];
  /** the node each answer came through (the backend's TCP peer) */
  nodes: (string | null)[];
  answered: number;
}

export interface LoadResult {
  /** epoch ms the load started (inside the client container; same host clock) */
  t0: number;
  elapsedMs: number;
  cutShort: boolean;
  total: number;
  ok: number;
  failed: number;
  errors: Record<string, number>;
  connections: ConnectionRecord[];
}

export class Client extends Member {
  constructor(
    cluster: ChaosCluster,
    name: string,
    container: StartedTestContainer,
    readonly sources: string[],
  ) {
    super(cluster, "client", name, container);
  }

  /** Runs the load loop in the container; bounded by count and time (and `timeout` around node). */
  async load(opts: LoadOptions): Promise<LoadResult> {
    const c = this.cluster;
    const target = opts.target ?? (c.vip ? `${c.vip}:8080` : `${c.nodes[0].ip("fabric")}:8080`);
    const sources = c.vip ? this.sources.slice(0, opts.sources ?? this.sources.length) : [];
    const args = { ...opts, target, sources };
    const hold = Math.max(opts.holdMs ?? 0, opts.firstHoldMs ?? 0);
    const wait = Math.max(0, (opts.startAt ?? 0) - Date.now());
    const bound = Math.ceil((wait + opts.durationMs + (opts.timeoutMs ?? 2000) + (hold + (opts.gapMs ?? 0)) * (opts.requests ?? 1)) / 1000) + 10;
    const r = await this.exec(["timeout", String(bound), "node", "/chaos/load-client.mjs", JSON.stringify(args)]);
    if (r.exitCode !== 0) throw new Error(`load client exited ${r.exitCode}: ${r.stderr.slice(0, 2000)}`);
    return JSON.parse(r.stdout) as LoadResult;
  }
}

async function createNetwork(name: string, run: string, subnet: string, ipRange?: string): Promise<void> {
  await docker.createNetwork({
    Name: name,
    Driver: "bridge",
    Internal: true,
    CheckDuplicate: true,
    Labels: { [RUN_LABEL]: run, [OWNER_LABEL]: String(process.pid) },
    IPAM: { Config: [{ Subnet: subnet, IPRange: ipRange }] },
  });
}

export class ChaosCluster {
  readonly etcd: EtcdMember[] = [];
  readonly nodes: BallastNode[] = [];
  readonly backends: Member[] = [];
  router?: Member;
  client?: Client;
  /** The service VIP (anycast), e.g. "10.140.255.10". */
  vip?: string;
  /** The DSR service's VIP (with `dsr`), e.g. "10.140.255.11". */
  dsrVip?: string;
  networks!: Record<NetKey, NetworkInfo>;
  readonly startedAt = Date.now();

  private constructor(
    readonly run: string,
    readonly opts: Required<Omit<ClusterOptions, "nodeConfig">> & Pick<ClusterOptions, "nodeConfig">,
  ) {}

  get prefix(): string {
    return `ballast-chaos-${this.run}`;
  }

  get keyPrefix(): string {
    return `/ballast/${this.opts.cluster}/`;
  }

  /** Starts everything and waits until every node is ready (and, with anycast, announced). */
  static async start(options: ClusterOptions = {}): Promise<ChaosCluster> {
    const run = Math.random().toString(16).slice(2, 8);
    const c = new ChaosCluster(run, {
      etcdMembers: options.etcdMembers ?? 3,
      nodes: options.nodes ?? 3,
      backends: options.backends ?? 3,
      anycast: options.anycast ?? true,
      clientSources: options.clientSources ?? 32,
      service: options.service ?? DEFAULT_SERVICE,
      leaseTtl: options.leaseTtl ?? 3,
      cluster: options.cluster ?? "chaos",
      sticky: options.sticky ?? true,
      dsr: options.dsr ?? false,
      nodeConfig: options.nodeConfig,
    });
    try {
      await c.createNetworks();
      await Promise.all([c.startEtcd(), c.startBackends(), c.opts.anycast ? c.startRouter() : Promise.resolve()]);
      await c.putService("web", c.opts.service);
      for (const b of c.backends) await c.putBackend("web", b.name.slice(c.prefix.length + 1), { address: b.ip("fabric"), port: 8080 });
      if (c.dsrVip) {
        await c.putService("dsr", { ...DSR_SERVICE, listen: `${c.dsrVip}:8080` });
        for (const b of c.backends) await c.putBackend("dsr", c.backendId(b), { address: b.ip("fabric"), port: 8080 });
      }
      await c.startNodes();
      if (c.opts.anycast) {
        await c.startClient();
        await Promise.all(c.nodes.map((n) => c.startAnnouncer(n)));
        await waitFor(async () => (await c.announcedNodes()).length === c.nodes.length, { timeoutMs: 30_000, intervalMs: 200, message: "every node announced to the router" });
      }
      return c;
    } catch (err) {
      await c.destroy().catch(() => {});
      throw err;
    }
  }

  private async createNetworks(): Promise<void> {
    for (let attempt = 0; ; attempt++) {
      const x = 100 + 2 * Math.floor(Math.random() * 70);
      const fabric = { name: `${this.prefix}-fabric`, subnet: `10.${x}.0.0/16`, base: `10.${x}.0` };
      const ctl = { name: `${this.prefix}-ctl`, subnet: `10.${x + 1}.0.0/24`, base: `10.${x + 1}.0` };
      try {
        await createNetwork(fabric.name, this.run, fabric.subnet, `${fabric.base}.0/24`);
        await createNetwork(ctl.name, this.run, ctl.subnet);
        this.networks = { fabric, ctl };
        this.vip = this.opts.anycast ? `10.${x}.255.10` : undefined;
        this.dsrVip = this.opts.anycast && this.opts.dsr ? `10.${x}.255.11` : undefined;
        return;
      } catch (err) {
        await docker.getNetwork(fabric.name).remove().catch(() => {});
        await docker.getNetwork(ctl.name).remove().catch(() => {});
        if (attempt >= 5 || !/overlap|in use|conflict/i.test(String(err))) throw err;
      }
    }
  }

  /** Client source addresses live in 10.X.1.0/24, VIPs in 10.X.255.0/24. */
  private get fabricPrefix(): string {
    return this.networks.fabric.base.split(".").slice(0, 2).join(".");
  }

  private container(image: string, name: string): ChaosContainer {
    return new ChaosContainer(image, `${this.prefix}-${name}`, this.run).withStartupTimeout(60_000);
  }

  private async track<T extends Member>(m: T, list?: T[]): Promise<T> {
    await m.refresh();
    list?.push(m);
    return m;
  }

  private async startEtcd(): Promise<void> {
    const names = Array.from({ length: this.opts.etcdMembers }, (_, i) => `etcd${i + 1}`);
    const initial = names.map((n) => `${n}=http://${n}:2380`).join(",");
    const members = await Promise.all(
      names.map(async (n) => {
        const started = await this.container(IMAGES.etcd, n)
          .onNetwork(this.networks.ctl.name, [n])
          .withEnvironment({
            ETCD_NAME: n,
            ETCD_INITIAL_CLUSTER: initial,
            ETCD_INITIAL_CLUSTER_STATE: "new",
            ETCD_INITIAL_CLUSTER_TOKEN: `ballast-chaos-${this.run}`,
            ETCD_LISTEN_CLIENT_URLS: "http://0.0.0.0:2379",
            ETCD_ADVERTISE_CLIENT_URLS: `http://${n}:2379`,
            ETCD_LISTEN_PEER_URLS: "http://0.0.0.0:2380",
            ETCD_INITIAL_ADVERTISE_PEER_URLS: `http://${n}:2380`,
          })
          .start();
        return new EtcdMember(this, started.getName().replace(/^\//, ""), started, n);
      }),
    );
    for (const m of members) await this.track(m, this.etcd);
    await waitFor(async () => (await Promise.all(this.etcd.map((m) => m.healthy()))).every(Boolean), {
      timeoutMs: 30_000,
      intervalMs: 200,
      message: "etcd members healthy",
    });
  }

  private async startBackends(): Promise<void> {
    const started = await Promise.all(Array.from({ length: this.opts.backends }, (_, i) => this.startBackend(`backend${i + 1}`)));
    this.backends.push(...started);
  }

  /** A demo backend on the fabric; with `dsr`, holding the DSR VIP on lo. Not registered in etcd. */
  async startBackend(name: string): Promise<Member> {
    let c = this.container(IMAGES.node, name)
      .onNetwork(this.networks.fabric.name)
      .withEntrypoint(["node", "/app/deploy/demo-backend.mjs"])
      .withCommand([])
      .withEnvironment({ NAME: name, PORT: "8080" });
    if (this.dsrVip) {
      // /proc/sys is read-only inside: the runtime sets the ARP sysctls; the script adds the VIP.
      c = c
        .withAddedCapabilities("NET_ADMIN")
        .withSysctls({ "net.ipv4.conf.all.arp_ignore": "1", "net.ipv4.conf.all.arp_announce": "2" })
        .withBindMounts([{ source: DSR_DIR, target: "/dsr", mode: "ro" }]);
    }
    const started = await c.start();
    const m = await this.track(new Member(this, "backend", started.getName().replace(/^\//, ""), started));
    if (this.dsrVip) await this.dsrBackendUp(m);
    return m;
  }

  /** deploy/dsr/ballast-dsr-backend.sh up <dsr VIP> in the backend (as root: it adds an address); idempotent. */
  async dsrBackendUp(b: Member): Promise<void> {
    const r = await b.exec(["sh", "/dsr/ballast-dsr-backend.sh", "up", this.dsrVip!], { user: "root" });
    if (r.exitCode !== 0) throw new Error(`${b.name}: ballast-dsr-backend.sh up exited ${r.exitCode}: ${r.stderr || r.stdout}`);
  }

  private async startRouter(): Promise<void> {
    const started = await this.container(IMAGES.bird, "router")
      .onNetwork(this.networks.fabric.name)
      .withAddedCapabilities("NET_ADMIN")
      .withSysctls({
        "net.ipv4.ip_forward": "1",
        "net.ipv4.fib_multipath_hash_policy": "1",
        "net.ipv4.conf.all.rp_filter": "0",
        "net.ipv4.conf.default.rp_filter": "0",
      })
      .withEnvironment({
        FABRIC: `${this.networks.fabric.base}.0/24`,
        VIP_RANGE: `${this.fabricPrefix}.255.0/24`,
        STICKY: this.opts.sticky ? "1" : "0",
      })
      .start();
    this.router = await this.track(new Member(this, "router", started.getName().replace(/^\//, ""), started));
  }

  /** The node config file: JSON is YAML, so no YAML writer is needed. */
  nodeConfigFor(index: number): Record<string, unknown> {
    return {
      node: { id: `n${index + 1}`, zone: `z${(index % 3) + 1}` },
      cluster: this.opts.cluster,
      etcd: { endpoints: this.etcd.map((m) => `http://${m.memberName}:2379`), leaseTtl: this.opts.leaseTtl },
      admin: { listen: "0.0.0.0:9090" },
      log: { level: "info" },
      drainTimeout: "10s",
      withdrawDelay: `${WITHDRAW_DELAY_MS}ms`,
      // The fabric is the node's second interface (ctl is attached first, at create time).
      ...(this.dsrVip ? { dsr: { interface: "eth1" } } : {}),
      ...this.opts.nodeConfig?.(index),
    };
  }

  private async startNodes(): Promise<void> {
    const started = await Promise.all(
      Array.from({ length: this.opts.nodes }, (_, i) => this.startNode(i)),
    );
    for (const n of started) await this.track(n, this.nodes);
    await waitFor(async () => (await Promise.all(this.nodes.map((n) => n.ready()))).every(Boolean), {
      timeoutMs: 30_000,
      intervalMs: 200,
      message: "every node ready",
    });
  }

  private async startNode(index: number): Promise<BallastNode> {
    const id = `n${index + 1}`;
    let c = this.container(IMAGES.node, id)
      .onNetwork(this.networks.ctl.name, [id])
      .alsoOn(this.networks.fabric.name)
      .withCopyContentToContainer([{ content: JSON.stringify(this.nodeConfigFor(index), null, 2), target: "/etc/ballast/ballast.yaml", mode: 0o644 }]);
    // DSR: the node programs nftables in its own network namespace (root with NET_ADMIN there only).
    if (this.dsrVip) c = c.withUser("0:0").withAddedCapabilities("NET_ADMIN");
    const started = await c.start();
    return new BallastNode(this, started.getName().replace(/^\//, ""), started, id);
  }

  private async startAnnouncer(node: BallastNode): Promise<void> {
    const started = await this.container(IMAGES.bird, `${node.nodeId}-bird`)
      .inNetworkNamespaceOf(node.id)
      .withAddedCapabilities("NET_ADMIN")
      .withEnvironment({
        VIPS: this.dsrVip ? `${this.vip} ${this.dsrVip}` : this.vip!,
        ROUTER: this.router!.ip("fabric"),
        RETURN_ROUTES: `${this.fabricPrefix}.1.0/24`,
        POLL_MS: "200",
      })
      .withCommand(["/usr/local/bin/anycast-node.sh"])
      .start();
    node.announcer = new Member(this, "announcer", started.getName().replace(/^\//, ""), started);
  }

  private async startClient(): Promise<void> {
    const sources = Array.from({ length: this.opts.clientSources }, (_, i) => `${this.fabricPrefix}.1.${i + 1}`);
    const started = await this.container(IMAGES.base, "client")
      .onNetwork(this.networks.fabric.name)
      .withAddedCapabilities("NET_ADMIN")
      .withBindMounts([{ source: CHAOS_DIR, target: "/chaos", mode: "ro" }])
      .withCommand(["sleep", "3600"])
      .start();
    const client = await this.track(new Client(this, started.getName().replace(/^\//, ""), started, sources));
    // Sources are extra addresses on the client; VIP traffic goes to the router, from the first source.
    await client.sh(
      [
        ...sources.map((s) => `ip addr add ${s}/32 dev eth0`),
        `ip route add ${this.fabricPrefix}.255.0/24 via ${this.router!.ip("fabric")} src ${sources[0]}`,
      ].join(" && "),
    );
    this.client = client;
  }

  /** Nodes (fabric addresses) the router currently has in its ECMP route for the VIP. */
  async announcedNodes(): Promise<string[]> {
    if (!this.router || !this.vip) return [];
    const out = await this.router.sh(`/usr/sbin/ip -4 route show ${this.vip}/32`);
    const hops = [...out.matchAll(/via (\d+\.\d+\.\d+\.\d+)/g)].map((m) => m[1]);
    return hops.sort();
  }

  nodeByAddress(ip: string): BallastNode | undefined {
    return this.nodes.find((n) => n.ip("fabric") === ip);
  }

  // --- etcd records, through the first live member's JSON gateway ---------------------------------

  async etcdGateway(path: string, body: unknown): Promise<unknown> {
    let last: unknown;
    for (const m of this.etcd) {
      try {
        return await m.gateway(path, body);
      } catch (err) {
        last = err;
      }
    }
    throw last;
  }

  async put(key: string, value: string): Promise<void> {
    await this.etcdGateway("/v3/kv/put", { key: b64(key), value: b64(value) });
  }

  async del(key: string): Promise<void> {
    await this.etcdGateway("/v3/kv/deleterange", { key: b64(key) });
  }

  /** Keys and raw values under a prefix. */
  async list(prefix: string): Promise<{ key: string; value: Buffer }[]> {
    const r = (await this.etcdGateway("/v3/kv/range", { key: b64(prefix), range_end: b64(prefixEnd(prefix)) })) as {
      kvs?: { key: string; value: string }[];
    };
    return (r.kvs ?? []).map((kv) => ({ key: Buffer.from(kv.key, "base64").toString(), value: Buffer.from(kv.value, "base64") }));
  }

  putService(name: string, record: Record<string, unknown>): Promise<void> {
    return this.put(`${this.keyPrefix}services/${name}`, JSON.stringify(record));
  }

  putBackend(service: string, id: string, record: Record<string, unknown> | string): Promise<void> {
    return this.put(`${this.keyPrefix}backends/${service}/${id}`, typeof record === "string" ? record : JSON.stringify(record));
  }

  /** The member the given (default: all) members name as leader; undefined while there is none. */
  async etcdLeader(among: EtcdMember[] = this.etcd): Promise<EtcdMember | undefined> {
    const statuses = await Promise.all(among.map((m) => m.status(500).catch(() => null)));
    const leaderIds = new Set(statuses.filter((s) => s && s.leader !== "0").map((s) => s!.leader));
    return among.find((_, i) => statuses[i] && leaderIds.has(statuses[i]!.memberId));
  }

  // --- health, verdicts and history ------------------------------------------------------------

  /** The backend's id in etcd (its container name without the run prefix). */
  backendId(b: Member): string {
    return b.name.slice(this.prefix.length + 1);
  }

  /** The demo backend's switch: unhealthy answers 503 to everything, health checks included. */
  async setBackendHealthy(b: Member, healthy: boolean): Promise<void> {
    const res = await fetch(`http://${b.ip("fabric")}:8080/_ctl/${healthy ? "up" : "down"}`, { method: "POST", signal: AbortSignal.timeout(2000) });
    await res.arrayBuffer();
    if (!res.ok) throw new Error(`${b.name} /_ctl: ${res.status}`);
  }

  /** The health leader as the given nodes (default all) report it: the one that says it leads. */
  async healthLeader(among: BallastNode[] = this.nodes): Promise<BallastNode | undefined> {
    const states = await Promise.all(among.map((n) => n.state().catch(() => null)));
    const leaders = among.filter((_, i) => states[i]?.health.isLeader === true);
    return leaders.length === 1 ? leaders[0] : undefined;
  }

  /** etcd's current revision. */
  async revision(): Promise<number> {
    const r = (await this.etcdGateway("/v3/kv/range", { key: b64(`${this.keyPrefix}services/web`) })) as { header: { revision: string } };
    return Number(r.header.revision);
  }

  /** Verdict records in etcd, decoded, with their revisions. */
  async verdicts(service = "web"): Promise<Map<string, VerdictRecord>> {
    const prefix = `${this.keyPrefix}health/verdicts/${service}/`;
    const r = (await this.etcdGateway("/v3/kv/range", { key: b64(prefix), range_end: b64(prefixEnd(prefix)) })) as {
      kvs?: { key: string; value: string; mod_revision: string; version: string }[];
    };
    const out = new Map<string, VerdictRecord>();
    for (const kv of r.kvs ?? []) {
      const id = Buffer.from(kv.key, "base64").toString().slice(prefix.length);
      const v = decodeValue(Buffer.from(kv.value, "base64")) as unknown as VerdictRecord;
      out.set(id, { ...v, modRevision: Number(kv.mod_revision), version: Number(kv.version) });
    }
    return out;
  }

  /**
   * Every change under a prefix since a revision (puts and deletes, with the previous value), read
   * with `etcdctl watch --rev` in a live member: the history, not just the final state.
   */
  async history(prefix: string, fromRevision: number): Promise<EtcdEvent[]> {
    const key = prefix.startsWith("/") ? prefix : `${this.keyPrefix}${prefix}`;
    let lastErr: unknown;
    for (const m of this.etcd) {
      if (!(await m.running().catch(() => false))) continue;
      // The watch never ends by itself: `timeout` stops it once the past events are printed.
      const r = await m.exec(["timeout", "2", "etcdctl", "--endpoints=http://127.0.0.1:2379", "watch", `--rev=${fromRevision}`, "--prefix", "--prev-kv", "-w", "json", key]);
      if (r.exitCode !== 0 && r.exitCode !== 124 && r.exitCode !== 143) {
        lastErr = new Error(`${m.name}: etcdctl watch exited ${r.exitCode}: ${r.stderr}`);
        continue;
      }
      const events: EtcdEvent[] = [];
      for (const line of r.stdout.split("\n")) {
        if (!line.startsWith("{")) continue;
        const doc = JSON.parse(line) as { Events?: RawWatchEvent[] };
        for (const e of doc.Events ?? []) events.push(parseWatchEvent(e));
      }
      return events.sort((a, b) => a.revision - b.revision);
    }
    throw lastErr ?? new Error("no etcd member running");
  }

  // --- back to the starting state --------------------------------------------------------------

  /**
   * Undoes whatever a scenario left: containers started, unpaused and on their networks again,
   * announcers restarted with their node, backends healthy and their records at their addresses;
   * then waits for the baseline. Cheap when nothing is broken.
   */
  async restore(): Promise<void> {
    await Promise.all(this.etcd.map((m) => this.revive(m)));
    await Promise.all(
      this.backends.map(async (b) => {
        const before = b.ip("fabric");
        await this.revive(b);
        if (b.ip("fabric") !== before) await this.putBackend("web", this.backendId(b), { address: b.ip("fabric"), port: 8080 });
        if (this.dsrVip) {
          // A restarted container has a new network namespace: the VIP goes back on its lo.
          await this.dsrBackendUp(b);
          if (b.ip("fabric") !== before) await this.putBackend("dsr", this.backendId(b), { address: b.ip("fabric"), port: 8080 });
        }
      }),
    );
    await waitFor(
      async () => {
        await Promise.all(this.backends.map((b) => this.setBackendHealthy(b, true)));
        return true;
      },
      { timeoutMs: 15_000, intervalMs: 200, message: "every backend answering /_ctl/up" },
    );
    await Promise.all(
      this.nodes.map(async (n) => {
        await this.revive(n);
        const attached = await n.attached();
        for (const net of ["ctl", "fabric"] as const) if (!attached.includes(this.networks[net].name)) await n.connect(net);
        await n.refresh();
        if (n.announcer) {
          const [node, bird] = await Promise.all([n.times(), n.announcer.times()]);
          if (bird.running && bird.startedAt >= node.startedAt) return;
          // The announcer lives in the node's network namespace: a restarted node has a new one.
          if (bird.running) await n.announcer.kill().catch(() => {});
          await waitFor(async () => !(await n.announcer!.times()).running, { timeoutMs: 10_000, intervalMs: 100, message: `${n.announcer.name} stopped` });
          await n.announcer.start();
        }
      }),
    );
    await this.baseline();
  }

  private async revive(m: Member): Promise<void> {
    const t = await m.times();
    if (t.paused) await m.unpause();
    else if (!t.running) await m.start();
  }

  /**
   * Waits for the state every scenario starts from: all nodes ready, announced, connected to etcd,
   * in shared mode under one health leader, and every backend up and routable on every node.
   */
  async baseline(timeoutMs = 45_000): Promise<void> {
    let why = "";
    await waitFor(
      async () => {
        const states = await Promise.all(this.nodes.map((n) => n.state()));
        const leaders = new Set(states.map((s) => s.health.leader));
        const notReady = states.filter((s) => !s.node.ready || !s.store.connected || s.node.mode !== "shared").map((s) => s.node.id);
        const down = states.flatMap((s) => s.services.flatMap((svc) => svc.backends.filter((b) => !b.routable || b.verdict?.state !== "up").map((b) => `${s.node.id}:${b.id}`)));
        const announced = this.vip ? (await this.announcedNodes()).length : this.nodes.length;
        // DSR: every node's kernel carries the dsr service (until then the VIP's packets would reach the node's own stack).
        const unprogrammed = states.flatMap((s) => s.services.filter((svc) => svc.forwarding.mode === "dsr" && !svc.forwarding.programmed).map((svc) => `${s.node.id}:${svc.name} (${svc.forwarding.reason ?? "pending"})`));
        why = `not ready/connected/shared: [${notReady}], leaders: [${[...leaders]}], not up: [${down}], announced ${announced}/${this.nodes.length}, dsr not programmed: [${unprogrammed}]`;
        return notReady.length === 0 && leaders.size === 1 && !leaders.has(null) && down.length === 0 && announced === this.nodes.length && unprogrammed.length === 0;
      },
      { timeoutMs, intervalMs: 200, message: "the baseline" },
    ).catch((err: Error) => {
      throw new Error(`${err.message}: ${why}`);
    });
  }

  // --- teardown ---------------------------------------------------------------------------------

  /** Saves every container's log under test-artifacts/chaos/<run>/, then removes containers and networks. */
  async destroy(): Promise<void> {
    const containers = await docker.listContainers({ all: true, filters: { label: [`${RUN_LABEL}=${this.run}`] } });
    const dir = resolve(LOG_DIR, this.run);
    mkdirSync(dir, { recursive: true });
    await Promise.all(
      containers.map(async (info) => {
        const c = docker.getContainer(info.Id);
        try {
          const buf = (await c.logs({ stdout: true, stderr: true, timestamps: true })) as unknown as Buffer;
          writeFileSync(resolve(dir, `${info.Names[0]?.replace(/^\//, "") ?? info.Id}.log`), demuxDockerLog(buf));
        } catch {
          // logs are a convenience
        }
      }),
    );
    await removeLabelled(`${RUN_LABEL}=${this.run}`);
  }
}

export interface VerdictRecord {
  state: "up" | "down";
  since: number;
  reason: string;
  count: number;
  checker: string;
  modRevision: number;
  version: number;
}

export interface EtcdEvent {
  type: "put" | "delete";
  key: string;
  revision: number;
  /** Decoded msgpack value (null for deletes or values that are not msgpack). */
  value: Record<string, unknown> | null;
  raw: Buffer;
  prev: Buffer | null;
}

interface RawWatchEvent {
  type?: number | string;
  kv: { key: string; value?: string; mod_revision: number };
  prev_kv?: { value?: string };
}

function parseWatchEvent(e: RawWatchEvent): EtcdEvent {
  const raw = Buffer.from(e.kv.value ?? "", "base64");
  const isDelete = e.type === 1 || e.type === "DELETE";
  let value: Record<string, unknown> | null = null;
  if (!isDelete) {
    try {
      value = decodeValue(raw);
    } catch {
      value = null;
    }
  }
  return {
    type: isDelete ? "delete" : "put",
    key: Buffer.from(e.kv.key, "base64").toString(),
    revision: Number(e.kv.mod_revision),
    value,
    raw,
    prev: e.prev_kv?.value ? Buffer.from(e.prev_kv.value, "base64") : null,
  };
}

/** Removes containers (running or not, with volumes) and then networks carrying a label. */
export async function removeLabelled(label: string): Promise<number> {
  const containers = await docker.listContainers({ all: true, filters: { label: [label] } });
  // Announcers live in their node's network namespace: they go first.
  const remove = async (info: Docker.ContainerInfo) => {
    const c = docker.getContainer(info.Id);
    if (info.State === "paused") await c.unpause().catch(() => {});
    await c.remove({ force: true, v: true }).catch(() => {});
  };
  const inOthersNamespace = (info: Docker.ContainerInfo) => info.HostConfig?.NetworkMode?.startsWith("container:") ?? false;
  await Promise.all(containers.filter(inOthersNamespace).map(remove));
  await Promise.all(containers.filter((i) => !inOthersNamespace(i)).map(remove));
  const networks = await docker.listNetworks({ filters: { label: [label] } });
  for (const n of networks) await docker.getNetwork(n.Id).remove().catch(() => {});
  return containers.length + networks.length;
}

/** Removes what earlier runs left behind when their process died (owner pid gone). */
export async function sweepOrphans(): Promise<number> {
  const alive = (pid: number) => {
    try {
      process.kill(pid, 0);
      return true;
    } catch {
      return false;
    }
  };
  const owners = new Set<string>();
  for (const c of await docker.listContainers({ all: true, filters: { label: [OWNER_LABEL] } })) owners.add(c.Labels[OWNER_LABEL]);
  for (const n of await docker.listNetworks({ filters: { label: [OWNER_LABEL] } })) owners.add(n.Labels?.[OWNER_LABEL] ?? "");
  let removed = 0;
  for (const owner of owners) {
    if (owner && Number(owner) !== process.pid && !alive(Number(owner))) removed += await removeLabelled(`${OWNER_LABEL}=${owner}`);
  }
  return removed;
}

function b64(s: string): string {
  return Buffer.from(s).toString("base64");
}

/** etcd's range end for "every key with this prefix": the prefix with its last byte incremented. */
function prefixEnd(prefix: string): string {
  const buf = Buffer.from(prefix);
  buf[buf.length - 1]++;
  return buf.toString();
}

// --- figures helpers used by the scenarios ----------------------------------------------------------

export function percentile(values: number[], p: number): number {
  if (values.length === 0) return Number.NaN;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}

/** Connections per node (by the node address the backend saw). */
export function byNode(load: LoadResult): Record<string, number> {
  const out: Record<string, number> = {};
  for (const c of load.connections) for (const n of c.nodes) if (n) out[n] = (out[n] ?? 0) + 1;
  return out;
}

export interface ReadinessSample {
  /** ms since the watch started */
  t: number;
  ready: Record<string, boolean>;
  announced: string[];
}

/** Samples every node's /readyz and the router's next hops until stopped (for "stayed ready" checks). */
export function watchReadiness(c: ChaosCluster, intervalMs = 250): { startedAt: number; stop: () => Promise<ReadinessSample[]> } {
  const samples: ReadinessSample[] = [];
  const t0 = Date.now();
  let running = true;
  const loop = (async () => {
    while (running) {
      const at = Date.now();
      const [ready, announced] = await Promise.all([
        Promise.all(c.nodes.map(async (n) => [n.nodeId, await n.ready()] as const)),
        c.announcedNodes().catch(() => []),
      ]);
      samples.push({ t: at - t0, ready: Object.fromEntries(ready), announced });
      await sleep(Math.max(0, intervalMs - (Date.now() - at)));
    }
  })();
  return {
    startedAt: t0,
    stop: async () => {
      running = false;
      await loop;
      return samples;
    },
  };
}

/**
 * Samples the router's conntrack table while it runs: the node each client connection to the VIP
 * was pinned to (the sticky mark is 256 + the next hop's last octet), keyed "src:port". This names
 * the node of connections that failed before any answer, which the backends' replies cannot.
 * Entries outlive their connection (10 s after a reset, 2 min in TIME_WAIT), so a 1 s sample misses none.
 */
export function watchConntrack(c: ChaosCluster, intervalMs = 1000): { stop: () => Promise<Map<string, string>> } {
  const pinned = new Map<string, string>();
  const base = c.networks.fabric.base;
  let running = true;
  const sample = async () => {
    const out = await c.router!.exec(["cat", "/proc/net/nf_conntrack"]);
    for (const line of out.stdout.split("\n")) {
      const m = /src=(\S+) dst=(\S+) sport=(\d+) dport=(\d+).* mark=(\d+)/.exec(line);
      if (!m || m[2] !== c.vip) continue;
      const mark = Number(m[5]);
      if (mark > 256) pinned.set(`${m[1]}:${m[3]}`, `${base}.${mark - 256}`);
    }
  };
  const loop = (async () => {
    while (running) {
      const at = Date.now();
      await sample().catch(() => {});
      await sleep(Math.max(0, intervalMs - (Date.now() - at)));
    }
  })();
  return {
    stop: async () => {
      running = false;
      await loop;
      await sample().catch(() => {});
      return pinned;
    },
  };
}

/** The node (fabric address) a connection went through: the router's pin, else the backend's answer. */
export function nodeOf(conn: ConnectionRecord, pinned: Map<string, string>): string | null {
  return (conn.src && conn.port ? pinned.get(`${conn.src}:${conn.port}`) : undefined) ?? conn.nodes.find((n) => n !== null) ?? null;
}

/** Polls the router's next hops for the VIP until stopped: when each node left and came back. */
export function watchRoutes(c: ChaosCluster, intervalMs = 50): { stop: () => Promise<{ t: number; announced: string[] }[]> } {
  const samples: { t: number; announced: string[] }[] = [];
  let running = true;
  const loop = (async () => {
    while (running) {
      const at = Date.now();
      const announced = await c.announcedNodes().catch(() => null);
      // Stamped when the answer is in: "withdrawn by t" is then never earlier than the truth.
      if (announced) samples.push({ t: Date.now(), announced });
      await sleep(Math.max(0, intervalMs - (Date.now() - at)));
    }
  })();
  return {
    stop: async () => {
      running = false;
      await loop;
      return samples;
    },
  };
}
