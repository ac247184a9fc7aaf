// Issue 13 (part A): hostile or unlucky UDP traffic — spoofed sources (port 0, a backend's own
// address, a broadcast address), listeners that move or go away with flows open, sends the kernel
// refuses. Spoofed datagrams are real packets on loopback (test/helpers/spoof.ts).
import dgram from "node:dgram";
import { afterEach, describe, expect, it } from "vitest";
import type { UdpListener } from "../../node/data/udp.js";
import { closeAllBackends, startUdpEcho, udpExchange } from "../helpers/backends.js";
import { portOf, startNode, stopAllNodes } from "../helpers/node.js";
import { spoofUdp } from "../helpers/spoof.js";
import { waitFor } from "../helpers/wait.js";

afterEach(async () => {
  await stopAllNodes();
  await closeAllBackends();
});

const udpService = (name: string, port: number, extra: Record<string, unknown> = {}) => ({
  name,
  listen: "127.0.0.1:0",
  protocol: "udp",
  health: { type: "none" },
  backends: [{ id: "a", address: "127.0.0.1", port }],
  ...extra,
});

/** Collects exceptions nothing caught (a throw from a socket handler), so a test can assert there were none. */
function watchUncaught(): { errors: unknown[]; stop(): void } {
  const errors: unknown[] = [];
  const on = (err: unknown) => errors.push(err);
  process.on("uncaughtException", on);
  return { errors, stop: () => process.off("uncaughtException", on) };
}

describe("spoofed UDP sources", () => {
  it("drops and counts a datagram from source port 0 (finding 6)", async () => {
    const a = await startUdpEcho("a");
    const node = await startNode({ services: [udpService("u", a.port)] });
    const uncaught = watchUncaught();
    try {
      await spoofUdp({ srcAddress: "127.0.0.1", srcPort: 0, dstPort: portOf(node, "u"), payload: "spoof" });
      const c = node.plane.stats.service("u");
      await waitFor(() => c.udpDiscarded["source-port-0"] === 1, { timeoutMs: 10_000, message: "the port-0 datagram is discarded" });
      expect(c.udpDropped).toBe(1);
      // The service keeps working for real clients, and the backend never saw the spoofed datagram.
      expect(await udpExchange(portOf(node, "u"), "q")).toBe("a:q");
      expect(a.hits).toBe(1);
      expect(uncaught.errors).toEqual([]);
    } finally {
      uncaught.stop();
    }
  });

  it("drops a datagram spoofed from a backend's own address:port instead of looping (finding 13)", async () => {
    const a = await startUdpEcho("a");
    const node = await startNode({ services: [udpService("u", a.port)] });
    await spoofUdp({ srcAddress: "127.0.0.1", srcPort: a.port, dstPort: portOf(node, "u"), payload: "loop" });
    const c = node.plane.stats.service("u");
    // Before the fix the echo bounced between node and backend until the datagram outgrew 64 KiB.
    await waitFor(() => c.udpDiscarded.loop === 1, { timeoutMs: 10_000, message: "the looping datagram is discarded" });
    expect(await udpExchange(portOf(node, "u"), "q")).toBe("a:q");
    expect(a.hits).toBe(1);
    expect(c.udpDatagramsOut).toBe(1);
  });

  it("drops a datagram from the node's own listener (finding 13)", async () => {
    const a = await startUdpEcho("a");
    const node = await startNode({ services: [udpService("u", a.port)] });
    const port = portOf(node, "u");
    await spoofUdp({ srcAddress: "127.0.0.1", srcPort: port, dstPort: port, payload: "self" });
    const c = node.plane.stats.service("u");
    await waitFor(() => c.udpDiscarded.loop === 1, { timeoutMs: 10_000, message: "the self-sourced datagram is discarded" });
    expect(a.hits).toBe(0);
  });

  it("counts a reply the kernel refuses to send, and the node stays ready (finding 18)", async () => {
    const a = await startUdpEcho("a");
    const node = await startNode({ services: [udpService("u", a.port)] });
    // A client "at" lo's broadcast address: the reply send fails with EACCES (no SO_BROADCAST).
    await spoofUdp({ srcAddress: "127.255.255.255", srcPort: 5353, dstPort: portOf(node, "u"), payload: "b" });
    const c = node.plane.stats.service("u");
    await waitFor(() => c.udpDiscarded["send-error"] === 1, { timeoutMs: 10_000, message: "the refused reply is counted" });
    expect(a.hits).toBe(1);
    expect(node.plane.listenerOf("u")?.error).toBeNull();
    expect(node.ready).toBe(true);
    expect(await udpExchange(portOf(node, "u"), "q")).toBe("a:q");
  });
});

