// The UDP data plane over real loopback sockets: flows per client, replies from the service port,
// idle expiry, undeliverable datagrams counted.
import dgram from "node:dgram";
import { afterEach, describe, expect, it } from "vitest";
import { closeAllBackends, startUdpEcho, udpExchange } from "../helpers/backends.js";
import { portOf, startNode, stopAllNodes } from "../helpers/node.js";
import { waitFor } from "../helpers/wait.js";

afterEach(async () => {
  await stopAllNodes();
  await closeAllBackends();
});

describe("udp proxy", () => {
  it("keeps a flow per client and answers from the service address", async () => {
    const a = await startUdpEcho("a");
    const b = await startUdpEcho("b");
    const node = await startNode({
      services: [{ name: "dns", listen: "127.0.0.1:0", protocol: "udp", health: { type: "none" }, backends: [{ id: "a", address: "127.0.0.1", port: a.port }, { id: "b", address: "127.0.0.1", port: b.port }] }],
    });
    const port = portOf(node, "dns");
    const clients = [0, 1, 2, 3].map(() => dgram.createSocket("udp4"));
    const seen = new Map<number, string>();
    for (let round = 0; round < 3; round++) {
      for (const [i, c] of clients.entries()) {
        const replyFrom = new Promise<dgram.RemoteInfo>((r) => c.once("message", (_m, rinfo) => r(rinfo)));
        const reply = await udpExchange(port, `q${round}`, { socket: c });
        expect((await replyFrom).port).toBe(port);
        const backend = reply.split(":")[0];
        // Every datagram of one client goes to the same backend (its flow).
        if (round === 0) seen.set(i, backend);
        else expect(backend).toBe(seen.get(i));
        expect(reply).toBe(`${backend}:q${round}`);
      }
    }
    expect(new Set(seen.values()).size).toBe(2);
    expect(node.plane.stats.service("dns").udpFlows).toBe(4);
    for (const c of clients) c.close();
  });

  it("expires idle flows and counts datagrams it cannot deliver", async () => {
    const a = await startUdpEcho("a");
    const node = await startNode({
      services: [
        { name: "u", listen: "127.0.0.1:0", protocol: "udp", health: { type: "none" }, timeouts: { udpIdle: "200ms" }, backends: [{ id: "a", address: "127.0.0.1", port: a.port }] },
        { name: "empty", listen: "127.0.0.1:0", protocol: "udp", health: { type: "none" }, backends: [] },
      ],
    });
    expect(await udpExchange(portOf(node, "u"), "x")).toBe("a:x");
    expect(node.plane.stats.service("u").active).toBe(1);
    await waitFor(() => node.plane.stats.service("u").active === 0, { message: "idle flow expires" });
    const s = dgram.createSocket("udp4");
    s.send("lost", portOf(node, "empty"), "127.0.0.1");
    await waitFor(() => node.plane.stats.service("empty").udpDropped === 1);
    expect(node.plane.stats.service("empty").refused["no-backend"]).toBe(1);
    s.close();
  });
});
