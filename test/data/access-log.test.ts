// The access log on real sockets: one line per finished TCP connection and ended UDP flow, with the
// termination from the fixed vocabulary; the switch, sampling and the per-second budget.
import dgram from "node:dgram";
import { mkdtempSync, readFileSync } from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { AccessLog, TERMINATIONS } from "../../node/data/access-log.js";
import { closeAllBackends, deadPort, startTcpEcho, startUdpEcho, tcpExchange, udpExchange } from "../helpers/backends.js";
import { getJson, portOf, spawnNode, startNode, stopAllNodes } from "../helpers/node.js";
import { waitFor } from "../helpers/wait.js";

afterEach(async () => {
  await stopAllNodes();
  await closeAllBackends();
});

interface Line {
  msg: string;
  node: string;
  service: string;
  protocol: string;
  client: string;
  backend: string;
  backendAddress: string;
  start: string;
  time: string;
  durationMs: number;
  bytesIn: number;
  bytesOut: number;
  termination: string;
  attempts: number;
}

function readLines(file: string): Line[] {
  let text = "";
  try {
    text = readFileSync(file, "utf8");
  } catch {
    return [];
  }
  return text.split("\n").filter((l) => l !== "").map((l) => JSON.parse(l) as Line);
}

const tmpFile = () => join(mkdtempSync(join(tmpdir(), "ballast-access-")), "access.log");

