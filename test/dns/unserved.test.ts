// A node whose listener for a service failed to bind must not name itself in that service's DNS
// answers (clients sent there would be refused), on its own responder or any other node's; it stays
// in the answers of the services it does serve, and comes back once the bind succeeds on a retry.
import net from "node:net";
import { afterAll, describe, expect, it } from "vitest";
import type { EtcdProcess } from "../helpers/etcd.js";
import { startNode, stopAllNodes } from "../helpers/node.js";
import { useSharedEtcd } from "../helpers/suite.js";
import { waitFor } from "../helpers/wait.js";
import { dig } from "./dig.js";

let etcd: EtcdProcess;
useSharedEtcd((e) => {
  etcd = e;
});
afterAll(() => stopAllNodes());

const N1 = "127.0.0.71";
const N2 = "127.0.0.72";
const sorted = (xs: string[]) => [...xs].sort();

describe("DNS answers name only nodes that serve the service", () => {
  it("a node whose listener failed to bind is left out of that name's answers, on every node, until it binds", { timeout: 60_000 }, async () => {
    const p = "/ballast/dnsunserved/";
    // Holds web's port on n2's address: n2's listener for web fails with EADDRINUSE, n1's binds.
    const blocker = net.createServer();
    const port = await new Promise<number>((r) => blocker.listen(0, N2, () => r((blocker.address() as net.AddressInfo).port)));
    await etcd.put(`${p}services/web`, JSON.stringify({ listen: `127.0.0.1:${port}`, health: { type: "none" } }));
    await etcd.put(`${p}services/api`, JSON.stringify({ listen: "127.0.0.1:0", health: { type: "none" } }));
    await etcd.put(`${p}backends/web/b`, "127.0.0.1:9");
    await etcd.put(`${p}dns`, JSON.stringify({ zone: "lb.test", ttl: 1 }));
    const config = (id: string, ip: string) => ({
      node: { id, publicAddresses: [ip], bindAddress: ip },
      cluster: "dnsunserved",
      etcd: { endpoints: [etcd.endpoint], leaseTtl: 5 },
      dns: { listen: `${ip}:0`, rrl: { responsesPerSecond: 0 } },
    });
    const n1 = await startNode(config("n1", N1));
    const n2 = await startNode(config("n2", N2));
    expect(n2.plane.listenerOf("web")?.error).toContain("EADDRINUSE");
    expect(n2.ready, "one unbound service does not make the node unready").toBe(true);

    const answers = async (ip: string, port: number, name: string) => sorted((await dig(port, name, "A", [], ip)).answers);
    const servers: Array<[string, number]> = [
      [N1, n1.dns!.responder.port],
      [N2, n2.dns!.responder.port],
    ];
    // Both nodes are live: api names both once both records are in; web names only n1, on both responders.
    for (const [ip, dnsPort] of servers) {
      await waitFor(async () => (await answers(ip, dnsPort, "api.lb.test")).length === 2, { timeoutMs: 15_000, message: `${ip} names both nodes for api` });
      expect(await answers(ip, dnsPort, "web.lb.test"), `${ip} answers web`).toEqual([N1]);
    }
    expect(n1.reconciler.nodes.get("n2")?.unserved).toEqual(["web"]);
    const view = n1.dns!.describe();
    expect(view.nodes.find((x) => x.id === "n2")).toMatchObject({ live: true, unserved: ["web"] });

    // The port frees up; the next snapshot retries the bind, and n2 is named for web again everywhere.
    await new Promise<void>((r) => blocker.close(() => r()));
    await etcd.put(`${p}backends/web/b`, JSON.stringify({ address: "127.0.0.1", port: 9, weight: 2 }));
    await waitFor(() => n2.plane.listenerOf("web")?.error === null, { timeoutMs: 15_000, message: "n2 binds web on retry" });
    for (const [ip, dnsPort] of servers) {
      await waitFor(async () => (await answers(ip, dnsPort, "web.lb.test")).length === 2, { timeoutMs: 15_000, message: `${ip} names n2 for web again` });
    }
    expect(n1.reconciler.nodes.get("n2")?.unserved).toEqual([]);
  });
});
