// Config reload as operators trigger it: SIGHUP (systemd ExecReload, logrotate) and `--watch`, on a
// child process of the compiled CLI. The change is applied like an etcd change; a bad file changes nothing.
import net from "node:net";
import { afterEach, describe, expect, it } from "vitest";
import { closeAllBackends, startTcpEcho, tcpExchange } from "../helpers/backends.js";
import { getJson, spawnNode, stopAllNodes, writeNodeConfig } from "../helpers/node.js";
import { waitFor } from "../helpers/wait.js";

afterEach(async () => {
  await stopAllNodes();
  await closeAllBackends();
});

interface State {
  services: Array<{ name: string; boundPort: number; backends: Array<{ id: string; state: string; weight: number; routable: boolean }> }>;
}

const service = (backends: unknown[]) => ({ name: "echo", listen: "127.0.0.1:0", algorithm: "round-robin", health: { type: "none" }, backends });

async function metric(admin: string, line: RegExp): Promise<number> {
  const text = await (await fetch(`http://${admin}/metrics`)).text();
  const m = line.exec(text);
  return m ? Number(m[1]) : Number.NaN;
}

describe("config reload", () => {
  it("SIGHUP re-reads the YAML: a drained and an added backend apply, the listener and an open connection stay, the node lives", async () => {
    const a = await startTcpEcho("a", { prefix: false });
    const b = await startTcpEcho("b");
    const node = await spawnNode({ services: [service([{ id: "a", address: "127.0.0.1", port: a.port }])] });
    await waitFor(async () => (await fetch(`http://${node.admin}/readyz`)).status === 200, { message: "node ready" });
    const port = (await getJson<State>(node.admin, "/api/state")).services[0].boundPort;
    const open = net.connect(port, "127.0.0.1");
    let got = "";
    open.on("data", (d) => (got += d));
    open.write("before");
    await waitFor(() => got === "before", { message: "the open connection works" });

    writeNodeConfig(node.file, { services: [service([{ id: "a", address: "127.0.0.1", port: a.port, state: "drain" }, { id: "b", address: "127.0.0.1", port: b.port }])] });
    node.kill("SIGHUP");
    await waitFor(async () => {
      const s = await getJson<State>(node.admin, "/api/state");
      return s.services[0].backends.length === 2 && s.services[0].backends[0].state === "drain";
    }, { message: "the reloaded backends in /api/state" });

    const after = await getJson<State>(node.admin, "/api/state");
    expect(after.services[0].boundPort).toBe(port);
    expect(await tcpExchange(port, "new")).toBe("b:new");
    open.write("after");
    await waitFor(() => got === "beforeafter", { message: "the connection opened before the reload still works" });
    open.end();
    expect(await metric(node.admin, /ballast_config_reloads_total\{result="applied",node="[^"]+"\} (\d+)/)).toBe(1);
    expect(node.logs.some((l) => l.includes('"config reloaded"'))).toBe(true);
    expect(node.child.exitCode).toBeNull();
  });

  it("a file that does not validate keeps the running config, logs the field path and counts it", async () => {
    const a = await startTcpEcho("a");
    const node = await spawnNode({ services: [service([{ id: "a", address: "127.0.0.1", port: a.port }])] });
    await waitFor(async () => (await fetch(`http://${node.admin}/readyz`)).status === 200, { message: "node ready" });
    const port = (await getJson<State>(node.admin, "/api/state")).services[0].boundPort;

    writeNodeConfig(node.file, { services: [{ ...service([{ id: "a", address: "127.0.0.1", port: a.port }]), listen: "nowhere" }] });
    node.kill("SIGHUP");
    await waitFor(async () => (await metric(node.admin, /ballast_config_reloads_total\{result="invalid",node="[^"]+"\} (\d+)/)) === 1, { message: "the rejected reload counted" });
    expect(await metric(node.admin, /ballast_config_last_reload_successful\{node="[^"]+"\} (\d+)/)).toBe(0);
    const logged = node.logs.find((l) => l.includes("config reload rejected"));
    expect(logged).toContain("services[0].listen");
    expect(await tcpExchange(port, "still")).toBe("a:still");
    expect(node.child.exitCode).toBeNull();
  });

  it("fields that need a restart are named and keep their running value", async () => {
    const a = await startTcpEcho("a");
    const node = await spawnNode({ cluster: "one", services: [service([{ id: "a", address: "127.0.0.1", port: a.port }])] });
    await waitFor(async () => (await fetch(`http://${node.admin}/readyz`)).status === 200, { message: "node ready" });
    writeNodeConfig(node.file, { cluster: "two", services: [service([{ id: "a", address: "127.0.0.1", port: a.port, weight: 3 }])] });
    node.kill("SIGHUP");
    await waitFor(() => node.logs.some((l) => l.includes("need a restart")), { message: "the restart warning" });
    expect(node.logs.find((l) => l.includes("need a restart"))).toContain('"cluster"');
    const s = await getJson<State & { cluster: string }>(node.admin, "/api/state");
    expect(s.cluster).toBe("one");
    expect(s.services[0].backends[0].weight).toBe(3);
  });

  it("--watch reloads when the file changes, without a signal", async () => {
    const a = await startTcpEcho("a");
    const node = await spawnNode({ services: [service([{ id: "a", address: "127.0.0.1", port: a.port }])] }, { args: ["--watch"] });
    await waitFor(async () => (await fetch(`http://${node.admin}/readyz`)).status === 200, { message: "node ready" });
    writeNodeConfig(node.file, { services: [service([{ id: "a", address: "127.0.0.1", port: a.port, weight: 7 }])] });
    await waitFor(async () => (await getJson<State>(node.admin, "/api/state")).services[0].backends[0].weight === 7, { message: "the watched change applied" });
  });
});
