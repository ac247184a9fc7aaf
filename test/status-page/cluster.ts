// The cluster the status page tests look at: real etcd, three real nodes with an admin token, real TCP
// backends (one draining, one disabled), two records an operator got wrong, and a bounded trickle of
// loopback traffic so rates and sparklines have something to draw. Also Chromium, launched as CI does.
import { type Browser, chromium } from "playwright-core";
import { KeySchema } from "../../shared/keys.js";
import type { BallastNode } from "../../node/node.js";
import { type Backend, closeAllBackends, startTcpEcho, tcpExchange } from "../helpers/backends.js";
import { type EtcdProcess, startEtcd } from "../helpers/etcd.js";
import { portOf, startNode, stopAllNodes } from "../helpers/node.js";
import { waitFor } from "../helpers/wait.js";

export const CLUSTER = "edge-eu";
export const TOKEN = "e2e-admin-token";
export const keys = KeySchema.forCluster(CLUSTER);

/** Debian's chromium package; playwright-core drives it and downloads nothing. */
export function launchChromium(): Promise<Browser> {
  return chromium.launch({
    executablePath: "/usr/bin/chromium",
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
}

// Fast checks so a killed backend is verdicted down within about a second.
const health = { type: "tcp", interval: "200ms", timeout: "200ms", rise: 1, fall: 2 };

export interface PageCluster {
  etcd: EtcdProcess;
  nodes: BallastNode[];
  backends: Record<string, Backend>;
  /** GET on a node's admin API with the token. */
  get<T>(node: BallastNode, path: string): Promise<T>;
  stop(): Promise<void>;
}

export async function startPageCluster(): Promise<PageCluster> {
  const etcd = await startEtcd();
  const backends: Record<string, Backend> = {};
  for (const name of ["w1", "w2", "w3", "w4", "a1", "a2", "m1"]) backends[name] = await startTcpEcho(name);
  const put = (key: string, value: unknown) => etcd.put(key, typeof value === "string" ? value : JSON.stringify(value));
  await put(keys.service("web"), { listen: "127.0.0.1:0", algorithm: "maglev", health });
  await put(keys.service("api"), { listen: "127.0.0.1:0", algorithm: "least-conn", affinity: { mode: "source-ip", ttl: "10m" }, health });
  await put(keys.service("mqtt"), { listen: "127.0.0.1:0", algorithm: "round-robin", health: { ...health, type: "none" } });
  const be = (name: string, extra: Record<string, unknown> = {}) => ({ address: "127.0.0.1", port: backends[name].port, ...extra });
  await put(keys.backend("web", "w1"), be("w1", { zone: "eu-1a", weight: 2 }));
  await put(keys.backend("web", "w2"), be("w2", { zone: "eu-1b", weight: 2 }));
  await put(keys.backend("web", "w3"), be("w3", { zone: "eu-1c" }));
  await put(keys.backend("web", "w4"), be("w4", { zone: "eu-1c", state: "drain" }));
  await put(keys.backend("api", "a1"), be("a1", { zone: "eu-1a" }));
  await put(keys.backend("api", "a2"), be("a2", { zone: "eu-1b" }));
  await put(keys.backend("mqtt", "m1"), be("m1", { zone: "eu-1a", state: "disabled" }));
  // Two records an operator got wrong: both must be listed with a reason, neither may break routing.
  await put(keys.backend("web", "typo"), "10.0.0.7");
  await put(keys.service("cache"), { listen: "127.0.0.1:0", algorithm: "fastest" });

  const nodes: BallastNode[] = [];
  for (const [id, zone] of [["n1", "eu-1a"], ["n2", "eu-1b"], ["n3", "eu-1c"]]) {
    nodes.push(
      await startNode({
        node: { id, zone },
        cluster: CLUSTER,
        etcd: { endpoints: [etcd.endpoint], leaseTtl: 2 },
        // The nodes' own admin host: the page sends them the token; any other address in a node record is not sent it.
        admin: { listen: "127.0.0.1:0", token: TOKEN, trustedPeers: ["127.0.0.1"] },
      }),
    );
  }
  await waitFor(() => nodes.every((n) => n.reconciler.nodes.size === 3), { message: "three node records on every node" });

  // A few connections a second to every node's web and api listeners, loopback only, bounded in time.
  let running = true;
  const deadline = Date.now() + 180_000;
  const traffic = (async () => {
    for (let i = 0; running && Date.now() < deadline; i++) {
      const node = nodes[i % nodes.length];
      // A killed backend's connect failures are part of what the page shows; the client may see errors.
      await tcpExchange(portOf(node, i % 3 === 0 ? "api" : "web"), `ping ${i}`, { timeoutMs: 2000 }).catch(() => {});
      // The rate swells and ebbs over 20 s, so sparklines have a shape to show.
      const swell = 0.5 + 0.5 * Math.sin((2 * Math.PI * (Date.now() % 20_000)) / 20_000);
      await new Promise((r) => setTimeout(r, 20 + 110 * swell));
    }
  })();

  return {
    etcd,
    nodes,
    backends,
    async get<T>(node: BallastNode, path: string): Promise<T> {
      const res = await fetch(`http://${node.admin.address}${path}`, { headers: { authorization: `Bearer ${TOKEN}` } });
      return (await res.json()) as T;
    },
    async stop() {
      running = false;
      await traffic;
      await stopAllNodes();
      await closeAllBackends();
      await etcd.stop();
    },
  };
}
