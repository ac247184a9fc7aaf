// Weight 0 with affinity means what drain means (docs/keys.md): no new clients; a client with a live
// affinity entry keeps its backend until the entry expires (TTL since its last use).
import { afterEach, describe, expect, it } from "vitest";
import { closeAllBackends, startTcpEcho, tcpExchange } from "../helpers/backends.js";
import { portOf, startNode, stopAllNodes } from "../helpers/node.js";
import { waitFor } from "../helpers/wait.js";

afterEach(async () => {
  await stopAllNodes();
  await closeAllBackends();
});

describe("weight 0 with affinity", () => {
  it("takes no new clients; a pinned client keeps it until its entry expires", async () => {
    const a = await startTcpEcho("a");
    const b = await startTcpEcho("b");
    const node = await startNode({
      services: [{ name: "web", listen: "127.0.0.1:0", algorithm: "round-robin", affinity: { mode: "source-ip", ttl: "1500ms" }, health: { type: "none" }, backends: [{ id: "a", address: "127.0.0.1", port: a.port }, { id: "b", address: "127.0.0.1", port: b.port }] }],
    });
    const port = portOf(node, "web");
    expect(await tcpExchange(port, "x", { localAddress: "127.0.0.7" })).toBe("a:x");

    await node.store.put(node.keys.backend("web", "a"), JSON.stringify({ address: "127.0.0.1", port: a.port, weight: 0 }));
    await waitFor(() => node.plane.current?.services.get("web")?.targets.length === 1, { message: "weight 0 applied" });

    // The pinned client stays on a; every new client goes to b.
    expect(await tcpExchange(port, "x", { localAddress: "127.0.0.7" })).toBe("a:x");
    for (const ip of ["127.0.0.8", "127.0.0.9", "127.0.0.10", "127.0.0.11"]) expect(await tcpExchange(port, "x", { localAddress: ip })).toBe("b:x");
    const explained = (await (await fetch(`http://${node.admin.address}/api/route?service=web&client=127.0.0.7`)).json()) as { backend: { id: string }; reason: string };
    expect(explained).toMatchObject({ backend: { id: "a" }, reason: expect.stringMatching(/^affinity/) });

    // Once the entry has expired (no use for longer than the TTL), the client is a new client: b.
    await waitFor(
      async () => (await (await fetch(`http://${node.admin.address}/api/route?service=web&client=127.0.0.7`)).json() as { backend: { id: string } }).backend.id === "b",
      { timeoutMs: 15_000, message: "the entry to expire" },
    );
    expect(await tcpExchange(port, "x", { localAddress: "127.0.0.7" })).toBe("b:x");
  });
});
