// A NAT lab in namespaces: client ns ── lb ns (the balancer node) ── switch ── backend namespaces.
// Client 10.77.1.2, lb 10.77.1.1 / 10.77.2.1, backends 10.77.2.(10+i); the VIP 10.77.9.1 exists
// nowhere (DNAT in prerouting takes it). Backends answer TCP and UDP on 8080 with their name, and
// have no route back to the client unless `backendRoute` (so only full NAT reaches them).
import { buildSnapshot, type Snapshot } from "../../node/model/snapshot.js";
import { StatsRegistry } from "../../node/model/stats.js";
import { RecordTable } from "../../node/control/records.js";
import { KeySchema } from "../../shared/keys.js";
import { type Namespace, Topology } from "../helpers/netns.js";
import { waitFor } from "../helpers/wait.js";

export const VIP = "10.77.9.1";
export const CLIENT = "10.77.1.2";

const BACKEND_JS = `
const net = require("net"), dgram = require("dgram"), name = process.argv[1];
net.createServer((s) => { s.on("error", () => {}); const me = name + " " + s.remoteAddress.replace(/^::ffff:/, "") + "\\n"; s.write(me); s.on("data", () => s.write(me)); s.on("end", () => s.end()); }).listen(8080, "::");
const u = dgram.createSocket("udp4"); u.on("message", (m, r) => u.send(name + " " + r.address, r.port, r.address)); u.bind(8080, "0.0.0.0");
`;

/**
 * The client program: opens one flow per source port (TCP or UDP), prints "port backend" per flow.
 * `hold` keeps TCP connections open until stdin closes, re-asking the backend on each line.
 */
const CLIENT_JS = `
const net = require("net"), dgram = require("dgram");
const [proto, host, port, ports, conc] = [process.argv[1], process.argv[2], +process.argv[3], JSON.parse(process.argv[4]), +process.argv[5]];
const out = [];
function tcp(lp) { return new Promise((res) => { const s = net.connect({ host, port, localPort: lp, localAddress: "${CLIENT}" }); let buf = "";
  const t = setTimeout(() => { s.destroy(); res(lp + " timeout"); }, 5000);
  s.on("data", (d) => { buf += d; if (buf.includes("\\n")) { clearTimeout(t); s.resetAndDestroy(); res(lp + " " + buf.trim()); } });
  s.on("error", (e) => { clearTimeout(t); res(lp + " error:" + e.code); }); }); }
function udp(lp) { return new Promise((res) => { const u = dgram.createSocket("udp4");
  const t = setTimeout(() => { u.close(); res(lp + " timeout"); }, 3000);
  u.on("message", (m) => { clearTimeout(t); u.close(); res(lp + " " + m.toString()); });
  u.bind(lp, "${CLIENT}", () => u.send("hi", port, host)); }); }
(async () => { let i = 0; const work = [];
  const next = async () => { while (i < ports.length) { const lp = ports[i++]; out.push(await (proto === "tcp" ? tcp(lp) : udp(lp))); } };
  for (let k = 0; k < conc; k++) work.push(next());
  await Promise.all(work); process.stdout.write(out.join("\\n") + "\\n"); })();
`;

/** Holds TCP connections open from the client; each line on stdin asks every connection for its backend again. */
const HOLD_JS = `
const net = require("net");
const [host, port, ports] = [process.argv[1], +process.argv[2], JSON.parse(process.argv[3])];
const socks = ports.map((lp) => { const s = net.connect({ host, port, localPort: lp, localAddress: "${CLIENT}" }); s.lp = lp; s.buf = ""; s.setEncoding("utf8");
  s.on("data", (d) => { s.buf += d; let nl; while ((nl = s.buf.indexOf("\\n")) >= 0) { const line = s.buf.slice(0, nl); s.buf = s.buf.slice(nl + 1); process.stdout.write(s.lp + " " + line + "\\n"); } });
  s.on("error", (e) => process.stdout.write(s.lp + " error:" + e.code + "\\n"));
  s.on("close", () => process.stdout.write(s.lp + " closed\\n")); return s; });
process.stdin.on("data", () => { for (const s of socks) if (!s.destroyed) s.write("?\\n"); });
process.stdin.on("end", () => { for (const s of socks) s.resetAndDestroy(); process.exit(0); });
`;

export interface HeldFlows {
  /** Asks every held connection again; resolves with source port → last answer once all answered (or closed). */
  ask(): Promise<Map<number, string>>;
  close(): void;
}

export interface Lab {
  topo: Topology;
  client: Namespace;
  lb: Namespace;
  backends: Namespace[];
  /** Backend i's address. */
  address(i: number): string;
  /** Runs one flow per source port from the client; returns source port → backend name ("timeout"/"error:…" on failure). */
  flows(protocol: "tcp" | "udp", ports: number[], opts?: { port?: number; concurrency?: number }): Promise<Map<number, string>>;
  /** Opens TCP connections from these source ports and keeps them open. */
  hold(ports: number[], port?: number): Promise<HeldFlows>;
  /** Every hold() not closed yet. */
  held: Set<HeldFlows>;
  destroy(): Promise<void>;
}

