// Route explain on a running node is side-effect free: asking where a client would go never moves the
// next real pick (round-robin) and never creates an affinity entry.
import { afterEach, describe, expect, it } from "vitest";
import { closeAllBackends, startTcpEcho, tcpExchange } from "../helpers/backends.js";
import { portOf, startNode, stopAllNodes } from "../helpers/node.js";

afterEach(async () => {
  await stopAllNodes();
  await closeAllBackends();
});

async function explain(admin: string, client: string): Promise<{ backend: { id: string } | null; reason: string }> {
  return (await (await fetch(`http://${admin}/api/route?service=web&client=${client}`)).json()) as { backend: { id: string } | null; reason: string };
}

describe("route explain is pure", () => {
  it("with round-robin, any number of explains leave the next real connection where explain said", async () => {
    const a = await startTcpEcho("a");
    const b = await startTcpEcho("b");
    const c = await startTcpEcho("c");
    const node = await startNode({
      services: [{ name: "web", listen: "127.0.0.1:0", algorithm: "round-robin", health: { type: "none" }, backends: [{ id: "a", address: "127.0.0.1", port: a.port }, { id: "b", address: "127.0.0.1", port: b.port }, { id: "c", address: "127.0.0.1", port: c.port }] }],
    });
    const port = portOf(node, "web");
    const seen: string[] = [];
    for (let round = 0; round < 4; round++) {
      const first = await explain(node.admin.address, "127.0.0.1");
      // Explaining again (and for other clients) must give the same answer: nothing moved.
      expect((await explain(node.admin.address, "127.0.0.1")).backend?.id).toBe(first.backend?.id);
      expect((await explain(node.admin.address, "10.9.9.9")).backend?.id).toBe(first.backend?.id);
      const reply = await tcpExchange(port, "x");
      expect(reply).toBe(`${first.backend?.id}:x`);
      seen.push(first.backend!.id);
    }
    expect(seen).toEqual(["a", "b", "c", "a"]);
  });

  it("with affinity, explain neither records nor counts an entry", async () => {
    const a = await startTcpEcho("a");
    const b = await startTcpEcho("b");
    const node = await startNode({
      services: [{ name: "web", listen: "127.0.0.1:0", algorithm: "round-robin", affinity: { mode: "source-ip", ttl: "10m" }, health: { type: "none" }, backends: [{ id: "a", address: "127.0.0.1", port: a.port }, { id: "b", address: "127.0.0.1", port: b.port }] }],
    });
    const before = await (await fetch(`http://${node.admin.address}/metrics`)).text();
    for (let i = 0; i < 3; i++) expect((await explain(node.admin.address, "127.0.0.7")).backend?.id).toBe("a");
    expect(node.affinity.entries.table("web")?.size ?? 0).toBe(0);
    const after = await (await fetch(`http://${node.admin.address}/metrics`)).text();
    const lookups = (t: string) => t.split("\n").filter((l) => /^ballast_affinity_(hits|misses|expired|moved)_total/.test(l)).join("\n");
    expect(lookups(after)).toBe(lookups(before));
    // The real connection takes the explained backend and records the entry; explain then says affinity.
    expect(await tcpExchange(portOf(node, "web"), "x", { localAddress: "127.0.0.7" })).toBe("a:x");
    expect(node.affinity.entries.table("web")?.size).toBe(1);
    expect((await explain(node.admin.address, "127.0.0.7")).reason).toMatch(/^affinity/);
  });
});
