// The data-plane topology: network namespaces the bench makes (test/helpers/netns.ts), so that every
// path crosses the same hops and the kernel modes have a real balancer namespace to program. The
// balancer is one-armed, as a Maglev/DSR node is: client, balancer and backends hang off one switch
// (a bridge namespace), in two subnets, and the balancer namespace routes between them.
//
//   client ns  eth0 10.77.1.2 ─┐                 ┌─ eth0 10.77.1.1 + 10.77.2.1  balancer ns (HAProxy, Ballast node, IP forwarding)
//   (wrk, iperf3 -c)           └── switch ns br0 ┤
//                                                └─ eth0 10.77.2.2, 10.77.2.3  backend ns (nginx, iperf3 -s, sink; DSR VIP 10.77.4.1 on lo)
//
// The client's default route and the backends' default route both point at the balancer, so every
// packet of every path, both ways, goes client → switch → balancer → switch → backend. direct: the
// balancer only routes. HAProxy and Ballast proxy listen on 10.77.1.1. Ballast NAT's VIP 10.77.3.1
// and Ballast DSR's VIP 10.77.4.1 are no address of the balancer: only the node's nftables tables make
// them answer (NAT: DNAT + SNAT in its inet table; DSR: netdev ingress on eth0 forwarding to the
// backend's MAC, replies routed by the balancer straight back to the client, untouched by Ballast).
// Every address exists only inside these namespaces; the host namespace gets no link, route or rule.
// The node's etcd and admin API cross into the host through Unix-socket relays (agents/relay.ts).
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { type Namespace, netnsUnavailable, Topology } from "../helpers/netns.js";
import { agentPath, type Placement } from "./backends.js";
import { startRelay } from "./ballast.js";
import type { Context } from "./context.js";
import type { Etcd } from "./etcd.js";
import type { Proc } from "./procs.js";
import type { Dest } from "./load.js";
import { sleep } from "./net.js";
import { which } from "./tools.js";

export const NET = {
  client: "10.77.1.2",
  lbFront: "10.77.1.1",
  lbBack: "10.77.2.1",
  /** The NAT node's own source address toward the backends (nat.sourceAddresses): nothing else uses it. */
  natSource: "10.77.2.11",
  backends: ["10.77.2.2", "10.77.2.3"],
  natVip: "10.77.3.1",
  dsrVip: "10.77.4.1",
  /** The NAT control-plane figures' 100 backends: more addresses of the backend namespace. */
  manyPrefix: "10.77.5.",
  httpPort: 80,
  iperfPort: 5201,
  /** TCP sink: health-check target of the iperf3 backends (a check connection would look like a test client). */
  sinkPort: 7001,
  haproxy: { http: 8001, bulk: 5202, http2t: 8011, bulk2t: 5212 },
  /** log / nolog: the same HTTP service on two more nodes, access log on / off (the access log's cost). */
  ballast: { http: 8002, affinity: 8003, bulk: 5203, nolog: 8004, log: 8005, w2http: 8012, w2bulk: 5213 },
  /** Every namespace's one interface on the switch; DSR's ingress hook and egress device on the balancer. */
  dev: "eth0",
  /** etcd inside the balancer namespace (a relay to the host's etcd). */
  etcdPort: 2379,
} as const;

export interface NsPlane {
  topo: Topology;
  client: Namespace;
  lb: Namespace;
  backend: Namespace;
  /** Folder of the relays' Unix sockets (short: socket paths are limited to 107 bytes). */
  sockDir: string;
  /** etcd as the node in the balancer namespace reaches it. */
  etcdUrl: string;
  backendAt(ports: number[]): Placement;
  waitListening(ns: Namespace, port: number, timeoutMs?: number): Promise<void>;
  dest(host: string, port: number): Dest;
  /** Long-running processes inside the namespaces (and their relays): stopped before the namespaces go. */
  procs: Proc[];
  /** GET http://host:port/ from the client namespace until 200 or the deadline. */
  probeHttp(host: string, port: number, timeoutMs: number): Promise<{ ok: boolean; last: string }>;
  destroy(): Promise<void>;
}

/** Why the namespace data plane cannot run here, or null. */
export function namespacesUnavailable(): string | null {
  return netnsUnavailable() ?? (which("ss") ? null : "`ss` (iproute2) is missing");
}