export async function createLab(n: number, opts: { backendRoute?: boolean } = {}): Promise<Lab> {
  const topo = await Topology.create();
  try {
    const client = await topo.namespace("client");
    const lb = await topo.namespace("lb");
    await topo.link(client, "eth0", lb, "c0", { aAddr: `${CLIENT}/24`, bAddr: "10.77.1.1/24" });
    await client.addRoute("default", "10.77.1.1");
    await topo.attach(lb, ["10.77.2.1/24"]);
    await lb.enableForwarding();
    const backends: Namespace[] = [];
    for (let i = 0; i < n; i++) {
      const b = await topo.namespace(`b${i}`);
      await topo.attach(b, [`10.77.2.${10 + i}/24`]);
      if (opts.backendRoute) await b.addRoute("default", "10.77.2.1");
      b.spawn(process.execPath, ["-e", BACKEND_JS, `b${i}`]);
      backends.push(b);
    }
    for (const b of backends) await waitFor(async () => (await b.run("ss", ["-ltnH", "sport = :8080"])).includes("8080"), { message: `backend ${b.name} listening` });
    const held = new Set<HeldFlows>();
    return {
      topo,
      client,
      lb,
      backends,
      address: (i) => `10.77.2.${10 + i}`,
      async flows(protocol, ports, o = {}) {
        const out = await client.run(process.execPath, ["-e", CLIENT_JS, protocol, VIP, String(o.port ?? 80), JSON.stringify(ports), String(o.concurrency ?? 50)], 120_000);
        const m = new Map<number, string>();
        for (const line of out.trim().split("\n")) {
          const sp = line.indexOf(" ");
          m.set(Number(line.slice(0, sp)), line.slice(sp + 1));
        }
        return m;
      },
      held,
      async hold(ports, port = 80) {
        const child = client.spawn(process.execPath, ["-e", HOLD_JS, VIP, String(port), JSON.stringify(ports)], { stdio: ["pipe", "pipe", "pipe"] });
        const last = new Map<number, string>();
        let lines = 0;
        let buf = "";
        child.stdout!.on("data", (d: Buffer) => {
          buf += d.toString();
          let nl = buf.indexOf("\n");
          while (nl >= 0) {
            const line = buf.slice(0, nl);
            buf = buf.slice(nl + 1);
            const sp = line.indexOf(" ");
            const p = Number(line.slice(0, sp));
            const prev = last.get(p);
            // A closed connection stays reported as closed, with the error that closed it if any.
            if (!(prev?.startsWith("error:") && line.endsWith(" closed"))) last.set(p, line.slice(sp + 1));
            lines++;
            nl = buf.indexOf("\n");
          }
        });
        const h: HeldFlows = {
          async ask() {
            const before = lines;
            const open = [...last.values()].filter((v) => !v.startsWith("error:") && v !== "closed").length;
            child.stdin!.write("?\n");
            await waitFor(() => lines - before >= open, { message: "held connections answered again", timeoutMs: 10_000 }).catch(() => {});
            return new Map(last);
          },
          close() {
            held.delete(h);
            if (!child.stdin!.writableEnded) child.stdin!.end();
          },
        };
        held.add(h);
        await waitFor(() => last.size === ports.length, { message: "held connections answered", timeoutMs: 30_000 });
        return h;
      },
      destroy: () => topo.destroy(),
    };
  } catch (err) {
    await topo.destroy();
    throw err;
  }
}

const keys = KeySchema.forCluster("lab");

/** A snapshot from service and backend records, through the real record parser and builder. */
export function labSnapshot(revision: number, services: Record<string, { service: Record<string, unknown>; backends: Record<string, Record<string, unknown>>; down?: string[] }>): Snapshot {
  const kvs = [];
  for (const [name, s] of Object.entries(services)) {
    kvs.push({ key: keys.service(name), value: Buffer.from(JSON.stringify(s.service)), modRevision: 1, lease: "0" });
    for (const [id, b] of Object.entries(s.backends)) kvs.push({ key: keys.backend(name, id), value: Buffer.from(JSON.stringify(b)), modRevision: 1, lease: "0" });
  }
  const table = new RecordTable(keys);
  table.reset(kvs, revision);
  const verdicts = new Map();
  for (const [name, s] of Object.entries(services)) for (const id of s.down ?? []) verdicts.set(`${name}/${id}`, { state: "down", since: 1, reason: "test", count: 3, checker: "t", source: "shared" });
  const snap = buildSnapshot(table.input(verdicts), new StatsRegistry());
  if (snap.invalid.length > 0) throw new Error(`invalid records: ${JSON.stringify(snap.invalid)}`);
  return snap;
}