describe("access log", () => {
  it("writes one line per TCP connection: client, backend, bytes each way, duration, why it ended", async () => {
    const a = await startTcpEcho("a");
    const dead = await deadPort();
    const file = tmpFile();
    const node = await startNode({
      node: { id: "n1" },
      accessLog: { path: file },
      services: [
        { name: "web", listen: "127.0.0.1:0", health: { type: "none" }, backends: [{ id: "a", address: "127.0.0.1", port: a.port }] },
        { name: "gone", listen: "127.0.0.1:0", health: { type: "none" }, limits: { retries: 0 }, backends: [{ id: "x", address: "127.0.0.1", port: dead }] },
      ],
    });
    expect(await tcpExchange(portOf(node, "web"), "hello", { halfClose: true })).toBe("a:hello");
    await tcpExchange(portOf(node, "gone"), "x").catch(() => "");
    await waitFor(() => readLines(file).length === 2, { message: "two access lines" });
    const lines = readLines(file);
    const web = lines.find((l) => l.service === "web")!;
    expect(web).toMatchObject({ msg: "access", node: "n1", protocol: "tcp", backend: "a", backendAddress: `127.0.0.1:${a.port}`, bytesIn: 5, bytesOut: 7, termination: "client-closed", attempts: 1 });
    expect(web.client).toMatch(/^127\.0\.0\.1:\d+$/);
    expect(Date.parse(web.time) - Date.parse(web.start)).toBe(web.durationMs);
    expect(lines.find((l) => l.service === "gone")).toMatchObject({ backend: "x", termination: "connect-failed", bytesIn: 0 });
  });

  it("knows who closed first and idle timeouts", async () => {
    const file = tmpFile();
    // A backend that answers and closes at once.
    const server = net.createServer((s) => s.end("bye"));
    const port = await new Promise<number>((r) => server.listen(0, "127.0.0.1", () => r((server.address() as net.AddressInfo).port)));
    const a = await startTcpEcho("a");
    try {
      const node = await startNode({
        accessLog: { path: file },
        services: [
          { name: "closer", listen: "127.0.0.1:0", health: { type: "none" }, backends: [{ id: "c", address: "127.0.0.1", port }] },
          { name: "idle", listen: "127.0.0.1:0", health: { type: "none" }, timeouts: { idle: "300ms" }, backends: [{ id: "a", address: "127.0.0.1", port: a.port }] },
        ],
      });
      expect(await tcpExchange(portOf(node, "closer"), "", { halfClose: false })).toBe("bye");
      const idle = net.connect(portOf(node, "idle"), "127.0.0.1");
      idle.on("error", () => {});
      idle.resume(); // read the backend's greeting, so the close is seen
      await new Promise<void>((r) => idle.on("close", () => r()));
      await waitFor(() => readLines(file).length === 2, { message: "two access lines" });
      const lines = readLines(file);
      expect(lines.find((l) => l.service === "closer")).toMatchObject({ termination: "backend-closed", bytesOut: 3 });
      expect(lines.find((l) => l.service === "idle")).toMatchObject({ termination: "idle-timeout" });
    } finally {
      server.close();
    }
  });

  it("writes a line when a UDP flow expires, with its datagram bytes", async () => {
    const u = await startUdpEcho("u");
    const file = tmpFile();
    const node = await startNode({
      accessLog: { path: file },
      services: [{ name: "dns", listen: "127.0.0.1:0", protocol: "udp", timeouts: { udpIdle: "1s" }, health: { type: "none" }, backends: [{ id: "u", address: "127.0.0.1", port: u.port }] }],
    });
    const s = dgram.createSocket("udp4");
    expect(await udpExchange(portOf(node, "dns"), "ping", { socket: s })).toBe("u:ping");
    await waitFor(() => readLines(file).length === 1, { message: "the flow's access line" });
    expect(readLines(file)[0]).toMatchObject({ protocol: "udp", service: "dns", backend: "u", bytesIn: 4, bytesOut: 6, termination: "udp-idle" });
    s.close();
  });

  it("the switch and sampling: nothing written, everything counted", async () => {
    const a = await startTcpEcho("a");
    const file = tmpFile();
    const node = await startNode({ accessLog: { path: file, sample: 0 }, services: [{ name: "web", listen: "127.0.0.1:0", health: { type: "none" }, backends: [{ id: "a", address: "127.0.0.1", port: a.port }] }] });
    for (let i = 0; i < 3; i++) await tcpExchange(portOf(node, "web"), "x", { halfClose: true });
    await waitFor(() => node.plane.accessLog!.suppressed.sampled === 3, { message: "three sampled out" });
    node.plane.accessLog!.flush();
    expect(readLines(file)).toEqual([]);
    const metrics = await (await fetch(`http://${node.admin.address}/metrics`)).text();
    expect(metrics).toMatch(/ballast_access_log_suppressed_total\{reason="sampled",node="[^"]+"\} 3/);
  });

  it("keeps to ratePerSecond within a second, and starts again in the next", () => {
    const log = new AccessLog("n", { enabled: true, ratePerSecond: 2, sample: 1, path: tmpFile() });
    const t0 = 1_700_000_000_000;
    expect([log.admit(t0), log.admit(t0 + 10), log.admit(t0 + 20), log.admit(t0 + 999)]).toEqual([true, true, false, false]);
    expect(log.suppressed.rate).toBe(2);
    expect(log.admit(t0 + 1000)).toBe(true);
    log.configure({ enabled: false, ratePerSecond: 2, sample: 1, path: "" });
    expect(log.admit(t0 + 5000)).toBe(false);
    log.close();
  });

  it("is on by default in a node run from the CLI, on its standard output", async () => {
    const a = await startTcpEcho("a");
    const node = await spawnNode({ services: [{ name: "web", listen: "127.0.0.1:0", health: { type: "none" }, backends: [{ id: "a", address: "127.0.0.1", port: a.port }] }] });
    await waitFor(async () => (await fetch(`http://${node.admin}/readyz`)).status === 200, { message: "node ready" });
    const port = (await getJson<{ services: Array<{ boundPort: number }> }>(node.admin, "/api/state")).services[0].boundPort;
    expect(await tcpExchange(port, "hi", { halfClose: true })).toBe("a:hi");
    await waitFor(() => node.logs.some((l) => l.includes('"msg":"access"')), { message: "an access line on stdout" });
    const line = JSON.parse(node.logs.find((l) => l.includes('"msg":"access"'))!) as Line;
    expect(TERMINATIONS).toContain(line.termination);
    expect(line).toMatchObject({ service: "web", backend: "a", bytesIn: 2, bytesOut: 4 });
    node.kill("SIGTERM");
    expect(await node.exited).toBe(0);
  });
});
