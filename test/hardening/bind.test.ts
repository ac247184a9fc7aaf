// Issue 13 (part A), finding 3: one service this node cannot bind must not make the node unready
// (anycast would withdraw every VIP of the node). The failure is reported for that service: state,
// metric, invalid list; the node stays ready for what it serves, and the bind is retried.
import net from "node:net";
import { afterEach, describe, expect, it } from "vitest";
import { closeAllBackends, startTcpEcho, tcpExchange } from "../helpers/backends.js";
import { portOf, startNode, stopAllNodes } from "../helpers/node.js";
import { waitFor } from "../helpers/wait.js";

afterEach(async () => {
  await stopAllNodes();
  await closeAllBackends();
});

describe("a service that cannot bind", () => {
  it("is reported for that service while the node stays ready for the others, and binds once it can", async () => {
    const a = await startTcpEcho("a");
    const blocker = net.createServer();
    const taken = await new Promise<number>((r) => blocker.listen(0, "127.0.0.1", () => r((blocker.address() as net.AddressInfo).port)));
    const backend = { id: "a", address: "127.0.0.1", port: a.port };
    const node = await startNode({
      services: [
        { name: "web", listen: "127.0.0.1:0", health: { type: "none" }, backends: [backend] },
        { name: "blocked", listen: `127.0.0.1:${taken}`, health: { type: "none" }, backends: [backend] },
      ],
    });
    expect(node.plane.listenerOf("blocked")?.error).toContain("EADDRINUSE");
    expect(node.ready).toBe(true);
    expect((await fetch(`http://${node.admin.address}/readyz`)).status).toBe(200);
    expect(await tcpExchange(portOf(node, "web"), "x")).toBe("a:x");

    const state = (await (await fetch(`http://${node.admin.address}/api/state`)).json()) as { invalid: Array<{ key: string; reason: string }> };
    expect(state.invalid).toEqual([{ key: node.keys.service("blocked"), reason: expect.stringContaining("EADDRINUSE") }]);
    const metrics = await (await fetch(`http://${node.admin.address}/metrics`)).text();
    expect(metrics).toMatch(/ballast_service_listening\{service="blocked",node="[^"]*"\} 0/);
    expect(metrics).toMatch(/ballast_service_listening\{service="web",node="[^"]*"\} 1/);

    // The address frees up; the next snapshot retries the bind.
    await new Promise<void>((r) => blocker.close(() => r()));
    await node.store.put(node.keys.backend("blocked", "a"), JSON.stringify({ ...backend, weight: 2 }));
    await waitFor(() => node.plane.listenerOf("blocked")?.error === null && node.plane.listenerOf("blocked")?.boundPort === taken, { message: "blocked binds on retry" });
    expect(await tcpExchange(taken, "y")).toBe("a:y");
  });

  it("a node none of whose services can bind is not ready", async () => {
    const blocker = net.createServer();
    const taken = await new Promise<number>((r) => blocker.listen(0, "127.0.0.1", () => r((blocker.address() as net.AddressInfo).port)));
    try {
      const node = await startNode({ services: [{ name: "blocked", listen: `127.0.0.1:${taken}`, health: { type: "none" }, backends: [] }] });
      expect(node.ready).toBe(false);
    } finally {
      blocker.close();
    }
  });
});
