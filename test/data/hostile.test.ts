// Broken and hostile clients must never crash a node or leak its counters: resets before the
// backend answers, clients vanishing mid-connect, empty and maximum-size datagrams, floods of
// connections to a service with no backend.
import dgram from "node:dgram";
import net from "node:net";
import { afterEach, describe, expect, it } from "vitest";
import { closeAllBackends, startTcpEcho, startUdpEcho, tcpExchange, udpExchange } from "../helpers/backends.js";
import { portOf, startNode, stopAllNodes } from "../helpers/node.js";
import { waitFor } from "../helpers/wait.js";

afterEach(async () => {
  await stopAllNodes();
  await closeAllBackends();
});

describe("hostile and broken clients", () => {
  it("survives resets at every stage and returns every counter to zero", async () => {
    const echo = await startTcpEcho("a");
    // A backend that accepts but never reads: the connect succeeds, the relay stalls.
    const silent = net.createServer(() => {});
    await new Promise<void>((r) => silent.listen(0, "127.0.0.1", () => r()));
    const node = await startNode({
      services: [
        { name: "echo", listen: "127.0.0.1:0", health: { type: "none" }, backends: [{ id: "a", address: "127.0.0.1", port: echo.port }] },
        // A client that half-closed towards a backend that never answers stays open (it may still
        // read) until the idle timeout: short here, so the test sees the reaping.
        { name: "silent", listen: "127.0.0.1:0", health: { type: "none" }, timeouts: { idle: "300ms" }, backends: [{ id: "s", address: "127.0.0.1", port: (silent.address() as net.AddressInfo).port }] },
        { name: "none", listen: "127.0.0.1:0", health: { type: "none" }, backends: [] },
      ],
    });
    const hits: Promise<void>[] = [];
    for (const svc of ["echo", "silent", "none"]) {
      for (let i = 0; i < 30; i++) {
        hits.push(
          new Promise<void>((resolve) => {
            const s = net.connect(portOf(node, svc), "127.0.0.1");
            s.on("error", () => resolve());
            s.on("close", () => resolve());
            // Reset at once, after a write, or after a partial write mid-stream.
            s.on("connect", () => {
              if (i % 3 === 0) s.resetAndDestroy();
              else if (i % 3 === 1) s.write("x".repeat(100_000), () => s.resetAndDestroy());
              else {
                s.write("partial");
                setImmediate(() => s.destroy());
              }
            });
          }),
        );
      }
    }
    await Promise.all(hits);
    await waitFor(() => node.plane.active === 0, { timeoutMs: 5000, message: "every connection accounted for" }).catch((e) => {
      throw new Error(`${e.message}: ${JSON.stringify([...node.plane.stats.services.values()].map((c) => [c.service, c.active]))} ${JSON.stringify([...node.plane.stats.backends.values()].map((c) => [c.id, c.active, c.open.size]))}`);
    });
    for (const b of node.plane.stats.backends.values()) expect(b.active, `${b.service}/${b.id}`).toBe(0);
    // A client reset before the accept is handled has no address to admit: it is dropped uncounted.
    const refused = node.plane.stats.service("none").refused["no-backend"];
    expect(refused).toBeGreaterThan(0);
    expect(refused).toBeLessThanOrEqual(30);
    // Still serving.
    expect(await tcpExchange(portOf(node, "echo"), "alive")).toBe("a:alive");
    silent.close();
  });

  it("relays empty and maximum-size datagrams and ignores datagrams after a flow's backend vanished", async () => {
    const a = await startUdpEcho("a");
    const node = await startNode({ services: [{ name: "u", listen: "127.0.0.1:0", protocol: "udp", health: { type: "none" }, backends: [{ id: "a", address: "127.0.0.1", port: a.port }] }] });
    const port = portOf(node, "u");
    expect(await udpExchange(port, "")).toBe("a:");
    const s = dgram.createSocket("udp4");
    const big = Buffer.alloc(65_000, 1);
    s.send(big, port, "127.0.0.1");
    // Relayed to the backend (whose reply, 2 bytes larger, may not fit a datagram: that is its problem).
    await waitFor(() => a.hits === 2, { message: "the 65,000-byte datagram reaches the backend" });
    await a.close();
    for (let i = 0; i < 20; i++) s.send(`after ${i}`, port, "127.0.0.1");
    await waitFor(() => node.plane.stats.service("u").udpDatagramsIn >= 22, { message: "datagrams after the backend died are received and counted" });
    s.close();
    expect(node.ready).toBe(true);
  });
});
