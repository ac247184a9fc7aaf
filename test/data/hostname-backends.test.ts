// Backends given as host names, against a real (tiny) authoritative DNS server on 127.0.0.1:0 that
// counts its queries: A + AAAA become targets, a changed answer re-routes, NXDOMAIN is the backend's
// reason and keeps it out, a name with only AAAA records carries UDP, and no connection, datagram or
// probe looks the name up (the server's query count does not move with traffic).
import dgram from "node:dgram";
import net from "node:net";
import * as packet from "dns-packet";
import { afterAll, afterEach, describe, expect, it } from "vitest";
import type { BallastNode } from "../../node/node.js";
import { describeState, explainRoute } from "../../node/state.js";
import { formatIssues, nodeConfigSchema } from "../../shared/schema.js";
import { portOf, startNode, stopAllNodes } from "../helpers/node.js";
import { waitFor } from "../helpers/wait.js";

// ---- a minimal authoritative server: name → A/AAAA records; unknown names get NXDOMAIN -------------
interface Zone {
  [name: string]: { a?: string[]; aaaa?: string[]; ttl: number };
}

interface TestDns {
  port: number;
  zone: Zone;
  /** Queries received per name (any type). */
  queries: Map<string, number>;
  /** Drop queries unanswered (a server that times out). */
  mute: boolean;
  total(name: string): number;
  close(): Promise<void>;
}

async function startDns(zone: Zone): Promise<TestDns> {
  const sock = dgram.createSocket("udp4");
  const queries = new Map<string, number>();
  let turn = 0;
  sock.on("message", (msg, rinfo) => {
    let q: packet.Packet;
    try {
      q = packet.decode(msg);
    } catch {
      return;
    }
    const question = q.questions?.[0];
    if (!question) return;
    const name = question.name.toLowerCase().replace(/\.$/, "");
    queries.set(name, (queries.get(name) ?? 0) + 1);
    if (dns.mute) return;
    const entry = dns.zone[name];
    const records = entry === undefined ? [] : question.type === "A" ? (entry.a ?? []) : question.type === "AAAA" ? (entry.aaaa ?? []) : [];
    // Rotate the order per query, as round-robin DNS servers do: nodes must not depend on it.
    turn++;
    const rotated = records.map((_, i) => records[(i + turn) % records.length]);
    const reply = packet.encode({
      type: "response",
      id: q.id,
      // AA, plus RCODE 3 (NXDOMAIN) for a name the zone does not have.
      flags: packet.AUTHORITATIVE_ANSWER | (entry === undefined ? 3 : 0),
      questions: [question],
      answers: rotated.map((data) => ({ type: question.type as "A" | "AAAA", name: question.name, ttl: entry!.ttl, class: "IN" as const, data })),
    });
    sock.send(reply, rinfo.port, rinfo.address);
  });
  await new Promise<void>((r) => sock.bind(0, "127.0.0.1", () => r()));
  const dns: TestDns = {
    port: (sock.address() as net.AddressInfo).port,
    zone,
    queries,
    mute: false,
    total: (name) => queries.get(name) ?? 0,
    close: () => new Promise((r) => sock.close(() => r())),
  };
  return dns;
}

// ---- backends that name themselves, one per address, all on one port ------------------------------
const servers: Array<{ close(): void }> = [];

/** A TCP server on each host, all on one port (the backend record has one port for all its addresses). */
async function tcpNamed(hosts: string[]): Promise<number> {
  for (let attempt = 0; attempt < 20; attempt++) {
    const opened: net.Server[] = [];
    let port = 0;
    try {
      for (const host of hosts) {
        const srv = net.createServer((s) => {
          s.on("error", () => {});
          s.end(`${host}\n`);
        });
        await new Promise<void>((resolve, reject) => {
          srv.once("error", reject);
          srv.listen(port, host, () => resolve());
        });
        opened.push(srv);
        port = (srv.address() as net.AddressInfo).port;
      }
      for (const srv of opened) servers.push({ close: () => srv.close() });
      return port;
    } catch {
      // The port the first host got is taken on another host: try another one.
      for (const srv of opened) srv.close();
    }
  }
  throw new Error(`no common free port on ${hosts.join(", ")}`);
}

/** Which address answered one new connection to 127.0.0.1:port. */
function ask(port: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = net.connect({ host: "127.0.0.1", port });
    let data = "";
    s.setTimeout(3000, () => s.destroy(new Error("timeout")));
    s.on("data", (d) => {
      data += d.toString();
    });
    s.on("error", reject);
    s.on("close", () => resolve(data.trim()));
  });
}

afterEach(async () => {
  await stopAllNodes();
  for (const s of servers.splice(0)) s.close();
});

const dnsServers: TestDns[] = [];
afterAll(async () => {
  await Promise.all(dnsServers.map((d) => d.close()));
});

async function dnsWith(zone: Zone): Promise<TestDns> {
  const d = await startDns(zone);
  dnsServers.push(d);
  return d;
}

