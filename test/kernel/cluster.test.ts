// Two Ballast nodes (real processes, each in its own namespace) sharing one etcd (in a namespace
// too), both programming the same NAT service: from the same revision they send a flow to the same
// backend, and an affinity entry learned by one node (from conntrack) reaches the other through
// etcd and keeps the client's backend after the first node is killed.
import type { ChildProcess } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { stringify } from "yaml";
import { type Namespace, netnsUnavailable, Topology } from "../helpers/netns.js";
import { CLI } from "../helpers/node.js";
import { waitFor } from "../helpers/wait.js";

const skip = netnsUnavailable();
const ETCD = "http://10.78.0.5:2379";
const VIP = "10.78.9.1";
const CLIENT = "10.78.0.2";
const NODES = [
  { id: "n1", address: "10.78.0.11" },
  { id: "n2", address: "10.78.0.12" },
];

const BACKEND_JS = `require("net").createServer((s) => { s.on("error", () => {}); s.end(process.argv[1] + "\\n"); }).listen(8080, "0.0.0.0");`;
/** One TCP flow per source port; prints "port backend". */
const FLOWS_JS = `
const net = require("net"); const ports = JSON.parse(process.argv[1]); const out = [];
Promise.all(ports.map((lp) => new Promise((res) => { const s = net.connect({ host: "${VIP}", port: 80, localPort: lp, localAddress: "${CLIENT}" }); let b = "";
  const t = setTimeout(() => { s.destroy(); res(lp + " timeout"); }, 5000);
  s.on("data", (d) => (b += d)); s.on("end", () => { clearTimeout(t); s.resetAndDestroy(); res(lp + " " + b.trim()); });
  s.on("error", (e) => { clearTimeout(t); res(lp + " error:" + e.code); }); }))).then((r) => process.stdout.write(r.join("\\n")));
`;

// biome-ignore lint/suspicious/noExplicitAny: JSON from the admin API, read field by field in assertions
type Json = any;

