// `npm run demo -- --nat` (root): kernel forwarding in network namespaces made for the demo — a
// client, a Ballast node (standalone YAML, one `forwarding: nat` service) and three backends on a
// bridge — and instructions. Nothing is changed in the host's own namespace; Ctrl-C removes it all.
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { stringify } from "yaml";
import { netnsUnavailable, Topology } from "../test/helpers/netns.js";

const repo = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
const CLI = join(repo, "dist/node/cli.js");
const BACKEND = join(repo, "deploy/demo-backend.mjs");
const VIP = "10.88.0.100";
const ADMIN = "10.88.1.1:9090";

export async function runNatDemo(): Promise<void> {
  const why = netnsUnavailable();
  if (why) {
    console.error(`the NAT demo ${why} (it creates network namespaces and programs nftables inside them): sudo npm run demo -- --nat`);
    process.exit(1);
  }
  const topo = await Topology.create();
  const stop = async (code: number) => {
    console.log("\nstopping the NAT demo (removing its namespaces) …");
    await topo.destroy();
    process.exit(code);
  };
  process.on("SIGINT", () => void stop(0));
  process.on("SIGTERM", () => void stop(0));
  try {
    const client = await topo.namespace("client");
    const node = await topo.namespace("node");
    await topo.link(client, "eth0", node, "c0", { aAddr: "10.88.1.2/24", bAddr: "10.88.1.1/24" });
    await client.addRoute("default", "10.88.1.1");
    await topo.attach(node, ["10.88.2.1/24"]);
    await node.enableForwarding();
    const backends = [];
    for (let i = 1; i <= 3; i++) {
      const b = await topo.namespace(`b${i}`);
      await topo.attach(b, [`10.88.2.1${i}/24`]);
      b.spawn(process.execPath, [BACKEND], { env: { ...process.env, NAME: `backend-${i}`, PORT: "8080" }, stdio: "ignore" });
      backends.push({ id: `b${i}`, address: `10.88.2.1${i}`, port: 8080 });
    }
    const dir = mkdtempSync(join(tmpdir(), "ballast-demo-nat-"));
    const file = join(dir, "node.yaml");
    writeFileSync(
      file,
      stringify({
        node: { id: "nat-node" },
        cluster: "demo-nat",
        admin: { listen: ADMIN },
        log: { level: "info" },
        services: [{ name: "web", listen: `${VIP}:80`, forwarding: "nat", health: { type: "http", interval: "1s", http: { path: "/" } }, backends }],
      }),
    );
    const log = join(dir, "node.log");
    const child = node.spawn(process.execPath, [CLI, "node", "--config", file], { stdio: ["ignore", "pipe", "pipe"] });
    const out = (d: Buffer) => writeFileSync(log, d, { flag: "a" });
    child.stdout!.on("data", out);
    child.stderr!.on("data", out);
    const deadline = Date.now() + 20_000;
    for (;;) {
      const r = await client.exec(process.execPath, ["-e", `fetch("http://${ADMIN}/api/state").then((r) => r.json()).then((j) => process.exit(j.services[0]?.forwarding?.programmed ? 0 : 1), () => process.exit(1))`]);
      if (r.code === 0) break;
      if (Date.now() > deadline) throw new Error(`the node did not program its NAT service; see ${log}`);
      await new Promise((r) => setTimeout(r, 300));
    }
    const inNs = (ns: { name: string }) => `ip netns exec ${ns.name}`;
    console.log(`
Ballast NAT demo is up, in namespaces ${topo.id}-*: a client (10.88.1.2), a node (10.88.1.1; admin ${ADMIN}),
backends 10.88.2.11-13 behind it. Service "web" is ${VIP}:80 with forwarding: nat — the kernel forwards.

  Traffic from the client (the backends see the node's address: full NAT):
    ${inNs(client)} curl -s http://${VIP}/
  The kernel's choice for a flow, computed in TypeScript:
    ${inNs(client)} curl -s 'http://${ADMIN}/api/route?service=web&client=10.88.1.2&port=40000'
  The table the node programmed, and tracked flows:
    ${inNs(node)} nft list table inet ballast_demo_nat
    ${inNs(node)} conntrack -L -d ${VIP}
  State, metrics:
    ${inNs(client)} curl -s http://${ADMIN}/api/state
    ${inNs(client)} curl -s http://${ADMIN}/metrics | grep ballast_kernel
  Fail-static: kill the node (kill -9 ${child.pid}); curl keeps working. Remove the table:
    ${inNs(node)} node ${CLI} node --config ${file} --flush
  Node log: ${log}

Ctrl-C stops everything and removes the namespaces.`);
  } catch (err) {
    console.error(`NAT demo failed: ${(err as Error).message}`);
    await stop(1);
  }
}