describe("UDP listeners that move or go away (finding 7)", () => {
  /** A backend that answers each datagram once, after `delayMs` (a slow DNS server). */
  async function slowEcho(delayMs: number): Promise<{ port: number; received: number; sent: number; close(): void }> {
    const sock = dgram.createSocket("udp4");
    const b = { port: 0, received: 0, sent: 0, close: () => sock.close() };
    sock.on("message", (msg, rinfo) => {
      b.received++;
      setTimeout(() => sock.send(msg, rinfo.port, rinfo.address, () => b.sent++), delayMs);
    });
    b.port = await new Promise<number>((r) => sock.bind(0, "127.0.0.1", () => r(sock.address().port)));
    return b;
  }

  it.each([{ change: "removed" }, { change: "moved to another port" }])("ends the flows of a listener that is $change; a late reply throws nothing", async ({ change }) => {
    const b = await slowEcho(300);
    const node = await startNode({ services: [udpService("u", b.port, { timeouts: { udpIdle: "10m" } })] });
    const before = node.plane.listenerOf("u") as UdpListener;
    const client = dgram.createSocket("udp4");
    const uncaught = watchUncaught();
    try {
      client.send("q", before.boundPort, "127.0.0.1");
      await waitFor(() => b.received === 1, { message: "the backend got the datagram" });
      expect(before.flows.size).toBe(1);
      if (change === "removed") await node.store.delete(node.keys.service("u"));
      else await node.store.put(node.keys.service("u"), JSON.stringify({ listen: "127.0.0.2:0", protocol: "udp", health: { type: "none" }, timeouts: { udpIdle: "10m" } }));
      await waitFor(() => node.plane.listenerOf("u") !== before, { message: "the old listener is gone" });
      // The flow ended with its listener (before the fix it stayed, unswept, holding its socket).
      expect(before.flows.size).toBe(0);
      expect(node.plane.stats.service("u").active).toBe(0);
      // The backend's late reply goes to the flow's upstream port; give the node a moment to have
      // received it, were that socket still open (before the fix: a throw from the reply handler).
      await waitFor(() => b.sent === 1, { message: "the backend replied" });
      await new Promise((r) => setTimeout(r, 100));
      expect(uncaught.errors).toEqual([]);
    } finally {
      uncaught.stop();
      client.close();
      b.close();
    }
  });
});

describe("a flow whose upstream socket cannot be made", () => {
  it("leaves the flow table at once with its queued datagrams counted, not held until the idle sweep (finding 1)", async () => {
    // connect() of a UDP socket to the broadcast address fails (EACCES: no SO_BROADCAST) before any
    // datagram is sent: the same path as a socket the node could not make (EMFILE, ENOBUFS).
    const node = await startNode({
      services: [{ ...udpService("u", 9), backends: [{ id: "bcast", address: "255.255.255.255", port: 9 }], timeouts: { udpIdle: "5m" } }],
    });
    const listener = node.plane.listenerOf("u") as UdpListener;
    const client = dgram.createSocket("udp4");
    try {
      await new Promise<void>((r) => client.bind(0, "127.0.0.1", () => r()));
      for (let i = 0; i < 3; i++) client.send(`q${i}`, portOf(node, "u"), "127.0.0.1");
      const c = node.plane.stats.service("u");
      await waitFor(() => c.udpDiscarded["no-socket"] >= 1, { timeoutMs: 10_000, message: "the failed flow's datagrams are discarded as no-socket" });
      // Before the fix the flow stayed in the table (one fd, its queue) for the whole udpIdle.
      await waitFor(() => listener.flows.size === 0, { timeoutMs: 5_000, message: "the flow left the table" });
      expect(c.active).toBe(0);
    } finally {
      client.close();
    }
  });
});