export async function buildNamespaces(ctx: Context, etcd: Etcd): Promise<NsPlane> {
  const topo = await Topology.create();
  const sockDir = mkdtempSync(join(tmpdir(), "bb-"));
  let destroyed = false;
  const procs: Proc[] = [];
  const destroy = async () => {
    if (destroyed) return;
    destroyed = true;
    await Promise.all(procs.map((p) => p.stop(2000)));
    await topo.destroy();
    rmSync(sockDir, { recursive: true, force: true });
  };
  ctx.cleanups.push(destroy);
  const client = await topo.namespace("c");
  const lb = await topo.namespace("lb");
  const backend = await topo.namespace("be");
  await topo.attach(client, [`${NET.client}/24`], NET.dev);
  await topo.attach(lb, [`${NET.lbFront}/24`, `${NET.lbBack}/24`, `${NET.natSource}/24`], NET.dev);
  await topo.attach(backend, NET.backends.map((a) => `${a}/24`), NET.dev);
  await client.addRoute("default", NET.lbFront);
  await backend.addRoute("default", NET.lbBack);
  await lb.enableForwarding();
  // One-armed routing sends packets back out the interface they came in on: no ICMP redirects (the
  // client and the backends would learn to skip the balancer, and the paths would differ).
  await lb.sysctl("net.ipv4.conf.all.send_redirects", 0);
  await lb.sysctl(`net.ipv4.conf.${NET.dev}.send_redirects`, 0);
  for (const n of [client, backend]) await n.sysctl("net.ipv4.conf.all.accept_redirects", 0);
  // Every path opens thousands of connections a second, from the client (wrk) or from the balancer
  // (HAProxy's and Ballast proxy's connections to the backends). Whichever side closes first holds
  // the port in TIME_WAIT for 60 s, and Linux's default range has 28,232 ports: the client's
  // TIME_WAIT grew from 3.7k to 13.5k over six rounds of 1-second runs (direct, NAT, HAProxy), and
  // HAProxy once fell to ~350 conn/s for three seconds in a row (exhaustion is the likely cause, not
  // proven). A wide range and tw_reuse for outgoing connections are what load testers and HAProxy's
  // tuning notes set. The kernel paths do not use them: Ballast NAT's source ports are conntrack's.
  for (const n of [client, lb]) {
    await n.sysctl("net.ipv4.ip_local_port_range", "1024 65535");
    await n.sysctl("net.ipv4.tcp_tw_reuse", 1);
  }
  // DSR backends hold the VIP on lo and must not answer ARP for it (deploy/dsr does the same on a real host).
  await backend.ip("addr", "add", `${NET.dsrVip}/32`, "dev", "lo");
  await backend.sysctl("net.ipv4.conf.all.arp_ignore", 1);
  await backend.sysctl("net.ipv4.conf.all.arp_announce", 2);
  // Replies of a DSR backend come from the VIP, which the balancer has no route for: no reverse-path drop.
  await lb.sysctl("net.ipv4.conf.all.rp_filter", 0);
  await lb.sysctl(`net.ipv4.conf.${NET.dev}.rp_filter`, 0);

  // etcd for the node in the balancer namespace: 127.0.0.1:2379 there → socket → the host's etcd.
  const etcdPort = Number(new URL(etcd.url).port);
  const sock = join(sockDir, "etcd.sock");
  procs.push(await startRelay(ctx.group, "relay-etcd-host", `unix:${sock}`, `tcp:127.0.0.1:${etcdPort}`));
  procs.push(await startRelay(ctx.group, "relay-etcd-lb", `tcp:127.0.0.1:${NET.etcdPort}`, `unix:${sock}`, lb.name));

  const waitListening = async (ns: Namespace, port: number, timeoutMs = 10_000) => {
    const end = Date.now() + timeoutMs;
    while (Date.now() < end) {
      const r = await ns.exec("ss", ["-Hltn"]);
      if (new RegExp(`:${port}\\s`).test(r.stdout)) return;
      await sleep(100);
    }
    throw new Error(`nothing listening on port ${port} in namespace ${ns.name} after ${timeoutMs} ms`);
  };
  return {
    topo,
    client,
    lb,
    backend,
    sockDir,
    procs,
    etcdUrl: `http://127.0.0.1:${NET.etcdPort}`,
    backendAt: (ports) => ({ ns: backend.name, host: "0.0.0.0", ports, waitListening: (p) => waitListening(backend, p) }),
    waitListening,
    dest: (host, port) => ({ host, port, ns: client.name }),
    async probeHttp(host, port, timeoutMs) {
      const p = ctx.group.start("http-probe", "ip", ["netns", "exec", client.name, process.execPath, agentPath("http-probe"), "--url", `http://${host}:${port}/`, "--timeoutMs", String(timeoutMs)]);
      await p.exited;
      const j = p.jsonLines().find((x) => "ok" in x);
      return { ok: j?.ok === true, last: String(j?.last ?? p.tail(2)) };
    },
    destroy,
  };
}
