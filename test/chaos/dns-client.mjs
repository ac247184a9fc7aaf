// DNS-resolving client load, run inside the chaos client container (plain JS: the container has node,
// no build). Each "client" is one source address with its own stub resolver (c-ares, as Node's
// dns.Resolver) configured with every node's DNS responder, in a per-client rotated order (as
// resolv.conf with `options rotate` spreads clients). It resolves the service name, keeps the answer
// for its TTL like a caching stub, connects to the first address, sends one HTTP request to the demo
// backend behind Ballast and records what happened. A prober asks each listed responder directly at a
// fixed interval, so the caller sees when each node's answers changed. Bounded in count and time:
// stops at durationMs and exits at durationMs + timeouts + 2 s whatever happens.
//
//   node dns-client.mjs '<json options>'   →  one JSON document on stdout (see `report` below)
//
// Options: name (to resolve); servers ["ip:port"…] (every node's responder); sources [ip…] (one client
// each); port (the service's); durationMs; gapMs between a client's connections; connectTimeoutMs;
// dnsTimeoutMs (per server, one try each); probe {servers ["ip:port"…], intervalMs}; startAt (epoch
// ms to start at, so the caller can line its fault up with the load). Times are epoch ms (the
// container shares the host's clock).
import { Resolver } from "node:dns/promises";
import net from "node:net";

const opts = JSON.parse(process.argv[2] ?? "{}");
const name = String(opts.name);
const servers = opts.servers ?? [];
const sources = opts.sources ?? [];
const port = Number(opts.port ?? 8080);
const durationMs = opts.durationMs ?? 10_000;
const gapMs = opts.gapMs ?? 100;
const connectTimeoutMs = opts.connectTimeoutMs ?? 1_000;
const dnsTimeoutMs = opts.dnsTimeoutMs ?? 500;
const requestTimeoutMs = 2_000;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

const resolutions = [];
const connections = [];
const probes = [];

/** One HTTP exchange with the demo backend through `to`, from `source`. */
function connect(to, source) {
  return new Promise((resolve) => {
    const rec = { src: source, to, start: Date.now(), end: 0, ok: false, err: null, backend: null };
    const socket = net.connect({ host: to, port, localAddress: source });
    let buffer = "";
    let connected = false;
    const finish = (err) => {
      if (rec.end !== 0) return;
      clearTimeout(timer);
      rec.end = Date.now();
      rec.ok = err === null;
      rec.err = err;
      socket.destroy();
      resolve(rec);
    };
    let timer = setTimeout(() => finish("connect-timeout"), connectTimeoutMs);
    socket.on("connect", () => {
      connected = true;
      clearTimeout(timer);
      timer = setTimeout(() => finish("timeout"), requestTimeoutMs);
      socket.write("GET / HTTP/1.1\r\nHost: chaos\r\nConnection: close\r\n\r\n");
    });
    socket.on("data", (chunk) => {
      buffer += chunk.toString("latin1");
      const headEnd = buffer.indexOf("\r\n\r\n");
      if (headEnd < 0) return;
      const length = Number(/\r\ncontent-length:\s*(\d+)/i.exec(buffer.slice(0, headEnd))?.[1] ?? 0);
      if (buffer.length < headEnd + 4 + length) return;
      try {
        rec.backend = JSON.parse(buffer.slice(headEnd + 4, headEnd + 4 + length)).backend ?? null;
      } catch {
        // not the demo backend's body: the status decides
      }
      const status = Number(buffer.slice(9, 12));
      finish(status === 200 ? null : `http-${status}`);
    });
    socket.on("error", (err) => finish(err.code ?? err.message));
    socket.on("close", () => finish(connected ? "closed" : "closed-before-connect"));
  });
}

async function client(index, source, deadline) {
  // One try per server, each server in turn: a dead first server costs dnsTimeoutMs, then the next answers.
  const resolver = new Resolver({ timeout: dnsTimeoutMs, tries: 1 });
  const order = servers.map((_, i) => servers[(index + i) % servers.length]);
  resolver.setServers(order);
  resolver.setLocalAddress(source);
  let cached = { addresses: [], until: 0 };
  while (Date.now() < deadline) {
    if (Date.now() >= cached.until) {
      const rec = { src: source, at: Date.now(), end: 0, addresses: [], ttl: 0, err: null };
      try {
        const answer = await resolver.resolve4(name, { ttl: true });
        rec.addresses = answer.map((a) => a.address);
        rec.ttl = answer[0]?.ttl ?? 0;
      } catch (err) {
        rec.err = err.code ?? err.message;
      }
      rec.end = Date.now();
      resolutions.push(rec);
      // The TTL counts from when the answer arrived, as a caching stub counts it.
      cached = { addresses: rec.addresses, until: rec.end + rec.ttl * 1000 };
    }
    const to = cached.addresses[0];
    if (to !== undefined) connections.push(await connect(to, source));
    await sleep(gapMs);
  }
}

async function prober(server, deadline) {
  const resolver = new Resolver({ timeout: 300, tries: 1 });
  resolver.setServers([server]);
  while (Date.now() < deadline) {
    const at = Date.now();
    const rec = { server, at, end: 0, addresses: null, err: null };
    try {
      rec.addresses = await resolver.resolve4(name);
    } catch (err) {
      rec.err = err.code ?? err.message;
    }
    rec.end = Date.now();
    probes.push(rec);
    await sleep(Math.max(0, (opts.probe.intervalMs ?? 100) - (Date.now() - at)));
  }
}

function report(cutShort) {
  process.stdout.write(`${JSON.stringify({ cutShort, resolutions, connections, probes })}\n`, () => process.exit(0));
}

async function main() {
  const startAt = opts.startAt ?? Date.now();
  if (startAt > Date.now()) await sleep(startAt - Date.now());
  const t0 = Date.now();
  const deadline = t0 + durationMs;
  const hardStop = setTimeout(() => report(true), durationMs + dnsTimeoutMs * servers.length + connectTimeoutMs + requestTimeoutMs + 2_000);
  hardStop.unref();
  await Promise.all([
    ...sources.map((s, i) => client(i, s, deadline)),
    ...(opts.probe?.servers ?? []).map((s) => prober(s, deadline)),
  ]);
  report(false);
}

await main();