describe.skipIf(skip !== null)("two nodes, one etcd, forwarding: nat (namespaces)", { timeout: 180_000 }, () => {
  let topo: Topology;
  let client: Namespace;
  let etcdNs: Namespace;
  const nodeNs: Namespace[] = [];
  const procs: ChildProcess[] = [];
  const logs: string[][] = [[], []];
  const dirs: string[] = [];

  const etcdctl = (...args: string[]) => etcdNs.run("etcdctl", ["--endpoints", ETCD, ...args]);
  // The revision of the last routing record written (not the store's revision: node records and
  // affinity batches move that on without a new snapshot).
  const modRevision = async (key: string) => Number(JSON.parse(await etcdctl("get", key, "-w", "json")).kvs[0].mod_revision);
  const get = async (node: number, path: string): Promise<Json> =>
    JSON.parse(await client.run(process.execPath, ["-e", `fetch("http://${NODES[node].address}:9090${path}").then((r) => r.text()).then((t) => process.stdout.write(t))`]));
  const flows = async (ports: number[]) => {
    const out = await client.run(process.execPath, ["-e", FLOWS_JS, JSON.stringify(ports)], 60_000);
    return new Map(out.split("\n").map((l) => [Number(l.split(" ")[0]), l.split(" ")[1]] as const));
  };
  const via = async (node: number) => {
    await client.ip("route", "replace", `${VIP}/32`, "via", NODES[node].address);
  };
  const startNode = (i: number) => {
    const dir = mkdtempSync(join(tmpdir(), "ballast-nat-cluster-"));
    dirs.push(dir);
    const file = join(dir, "node.yaml");
    writeFileSync(file, stringify({ node: { id: NODES[i].id }, cluster: "natc", etcd: { endpoints: [ETCD], leaseTtl: 2 }, admin: { listen: `${NODES[i].address}:9090` }, log: { level: "info" }, affinity: { batchInterval: "50ms" } }));
    const child = nodeNs[i].spawn(process.execPath, [CLI, "node", "--config", file], { stdio: ["ignore", "pipe", "pipe"] });
    child.stdout!.on("data", (d: Buffer) => logs[i].push(d.toString()));
    child.stderr!.on("data", (d: Buffer) => logs[i].push(d.toString()));
    procs[i] = child;
  };
  const programmed = async (node: number, service: string, revision?: number) => {
    const st = await get(node, "/api/state");
    const s = (st.services as Json[]).find((x) => x.name === service);
    return s?.forwarding?.programmed === true && (revision === undefined || s.forwarding.revision >= revision);
  };

  beforeAll(async () => {
    topo = await Topology.create();
    client = await topo.namespace("client");
    await topo.attach(client, [`${CLIENT}/24`]);
    etcdNs = await topo.namespace("etcd");
    await topo.attach(etcdNs, ["10.78.0.5/24"]);
    const dataDir = mkdtempSync(join(tmpdir(), "ballast-nat-etcd-"));
    dirs.push(dataDir);
    etcdNs.spawn("etcd", ["--data-dir", dataDir, "--listen-client-urls", ETCD, "--advertise-client-urls", ETCD, "--listen-peer-urls", "http://10.78.0.5:2380", "--initial-advertise-peer-urls", "http://10.78.0.5:2380", "--initial-cluster", "default=http://10.78.0.5:2380", "--log-level", "error"]);
    for (let i = 0; i < 3; i++) {
      const b = await topo.namespace(`b${i}`);
      await topo.attach(b, [`10.78.0.2${i}/24`]);
      b.spawn(process.execPath, ["-e", BACKEND_JS, `b${i}`]);
    }
    for (const [i, n] of NODES.entries()) {
      const ns = await topo.namespace(n.id);
      await topo.attach(ns, [`${n.address}/24`]);
      await ns.enableForwarding();
      nodeNs[i] = ns;
    }
    await waitFor(async () => {
      await etcdctl("put", "/ballast/natc/services/web", JSON.stringify({ listen: `${VIP}:80`, forwarding: "nat", health: { type: "none" } }));
      return true;
    }, { timeoutMs: 20_000, message: "etcd accepts writes" });
    for (let i = 0; i < 3; i++) await etcdctl("put", `/ballast/natc/backends/web/b${i}`, `10.78.0.2${i}:8080`);
    startNode(0);
    startNode(1);
  }, 240_000);
  afterAll(async () => {
    await topo?.destroy();
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
  });

  it("from the same revision both nodes send every flow to the same backend", async () => {
    const rev = await modRevision("/ballast/natc/backends/web/b2");
    for (const i of [0, 1]) {
      await waitFor(() => programmed(i, "web", rev), { timeoutMs: 90_000, intervalMs: 300, message: `node ${i} programmed (log: ${logs[i].join("").slice(-500)})` });
    }
    const ports = Array.from({ length: 60 }, (_, i) => 26000 + i);
    await via(0);
    const one = await flows(ports);
    await via(1);
    const two = await flows(ports);
    expect([...one.values()].filter((b) => !/^b\d$/.test(b))).toEqual([]);
    expect(two).toEqual(one);
    expect(new Set(one.values()).size).toBe(3);
  }, 240_000);

  it("an affinity entry learned on one node reaches the other and keeps the client's backend after the first node dies", async () => {
    await etcdctl("put", "/ballast/natc/services/sticky", JSON.stringify({ listen: "10.78.9.2:80", forwarding: "nat", affinity: { mode: "source-ip", ttl: "10m" }, health: { type: "none" } }));
    for (let i = 0; i < 3; i++) await etcdctl("put", `/ballast/natc/backends/sticky/b${i}`, `10.78.0.2${i}:8080`);
    const rev = await modRevision("/ballast/natc/backends/sticky/b2");
    for (const i of [0, 1]) await waitFor(() => programmed(i, "sticky", rev), { timeoutMs: 90_000, intervalMs: 300, message: `node ${i} programmed sticky` });
    await client.ip("route", "replace", "10.78.9.2/32", "via", NODES[0].address);
    const script = FLOWS_JS.replaceAll(VIP, "10.78.9.2");
    const first = await client.run(process.execPath, ["-e", script, JSON.stringify([27000])]);
    const backend = first.split(" ")[1];
    expect(backend).toMatch(/^b\d$/);
    // Node 1 learned the client from conntrack; the entry travels through etcd to node 2.
    await waitFor(async () => (await get(1, `/api/route?service=sticky&client=${CLIENT}&port=0`)).reason?.startsWith("affinity (from node n1"), {
      timeoutMs: 20_000,
      intervalMs: 300,
      message: `node 2 sees node 1's entry (n1 log: ${logs[0].join("").slice(-800)})`,
    });
    expect((await get(1, `/api/route?service=sticky&client=${CLIENT}&port=0`)).backend.id).toBe(backend);
    procs[0].kill("SIGKILL");
    await client.ip("route", "replace", "10.78.9.2/32", "via", NODES[1].address);
    const after = await client.run(process.execPath, ["-e", script, JSON.stringify([27001, 27002, 27003])]);
    for (const line of after.split("\n")) expect(line.split(" ")[1]).toBe(backend);
  }, 240_000);
});
