// The chaos cluster without anycast, found through DNS: etcd members and backends from ChaosCluster,
// then nodes with a DNS responder each and a fixed fabric address that is also their public address
// (what DNS answers; it must be known before the node starts), and a client container that resolves
// through the nodes (test/chaos/dns-client.mjs). Containers carry the run's labels, so the cluster's
// destroy() removes them with the rest.
import { dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { GenericContainer } from "testcontainers";
import { waitFor } from "../helpers/wait.js";
import { BallastNode, ChaosCluster, docker, IMAGES, Member, OWNER_LABEL, RUN_LABEL } from "./cluster.js";

const CHAOS_DIR = dirname(fileURLToPath(import.meta.url));
/** The port every node's responder listens on (unprivileged: nodes run as uid 10001). */
export const DNS_PORT = 8053;

export interface DnsClusterOptions {
  nodes: number;
  backends: number;
  etcdMembers: number;
  leaseTtl: number;
  service: Record<string, unknown>;
  /** The cluster's `dns` record (JSON, as `ballast dns set` writes it). */
  dns: Record<string, unknown>;
  /** Client source addresses (one stub resolver each). */
  clientSources: number;
}

// A container on the fabric at a fixed address (chosen at create time: a node's public address must be
// in its config before it starts), also on ctl under its aliases, never on the default bridge.
class FixedAddressContainer extends GenericContainer {
  private ctl?: { network: string; aliases: string[] };

  constructor(image: string, name: string, run: string) {
    super(image);
    this.withName(name).withLabels({ [RUN_LABEL]: run, [OWNER_LABEL]: String(process.pid) }).withStartupTimeout(60_000);
  }

  onFabric(network: string, address?: string): this {
    this.networkMode = network;
    this.createOpts.NetworkingConfig = { EndpointsConfig: { [network]: address ? { IPAMConfig: { IPv4Address: address } } : {} } };
    return this;
  }

  alsoOnCtl(network: string, aliases: string[]): this {
    this.ctl = { network, aliases };
    return this;
  }

  protected override async containerCreated(containerId: string): Promise<void> {
    if (this.ctl) await docker.getNetwork(this.ctl.network).connect({ Container: containerId, EndpointConfig: { Aliases: this.ctl.aliases } });
  }
}

export interface DnsLoadOptions {
  name: string;
  durationMs: number;
  gapMs: number;
  connectTimeoutMs: number;
  dnsTimeoutMs: number;
  probeIntervalMs: number;
  startAt: number;
}

export interface Resolution {
  src: string;
  at: number;
  end: number;
  addresses: string[];
  ttl: number;
  err: string | null;
}

export interface DnsConnection {
  src: string;
  to: string;
  start: number;
  end: number;
  ok: boolean;
  err: string | null;
  backend: string | null;
}

export interface Probe {
  server: string;
  at: number;
  end: number;
  addresses: string[] | null;
  err: string | null;
}

export interface DnsLoadResult {
  cutShort: boolean;
  resolutions: Resolution[];
  connections: DnsConnection[];
  probes: Probe[];
}

/** The client container: resolves through every node's responder and connects where the answer says. */
export class DnsClient extends Member {
  constructor(
    cluster: ChaosCluster,
    name: string,
    container: ConstructorParameters<typeof Member>[3],
    readonly sources: string[],
  ) {
    super(cluster, "client", name, container);
  }

  /** Runs test/chaos/dns-client.mjs against `servers` (all nodes); bounded by count and time. */
  async load(servers: string[], opts: DnsLoadOptions): Promise<DnsLoadResult> {
    const args = {
      ...opts,
      servers,
      sources: this.sources,
      port: 8080,
      probe: { servers, intervalMs: opts.probeIntervalMs },
    };
    const wait = Math.max(0, opts.startAt - Date.now());
    const bound = Math.ceil((wait + opts.durationMs + opts.dnsTimeoutMs * servers.length + opts.connectTimeoutMs + 2_000) / 1000) + 10;
    const r = await this.exec(["timeout", String(bound), "node", "/chaos/dns-client.mjs", JSON.stringify(args)]);
    if (r.exitCode !== 0) throw new Error(`dns client exited ${r.exitCode}: ${r.stderr.slice(0, 2000)}`);
    return JSON.parse(r.stdout) as DnsLoadResult;
  }
}

export interface DnsCluster {
  cluster: ChaosCluster;
  client: DnsClient;
  /** "ip:port" of every node's responder, in node order. */
  servers: string[];
}

/** Public (fixed fabric) address of node `index`: 10.X.3.(index+1), outside the range docker hands out. */
export function publicAddressOf(c: ChaosCluster, index: number): string {
  return `${c.networks.fabric.base.split(".").slice(0, 2).join(".")}.3.${index + 1}`;
}

/**
 * Starts etcd and backends (ChaosCluster, no anycast, no nodes), writes the `dns` record, then the
 * nodes (DNS on, public address = fixed fabric address) and the client; waits until every node is
 * ready and every responder names every node.
 */
export async function startDnsCluster(o: DnsClusterOptions): Promise<DnsCluster> {
  const c = await ChaosCluster.start({ etcdMembers: o.etcdMembers, nodes: 0, backends: o.backends, anycast: false, service: o.service, leaseTtl: o.leaseTtl });
  try {
    await c.put(`${c.keyPrefix}dns`, JSON.stringify(o.dns));
    const nodes = await Promise.all(Array.from({ length: o.nodes }, (_, i) => startDnsNode(c, i)));
    c.nodes.push(...nodes);
    const client = await startClient(c, o.clientSources);
    const servers = nodes.map((_, i) => `${publicAddressOf(c, i)}:${DNS_PORT}`);
    await waitFor(async () => (await Promise.all(c.nodes.map((n) => n.ready()))).every(Boolean), { timeoutMs: 30_000, intervalMs: 200, message: "every node ready" });
    await waitFor(
      async () => {
        const states = await Promise.all(c.nodes.map((n) => n.state()));
        return states.every((s) => s.dns?.names.some((n) => n.service === "web" && n.addresses.length === o.nodes));
      },
      { timeoutMs: 30_000, intervalMs: 200, message: "every responder naming every node" },
    );
    return { cluster: c, client, servers };
  } catch (err) {
    await c.destroy().catch(() => {});
    throw err;
  }
}

async function startDnsNode(c: ChaosCluster, index: number): Promise<BallastNode> {
  const id = `n${index + 1}`;
  const address = publicAddressOf(c, index);
  const base = c.nodeConfigFor(index);
  const config = {
    ...base,
    node: { ...(base.node as Record<string, unknown>), publicAddresses: [address] },
    // Answers are the point of the scenario: no rate limit on the client's many queries.
    dns: { listen: `0.0.0.0:${DNS_PORT}`, rrl: { responsesPerSecond: 0 } },
  };
  const started = await new FixedAddressContainer(IMAGES.node, `${c.prefix}-${id}`, c.run)
    .onFabric(c.networks.fabric.name, address)
    .alsoOnCtl(c.networks.ctl.name, [id])
    .withCopyContentToContainer([{ content: JSON.stringify(config, null, 2), target: "/etc/ballast/ballast.yaml", mode: 0o644 }])
    .start();
  const node = new BallastNode(c, started.getName().replace(/^\//, ""), started, id);
  await node.refresh();
  return node;
}

async function startClient(c: ChaosCluster, count: number): Promise<DnsClient> {
  const prefix = c.networks.fabric.base.split(".").slice(0, 2).join(".");
  const sources = Array.from({ length: count }, (_, i) => `${prefix}.1.${i + 1}`);
  const started = await new FixedAddressContainer(IMAGES.base, `${c.prefix}-client`, c.run)
    .onFabric(c.networks.fabric.name)
    .withAddedCapabilities("NET_ADMIN")
    .withBindMounts([{ source: CHAOS_DIR, target: "/chaos", mode: "ro" }])
    .withCommand(["sleep", "3600"])
    .start();
  const client = new DnsClient(c, started.getName().replace(/^\//, ""), started, sources);
  await client.refresh();
  // Each source is one client: its own address on the fabric (nodes answer it directly on the bridge).
  await client.sh(sources.map((s) => `ip addr add ${s}/32 dev eth0`).join(" && "));
  return client;
}
