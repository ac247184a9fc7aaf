// The DSR test topology: a client, two balancer nodes and backends on one switch (bridge namespace),
// the service VIP on every backend's loopback (put there by deploy/dsr/ballast-dsr-backend.sh, so
// the script is exercised too), and drivers for the processes inside: backends that answer with
// their id and the peer address they saw, and a client that holds TCP connections and sends UDP.
import type { ChildProcess } from "node:child_process";
import { dirname, join } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { type Namespace, Topology } from "../helpers/netns.js";
import { waitFor } from "../helpers/wait.js";

const root = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
export const BACKEND_SCRIPT = join(root, "deploy", "dsr", "ballast-dsr-backend.sh");

/** A backend: TCP (one reply line per request line) and UDP (one reply per datagram) on `port`. */
const BACKEND_JS = `
const [id, port] = process.argv.slice(1);
const answer = (addr, p) => id + " " + addr + ":" + p + "\\n";
require("net").createServer((s) => {
  s.on("error", () => {});
  let buf = "";
  s.on("data", (d) => {
    buf += d;
    let i;
    while ((i = buf.indexOf("\\n")) >= 0) { buf = buf.slice(i + 1); s.write(answer(s.remoteAddress, s.remotePort)); }
  });
}).listen(Number(port), "0.0.0.0");
const u = require("dgram").createSocket("udp4");
u.on("message", (m, r) => u.send(answer(r.address, r.port), r.port, r.address));
u.bind(Number(port), "0.0.0.0");
`;

/**
 * The client driver: JSON commands on stdin, one JSON answer per command on stdout. Every wait has
 * its own deadline so a lost packet turns into an error answer, never a hang.
 */
const CLIENT_JS = `
const net = require("net"), dgram = require("dgram");
const [vip, vport] = process.argv.slice(1);
const conns = new Map();
const out = (o) => process.stdout.write(JSON.stringify(o) + "\\n");
const rl = require("readline").createInterface({ input: process.stdin });
rl.on("line", (line) => {
  const c = JSON.parse(line);
  if (c.op === "open") {
    const s = net.connect({ host: vip, port: Number(vport), localPort: c.port || undefined });
    const st = { s, buf: "", waiters: [], error: null };
    conns.set(c.id, st);
    const t = setTimeout(() => { s.destroy(); out({ seq: c.seq, error: "connect timeout" }); }, 3000);
    s.once("connect", () => { clearTimeout(t); out({ seq: c.seq, port: s.localPort }); });
    s.on("error", (e) => { st.error = e.code || e.message; clearTimeout(t); for (const w of st.waiters.splice(0)) w(null); });
    s.on("close", () => { if (!st.error) st.error = "closed"; for (const w of st.waiters.splice(0)) w(null); });
    s.on("data", (d) => {
      st.buf += d;
      let i;
      while ((i = st.buf.indexOf("\\n")) >= 0) { const l = st.buf.slice(0, i); st.buf = st.buf.slice(i + 1); const w = st.waiters.shift(); if (w) w(l); }
    });
  } else if (c.op === "ask") {
    const st = conns.get(c.id);
    if (!st || st.error) { out({ seq: c.seq, error: st ? st.error : "no such connection" }); return; }
    const t = setTimeout(() => { const i = st.waiters.indexOf(done); if (i >= 0) st.waiters.splice(i, 1); out({ seq: c.seq, error: "reply timeout" }); }, c.timeoutMs || 2000);
    function done(l) { clearTimeout(t); out(l === null ? { seq: c.seq, error: st.error } : { seq: c.seq, reply: l }); }
    st.waiters.push(done);
    st.s.write("q\\n");
  } else if (c.op === "reset") {
    const st = conns.get(c.id);
    if (st) { st.error = "reset by client"; st.s.resetAndDestroy(); conns.delete(c.id); }
    out({ seq: c.seq });
  } else if (c.op === "udp") {
    const u = dgram.createSocket("udp4");
    const t = setTimeout(() => { u.close(); out({ seq: c.seq, error: "udp timeout" }); }, c.timeoutMs || 2000);
    u.on("message", (m) => { clearTimeout(t); u.close(); out({ seq: c.seq, reply: String(m).trim() }); });
    u.bind(c.port, () => u.send("q\\n", Number(vport), vip));
  }
});
`;

export interface Reply {
  /** The backend that answered. */
  backend: string;
  /** The client address and port the backend saw (DSR: the client's own). */
  peer: string;
}

export class ClientDriver {
  private seq = 0;
  private readonly pending = new Map<number, (o: Record<string, unknown>) => void>();

