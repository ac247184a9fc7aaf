// SIGTERM with UDP flows open: flows get a short grace (UDP_DRAIN_GRACE_MS), then end; the node exits
// once its TCP connections are done instead of waiting out the services' UDP idle timeout, and
// drainTimeout bounds how long a TCP connection may hold the exit.
import dgram from "node:dgram";
import net from "node:net";
import { afterEach, describe, expect, it } from "vitest";
import { closeAllBackends, startTcpEcho, startUdpEcho, udpExchange } from "../helpers/backends.js";
import { getJson, spawnNode, stopAllNodes } from "../helpers/node.js";
import { waitFor } from "../helpers/wait.js";

afterEach(async () => {
  await stopAllNodes();
  await closeAllBackends();
});

interface State {
  services: Array<{ name: string; boundPort: number; active: number }>;
}

describe("drain with UDP flows", () => {
  it("an idle UDP flow does not hold SIGTERM for the UDP idle timeout", async () => {
    const u = await startUdpEcho("u");
    // udpIdle and drainTimeout far longer than the deadline below: only the grace can explain an exit.
    const node = await spawnNode({
      drainTimeout: "120s",
      services: [{ name: "dns", listen: "127.0.0.1:0", protocol: "udp", timeouts: { udpIdle: "120s" }, health: { type: "none" }, backends: [{ id: "u", address: "127.0.0.1", port: u.port }] }],
    });
    await waitFor(async () => (await fetch(`http://${node.admin}/readyz`)).status === 200, { message: "node ready" });
    const port = (await getJson<State>(node.admin, "/api/state")).services[0].boundPort;
    const client = dgram.createSocket("udp4");
    expect(await udpExchange(port, "q", { socket: client })).toBe("u:q");
    node.kill("SIGTERM");
    const code = await Promise.race([node.exited, new Promise<string>((r) => setTimeout(() => r("still running"), 30_000).unref())]);
    expect(code).toBe(0);
    expect(node.logs.some((l) => l.includes('"stopped"') && l.includes('"remaining":0'))).toBe(true);
    client.close();
  }, 90_000);

  it("UDP flows end after the grace while an open TCP connection keeps the node draining; it exits when that ends", async () => {
    const u = await startUdpEcho("u");
    const t = await startTcpEcho("t", { prefix: false });
    const node = await spawnNode({
      drainTimeout: "120s",
      services: [
        { name: "dns", listen: "127.0.0.1:0", protocol: "udp", timeouts: { udpIdle: "120s" }, health: { type: "none" }, backends: [{ id: "u", address: "127.0.0.1", port: u.port }] },
        { name: "tcp", listen: "127.0.0.1:0", health: { type: "none" }, backends: [{ id: "t", address: "127.0.0.1", port: t.port }] },
      ],
    });
    await waitFor(async () => (await fetch(`http://${node.admin}/readyz`)).status === 200, { message: "node ready" });
    const state = await getJson<State>(node.admin, "/api/state");
    const udpPort = state.services.find((s) => s.name === "dns")!.boundPort;
    const tcpPort = state.services.find((s) => s.name === "tcp")!.boundPort;
    const client = dgram.createSocket("udp4");
    expect(await udpExchange(udpPort, "q", { socket: client })).toBe("u:q");
    const open = net.connect(tcpPort, "127.0.0.1");
    let got = "";
    open.on("data", (d) => (got += d));
    open.write("hi");
    await waitFor(() => got === "hi", { message: "the TCP connection works" });

    node.kill("SIGTERM");
    await waitFor(async () => {
      const s = await getJson<State>(node.admin, "/api/state");
      return s.services.find((x) => x.name === "dns")!.active === 0;
    }, { timeoutMs: 30_000, message: "the UDP flow to end after its grace" });
    expect(node.child.exitCode).toBeNull();
    open.write("still");
    await waitFor(() => got === "histill", { message: "the TCP connection still relays while draining" });
    open.end();
    expect(await node.exited).toBe(0);
    client.close();
  }, 90_000);

  it("drainTimeout bounds the wait: a TCP connection that never ends is cut when it passes", async () => {
    const t = await startTcpEcho("t", { prefix: false });
    const node = await spawnNode({ drainTimeout: "1s", services: [{ name: "tcp", listen: "127.0.0.1:0", health: { type: "none" }, backends: [{ id: "t", address: "127.0.0.1", port: t.port }] }] });
    await waitFor(async () => (await fetch(`http://${node.admin}/readyz`)).status === 200, { message: "node ready" });
    const port = (await getJson<State>(node.admin, "/api/state")).services[0].boundPort;
    const open = net.connect(port, "127.0.0.1");
    let got = "";
    open.on("data", (d) => (got += d));
    open.on("error", () => {});
    const closed = new Promise<void>((r) => open.on("close", () => r()));
    open.write("hi");
    await waitFor(() => got === "hi", { message: "the TCP connection works" });
    node.kill("SIGTERM");
    const code = await Promise.race([node.exited, new Promise<string>((r) => setTimeout(() => r("still running"), 30_000).unref())]);
    expect(code).toBe(0);
    expect(node.logs.some((l) => l.includes('"stopped"') && l.includes('"remaining":1'))).toBe(true);
    await closed;
  }, 90_000);
});
