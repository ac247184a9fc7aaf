// The node as operators run it: a child process of the compiled CLI. SIGTERM drains (open
// connections finish, new ones are refused, /readyz goes 503 first); the admin API explains and counts.
import net from "node:net";
import { afterEach, describe, expect, it } from "vitest";
import { closeAllBackends, startTcpEcho, tcpExchange } from "../helpers/backends.js";
import { getJson, portOf, spawnNode, startNode, stopAllNodes } from "../helpers/node.js";
import { waitFor } from "../helpers/wait.js";

afterEach(async () => {
  await stopAllNodes();
  await closeAllBackends();
});

describe("node lifecycle and admin API", () => {
  it("drains on SIGTERM: not ready, new connections refused, the open one finishes, exit 0", async () => {
    const a = await startTcpEcho("a", { prefix: false });
    const node = await spawnNode({ drainTimeout: "20s", services: [{ name: "echo", listen: "127.0.0.1:0", health: { type: "none" }, backends: [{ id: "a", address: "127.0.0.1", port: a.port }] }] });
    await waitFor(async () => (await fetch(`http://${node.admin}/readyz`)).status === 200, { message: "node ready" });
    const state = await getJson<{ services: Array<{ boundPort: number }> }>(node.admin, "/api/state");
    const port = state.services[0].boundPort;
    const open = net.connect(port, "127.0.0.1");
    let got = "";
    open.on("data", (d) => (got += d));
    open.write("before");
    await waitFor(() => got === "before");

    node.kill("SIGTERM");
    await waitFor(async () => (await fetch(`http://${node.admin}/readyz`).catch(() => null))?.status === 503, { message: "readyz 503 while draining" });
    await expect(tcpExchange(port, "new")).rejects.toThrow();
    open.write("after");
    await waitFor(() => got === "beforeafter", { message: "the open connection still works while draining" });
    open.end();
    expect(await node.exited).toBe(0);
  });

  it("with withdrawDelay, keeps accepting while /readyz already says 503 (anycast withdraws first)", async () => {
    const a = await startTcpEcho("a");
    const node = await spawnNode({ withdrawDelay: "3s", drainTimeout: "1s", services: [{ name: "echo", listen: "127.0.0.1:0", health: { type: "none" }, backends: [{ id: "a", address: "127.0.0.1", port: a.port }] }] });
    await waitFor(async () => (await fetch(`http://${node.admin}/readyz`)).status === 200);
    const port = (await getJson<{ services: Array<{ boundPort: number }> }>(node.admin, "/api/state")).services[0].boundPort;
    node.kill("SIGTERM");
    await waitFor(async () => (await fetch(`http://${node.admin}/readyz`)).status === 503, { message: "readyz 503 at once" });
    expect(await tcpExchange(port, "late")).toBe("a:late");
    expect(await node.exited).toBe(0);
  });

  it("explains a route and counts traffic in /metrics; a token guards everything but probes", async () => {
    const a = await startTcpEcho("a");
    const b = await startTcpEcho("b");
    const node = await startNode({
      admin: { listen: "127.0.0.1:0", token: "s3cret" },
      services: [{ name: "web", listen: "127.0.0.1:0", algorithm: "source-ip", health: { type: "none" }, backends: [{ id: "a", address: "127.0.0.1", port: a.port }, { id: "b", address: "127.0.0.1", port: b.port }] }],
    });
    const admin = `http://${node.admin.address}`;
    const auth = { headers: { authorization: "Bearer s3cret" } };
    expect((await fetch(`${admin}/api/state`)).status).toBe(401);
    expect((await fetch(`${admin}/healthz`)).status).toBe(200);
    expect((await fetch(`${admin}/readyz`)).status).toBe(200);

    const explain = (await (await fetch(`${admin}/api/route?service=web&client=127.0.0.9`, auth)).json()) as { backend: { id: string }; reason: string };
    expect(explain.reason).toBe("source-ip");
    // The explained backend is the one a real connection from that client gets.
    const reply = await tcpExchange(portOf(node, "web"), "x", { localAddress: "127.0.0.9" });
    expect(reply).toBe(`${explain.backend.id}:x`);

    const metrics = await (await fetch(`${admin}/metrics`, auth)).text();
    expect(metrics).toMatch(new RegExp(`ballast_backend_connections_total\\{service="web",backend="${explain.backend.id}",forwarding="proxy",node="[^"]+"\\} 1`));
    expect(metrics).toMatch(/ballast_connections_accepted_total\{service="web",forwarding="proxy",node="[^"]+"\} 1/);
    expect(metrics).toMatch(/ballast_service_bytes_in_total\{service="web",forwarding="proxy",node="[^"]+"\} 1/);
    expect(metrics).toContain("ballast_upstream_connect_seconds_bucket");
    const unknown = await fetch(`${admin}/api/route?service=nope&client=1.2.3.4`, auth);
    expect(unknown.status).toBe(404);
  });
});
