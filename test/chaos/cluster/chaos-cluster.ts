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
import { waitFor } from "../../helpers/wait.js";
import { Client } from "./client.js";
import { ChaosContainer, createNetwork, demuxDockerLog, docker, IMAGES, RUN_LABEL, removeLabelled } from "./docker.js";
import { type EtcdEvent, type GatewayKv, b64, decodeVerdicts, prefixRange, readHistory, type VerdictRecord } from "./etcd-history.js";
import { EtcdMember } from "./etcd-member.js";
import { Member, type NetKey, type NetworkInfo } from "./member.js";
import { NodeMember } from "./node-member.js";

/** test/chaos: mounted into the client container as /chaos (load-client.mjs). */
const CHAOS_DIR = resolve(dirname(fileURLToPath(import.meta.url)), "..");
/** deploy/dsr: the backend-side script DSR backends run (mounted read-only). */
const DSR_DIR = resolve(process.cwd(), "deploy/dsr");
const LOG_DIR = resolve(process.cwd(), "test-artifacts/chaos");

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
  /**
   * Nodes at fixed fabric addresses (fixedNodeAddress: the top of the /24 docker hands addresses out
   * from, far from the ones it picks), advertised as their admin address (`node.advertise`), so a
   * `ballast` CLI on the test host reaches them at the address in their node record (rollout).
   * Default false.
   */
  fixedNodeAddresses?: boolean;
  /**
   * BFD between the router and the announcers (default true): a dead node's route goes in ~300 ms.
   * Off, the BGP hold time (3 s) is the only failure detector, which a loaded machine does not trip:
   * for scenarios where nodes only leave gracefully (withdraw first), such as a rolling restart.
   */
  bfd?: boolean;
  /**
   * Readiness polls answered other than 200 before an announcer withdraws its node (the script's
   * FALL, default 1); more need `withdrawDelay` to cover them (POLL_MS 200 each) so a draining node
   * still withdraws before its listeners close. Polls with no answer in 1 s withdraw after SLOW_FALL
   * (3, the script's default): one slow answer on a loaded machine withdrew healthy nodes.
   */
  announcerFall?: number;
}

/** A DSR service on the chaos cluster's second VIP (its address is filled in at start). */
export const DSR_SERVICE = {
  protocol: "tcp",
  forwarding: "dsr",
  health: { type: "http", interval: "1s", timeout: "500ms", rise: 2, fall: 2, http: { path: "/" } },
};

export class ChaosCluster {
  readonly etcd: EtcdMember[] = [];
  readonly nodes: NodeMember[] = [];
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
      fixedNodeAddresses: options.fixedNodeAddresses ?? false,
      bfd: options.bfd ?? true,
      announcerFall: options.announcerFall ?? 1,
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
        BFD: this.opts.bfd ? "on" : "off",
      })
      .start();
    this.router = await this.track(new Member(this, "router", started.getName().replace(/^\//, ""), started));
  }

  /** Node `index`'s fabric address with `fixedNodeAddresses`: 10.X.0.(241 + index). */
  fixedNodeAddress(index: number): string {
    return `${this.networks.fabric.base}.${241 + index}`;
  }

  /** The node config file: JSON is YAML, so no YAML writer is needed. */
  nodeConfigFor(index: number): Record<string, unknown> {
    const advertise = this.opts.fixedNodeAddresses ? { advertise: `${this.fixedNodeAddress(index)}:9090` } : {};
    return {
      node: { id: `n${index + 1}`, zone: `z${(index % 3) + 1}`, ...advertise },
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

  private async startNode(index: number): Promise<NodeMember> {
    const id = `n${index + 1}`;
    let c = this.container(IMAGES.node, id)
      .onNetwork(this.networks.ctl.name, [id])
      .alsoOn(this.networks.fabric.name, [], this.opts.fixedNodeAddresses ? this.fixedNodeAddress(index) : undefined)
      .withCopyContentToContainer([{ content: JSON.stringify(this.nodeConfigFor(index), null, 2), target: "/etc/ballast/ballast.yaml", mode: 0o644 }]);
    // DSR: the node programs nftables in its own network namespace (root with NET_ADMIN there only).
    if (this.dsrVip) c = c.withUser("0:0").withAddedCapabilities("NET_ADMIN");
    const started = await c.start();
    return new NodeMember(this, started.getName().replace(/^\//, ""), started, id);
  }

  private async startAnnouncer(node: NodeMember): Promise<void> {
    const started = await this.container(IMAGES.bird, `${node.nodeId}-bird`)
      .inNetworkNamespaceOf(node.id)
      .withAddedCapabilities("NET_ADMIN")
      .withEnvironment({
        VIPS: this.dsrVip ? `${this.vip} ${this.dsrVip}` : this.vip!,
        ROUTER: this.router!.ip("fabric"),
        RETURN_ROUTES: `${this.fabricPrefix}.1.0/24`,
        POLL_MS: "200",
        BFD: this.opts.bfd ? "on" : "off",
        FALL: String(this.opts.announcerFall),
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

  nodeByAddress(ip: string): NodeMember | undefined {
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
    const r = (await this.etcdGateway("/v3/kv/range", prefixRange(prefix))) as {
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
  async healthLeader(among: NodeMember[] = this.nodes): Promise<NodeMember | undefined> {
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
    const r = (await this.etcdGateway("/v3/kv/range", prefixRange(prefix))) as { kvs?: GatewayKv[] };
    return decodeVerdicts(prefix, r.kvs ?? []);
  }

  /**
   * Every change under a prefix since a revision (puts and deletes, with the previous value), read
   * with `etcdctl watch --rev` in a live member: the history, not just the final state.
   */
  history(prefix: string, fromRevision: number): Promise<EtcdEvent[]> {
    return readHistory(this.etcd, prefix.startsWith("/") ? prefix : `${this.keyPrefix}${prefix}`, fromRevision);
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