function backendState(node: BallastNode, service: string, id: string) {
  const svc = describeState(node).services.find((s) => s.name === service);
  return svc?.backends.find((b) => b.id === id);
}

const tcpService = (name: string, backends: Record<string, unknown>[], extra: Record<string, unknown> = {}) => ({
  name,
  listen: "127.0.0.1:0",
  protocol: "tcp",
  backends,
  ...extra,
});

describe("host-name backends", () => {
  it("A and AAAA records: every address a target, probed without a lookup, the same table on two nodes, no lookup per connection", async () => {
    const dns = await dnsWith({ "web.test": { a: ["127.0.0.2", "127.0.0.3"], aaaa: ["::1"], ttl: 300 } });
    const port = await tcpNamed(["127.0.0.2", "127.0.0.3", "::1"]);
    const config = (id: string) => ({
      node: { id },
      resolver: { servers: [`127.0.0.1:${dns.port}`], interval: "5m" },
      services: [tcpService("web", [{ id: "w", address: "web.test", port }], { algorithm: "maglev", health: { type: "tcp", interval: "100ms", timeout: "1s", rise: 1 } })],
    });
    const a = await startNode(config("hn-a"));
    const b = await startNode(config("hn-b"));
    await waitFor(() => backendState(a, "web", "w")?.routable === true && backendState(b, "web", "w")?.routable === true, { message: "web.test resolved on both nodes" });
    const st = backendState(a, "web", "w")!;
    // Sorted IPv4 first, whatever order the server rotated them into.
    expect(st.addresses).toEqual(["127.0.0.2", "127.0.0.3", "::1"]);
    expect(st.resolution).toMatchObject({ name: "web.test", addresses: ["127.0.0.2", "127.0.0.3", "::1"], error: null, ttlMs: 300_000 });
    expect(backendState(b, "web", "w")!.addresses).toEqual(st.addresses);
    // The health check probed all three addresses (one verdict for the backend).
    await waitFor(() => backendState(a, "web", "w")?.verdict?.state === "up", { message: "verdict up" });
    expect(backendState(a, "web", "w")!.verdict!.reason).toContain("3 addresses");
    const queriesBefore = dns.total("web.test");
    // Two resolvers, answers in different orders: the same Maglev decision on both nodes.
    for (let i = 0; i < 40; i++) {
      const client = `198.51.100.${i + 1}`;
      const ra = explainRoute(a, "web", client, 40000 + i).body as { backend: { address: string; name?: string } };
      const rb = explainRoute(b, "web", client, 40000 + i).body as { backend: { address: string } };
      expect(ra.backend.address).toBe(rb.backend.address);
      expect(ra.backend.name).toBe("web.test");
    }
    const seen = new Set<string>();
    for (let i = 0; i < 30; i++) seen.add(await ask(portOf(a, "web")));
    expect(seen).toEqual(new Set(["127.0.0.2", "127.0.0.3", "::1"]));
    // Targets hold addresses, so net.connect has nothing to look up (it skips lookup for IP literals)…
    for (const t of a.reconciler.snapshot!.services.get("web")!.targets) expect(net.isIP(t.host)).not.toBe(0);
    // …and 30 connections and the probes since (100 ms apart) asked the server nothing more.
    expect(dns.total("web.test")).toBe(queriesBefore);
    expect(a.resolver.lookups).toBe(1);
  });

  it("a changed answer is looked up again when its TTL runs out, and new connections follow it", async () => {
    const dns = await dnsWith({ "move.test": { a: ["127.0.0.2"], ttl: 1 } });
    const port = await tcpNamed(["127.0.0.2", "127.0.0.3"]);
    const node = await startNode({
      node: { id: "hn-move" },
      resolver: { servers: [`127.0.0.1:${dns.port}`], interval: "1m" },
      services: [tcpService("move", [{ id: "m", address: "move.test", port }], { health: { type: "none" } })],
    });
    await waitFor(() => backendState(node, "move", "m")?.routable === true, { message: "move.test resolved" });
    expect(await ask(portOf(node, "move"))).toBe("127.0.0.2");
    dns.zone["move.test"] = { a: ["127.0.0.3"], ttl: 1 };
    // TTL 1 s: re-resolved within about a second, then routed to the new address.
    await waitFor(async () => (await ask(portOf(node, "move"))) === "127.0.0.3", { timeoutMs: 10_000, intervalMs: 200, message: "routed to the new address" });
    expect(backendState(node, "move", "m")!.addresses).toEqual(["127.0.0.3"]);
  });

  it("NXDOMAIN: the backend's reason in /api/state and route explain, not routable; routable once the name exists", async () => {
    const dns = await dnsWith({});
    const port = await tcpNamed(["127.0.0.2"]);
    const node = await startNode({
      node: { id: "hn-nx" },
      resolver: { servers: [`127.0.0.1:${dns.port}`], interval: "1s" },
      services: [tcpService("nx", [{ id: "n1", address: "gone.test", port }], { health: { type: "none" } })],
    });
    await waitFor(() => backendState(node, "nx", "n1")?.resolution !== null && backendState(node, "nx", "n1")?.resolution !== undefined, { message: "gone.test answered" });
    const st = backendState(node, "nx", "n1")!;
    expect(st.routable).toBe(false);
    expect(st.why).toBe("resolve gone.test: NXDOMAIN");
    expect(st.addresses).toEqual([]);
    const explained = explainRoute(node, "nx", "198.51.100.7", 5000).body as { backend: unknown; reason: string };
    expect(explained.backend).toBeNull();
    expect(explained.reason).toBe("no-backend: n1 resolve gone.test: NXDOMAIN");
    // A connection finds no backend: reset (or closed) without a byte.
    expect(["", "ECONNRESET"]).toContain(await ask(portOf(node, "nx")).catch((e: NodeJS.ErrnoException) => e.code));
    expect(node.plane.stats.service("nx").refused["no-backend"]).toBeGreaterThan(0);
    // The name appears: the failed lookup is retried (here every second) and the backend routes.
    dns.zone["gone.test"] = { a: ["127.0.0.2"], ttl: 60 };
    await waitFor(() => backendState(node, "nx", "n1")?.routable === true, { timeoutMs: 10_000, message: "routable once the name resolves" });
    expect(await ask(portOf(node, "nx"))).toBe("127.0.0.2");
  });

  it("a server that stops answering: the last answer keeps routing, and the error is shown", async () => {
    const dns = await dnsWith({ "flaky.test": { a: ["127.0.0.2"], ttl: 1 } });
    const port = await tcpNamed(["127.0.0.2"]);
    const node = await startNode({
      node: { id: "hn-flaky" },
      resolver: { servers: [`127.0.0.1:${dns.port}`], interval: "1m", timeout: "200ms" },
      services: [tcpService("flaky", [{ id: "f", address: "flaky.test", port }], { health: { type: "none" } })],
    });
    await waitFor(() => backendState(node, "flaky", "f")?.routable === true, { message: "flaky.test resolved" });
    dns.mute = true;
    await waitFor(() => (backendState(node, "flaky", "f")?.resolution?.error ?? null) !== null, { timeoutMs: 10_000, message: "timeout seen" });
    const st = backendState(node, "flaky", "f")!;
    expect(st.resolution!.error).toMatch(/ETIMEOUT.*keeping the last answer/);
    expect(st.routable).toBe(true);
    expect(st.addresses).toEqual(["127.0.0.2"]);
    expect(await ask(portOf(node, "flaky"))).toBe("127.0.0.2");
  });

  it("UDP to a name with only AAAA records", async () => {
    const dns = await dnsWith({ "v6only.test": { aaaa: ["::1"], ttl: 300 } });
    const echo = dgram.createSocket("udp6");
    echo.on("message", (m, r) => echo.send(m, r.port, r.address));
    await new Promise<void>((r) => echo.bind(0, "::1", () => r()));
    servers.push({ close: () => echo.close() });
    const node = await startNode({
      node: { id: "hn-udp" },
      resolver: { servers: [`127.0.0.1:${dns.port}`], interval: "5m" },
      services: [{ name: "u", listen: "127.0.0.1:0", protocol: "udp", health: { type: "none" }, backends: [{ id: "u1", address: "v6only.test", port: (echo.address() as net.AddressInfo).port }] }],
    });
    await waitFor(() => backendState(node, "u", "u1")?.routable === true, { message: "v6only.test resolved" });
    expect(backendState(node, "u", "u1")!.addresses).toEqual(["::1"]);
    const queriesBefore = dns.total("v6only.test");
    const client = dgram.createSocket("udp4");
    try {
      const got = new Promise<string>((resolve) => client.once("message", (m) => resolve(m.toString())));
      const port = portOf(node, "u");
      // Datagrams can be lost even on loopback: send until the echo comes back, a bounded number of times.
      let reply: string | null = null;
      for (let i = 0; i < 20 && reply === null; i++) {
        client.send("ping-v6", port, "127.0.0.1");
        reply = await Promise.race([got, new Promise<null>((r) => setTimeout(() => r(null), 250))]);
      }
      expect(reply).toBe("ping-v6");
    } finally {
      client.close();
    }
    expect(dns.total("v6only.test")).toBe(queriesBefore);
  });

  it("a resolver server that is not an address fails the config with its field path", () => {
    const r = nodeConfigSchema.safeParse({ resolver: { servers: ["127.0.0.1:53", "dns.example"] } });
    expect(r.success).toBe(false);
    expect(formatIssues(r.error!)).toEqual(['resolver.servers[1]: expected an IP address or "address:port" ("[::1]:53")']);
    expect(nodeConfigSchema.parse({}).resolver).toEqual({ servers: [], interval: 30_000, timeout: 2000 });
  });
});