  constructor(readonly proc: ChildProcess) {
    createInterface({ input: proc.stdout! }).on("line", (line) => {
      const o = JSON.parse(line) as Record<string, unknown>;
      const w = this.pending.get(o.seq as number);
      this.pending.delete(o.seq as number);
      w?.(o);
    });
  }

  private call(cmd: Record<string, unknown>): Promise<Record<string, unknown>> {
    const seq = ++this.seq;
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => {
        this.pending.delete(seq);
        reject(new Error(`client driver: no answer to ${JSON.stringify(cmd)}`));
      }, 10_000);
      this.pending.set(seq, (o) => {
        clearTimeout(t);
        resolve(o);
      });
      this.proc.stdin!.write(`${JSON.stringify({ ...cmd, seq })}\n`);
    });
  }

  /** Opens TCP connection `id` to the VIP (from `port` when given); returns the local port. */
  async open(id: string, port = 0): Promise<number> {
    const o = await this.call({ op: "open", id, port });
    if (o.error) throw new Error(`open ${id}: ${o.error}`);
    return o.port as number;
  }

  /** One request on connection `id`: the reply, or the error (reset, timeout) as a string. */
  async ask(id: string, timeoutMs = 2000): Promise<Reply | string> {
    const o = await this.call({ op: "ask", id, timeoutMs });
    if (o.error) return String(o.error);
    const [backend, peer] = String(o.reply).split(" ");
    return { backend, peer };
  }

  /** Closes connection `id` with a RST, so its 4-tuple can be used again at once (no TIME_WAIT). */
  async reset(id: string): Promise<void> {
    await this.call({ op: "reset", id });
  }

  /** One UDP datagram from `port` to the VIP: the reply, or the error as a string. */
  async udp(port: number, timeoutMs = 2000): Promise<Reply | string> {
    const o = await this.call({ op: "udp", port, timeoutMs });
    if (o.error) return String(o.error);
    const [backend, peer] = String(o.reply).split(" ");
    return { backend, peer };
  }
}

export interface DsrLab {
  topology: Topology;
  client: Namespace;
  clientIp: string;
  nodes: Namespace[];
  nodeIps: string[];
  backends: Map<string, { ns: Namespace; ip: string }>;
  vip: string;
  port: number;
  driver: ClientDriver;
  /** Sends the client's VIP traffic to node i (its route's next hop). */
  routeVia(i: number): Promise<void>;
}

/**
 * Builds the lab: subnet 10.<a>.<b>.0/24 on the switch (client .2, nodes .3 and .4, backends .11…),
 * VIP 10.<a>.<b+1>.1 — addresses that exist only inside these namespaces.
 */
export async function dsrLab(backendIds: string[]): Promise<DsrLab> {
  const topology = await Topology.create();
  try {
    const a = 100 + Math.floor(Math.random() * 100);
    const b = 2 * Math.floor(Math.random() * 100);
    const net = `10.${a}.${b}`;
    const vip = `10.${a}.${b + 1}.1`;
    const port = 80;
    const client = await topology.namespace("cl");
    await topology.attach(client, [`${net}.2/24`]);
    const nodes: Namespace[] = [];
    const nodeIps: string[] = [];
    for (let i = 0; i < 2; i++) {
      const ns = await topology.namespace(`n${i + 1}`);
      await topology.attach(ns, [`${net}.${3 + i}/24`]);
      nodes.push(ns);
      nodeIps.push(`${net}.${3 + i}`);
    }
    const backends = new Map<string, { ns: Namespace; ip: string }>();
    let host = 11;
    for (const id of backendIds) {
      const ns = await topology.namespace(id);
      const ip = `${net}.${host++}`;
      await topology.attach(ns, [`${ip}/24`]);
      await ns.run("sh", [BACKEND_SCRIPT, "up", vip]);
      ns.spawn(process.execPath, ["-e", BACKEND_JS, id, String(port)]);
      backends.set(id, { ns, ip });
    }
    for (const [id, { ns }] of backends) {
      // TCP and UDP sockets both bound.
      await waitFor(async () => (await ns.run("ss", ["-ltunH", `sport = :${port}`])).trim().split("\n").length >= 2, { message: `backend ${id} listening` });
    }
    await client.addRoute(`${vip}/32`, nodeIps[0]);
    const proc = client.spawn(process.execPath, ["-e", CLIENT_JS, vip, String(port)], { stdio: ["pipe", "pipe", "inherit"] });
    const driver = new ClientDriver(proc);
    return {
      topology,
      client,
      clientIp: `${net}.2`,
      nodes,
      nodeIps,
      backends,
      vip,
      port,
      driver,
      routeVia: async (i: number) => {
        await client.ip("route", "replace", `${vip}/32`, "via", nodeIps[i]);
      },
    };
  } catch (err) {
    await topology.destroy();
    throw err;
  }
}
