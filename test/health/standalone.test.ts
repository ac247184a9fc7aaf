// A standalone node (YAML services, in-memory store) checks its backends itself, through the same
// leader path as a cluster: every check kind end to end into /api/state, metrics and routing.
import http from "node:http";
import type net from "node:net";
import { afterEach, describe, expect, it } from "vitest";
import type { BallastNode } from "../../node/node.js";
import { closeAllBackends, deadPort, startHttpBackend, startTcpEcho, startUdpEcho, tcpExchange } from "../helpers/backends.js";
import { getJson, portOf, startNode, stopAllNodes } from "../helpers/node.js";
import { waitFor } from "../helpers/wait.js";
import { metricValue } from "./metrics-text.js";

afterEach(async () => {
  await stopAllNodes();
  await closeAllBackends();
});

const fast = { interval: "100ms", timeout: "150ms", rise: 2, fall: 2 };

function verdictOf(node: BallastNode, service: string, id: string) {
  return node.reconciler.snapshot?.services.get(service)?.backends.find((b) => b.id === id)?.verdict ?? null;
}

interface StateJson {
  health: { leader: string | null; isLeader: boolean; mode: string; checking: number };
  services: Array<{ name: string; backends: Array<{ id: string; verdict: { state: string; reason: string; checker: string } | null; routable: boolean }> }>;
}

describe("standalone health checks", () => {
  it("checks every kind against real servers and routes by the verdicts", async () => {
    const tcpUp = await startTcpEcho("up");
    const httpUp = await startHttpBackend("ok");
    const httpBad = await startHttpBackend("bad", { status: 503 });
    const udpUp = await startUdpEcho("u");
    const echo = await startTcpEcho("e");
    const dead = await deadPort();
    const banner = http.createServer();
    banner.on("connection", (s: net.Socket) => s.write("SSH-2.0-test\r\n"));
    const bannerPort = await new Promise<number>((r) => banner.listen(0, "127.0.0.1", () => r((banner.address() as net.AddressInfo).port)));
    try {
      const node = await startNode({
        node: { id: "solo" },
        services: [
          { name: "tcp", listen: "127.0.0.1:0", health: { type: "tcp", ...fast }, backends: [{ id: "up", address: "127.0.0.1", port: tcpUp.port }, { id: "dead", address: "127.0.0.1", port: dead }] },
          {
            name: "web",
            listen: "127.0.0.1:0",
            health: { type: "http", ...fast, http: { path: "/health" } },
            backends: [{ id: "ok", address: "127.0.0.1", port: httpUp.port }, { id: "bad", address: "127.0.0.1", port: httpBad.port }],
          },
          {
            name: "ssh",
            listen: "127.0.0.1:0",
            health: { type: "send-expect", ...fast, expect: "SSH-2.0" },
            // The check goes to checkPort: the banner server, while traffic would go to the echo.
            backends: [{ id: "banner", address: "127.0.0.1", port: tcpUp.port, checkPort: bannerPort }, { id: "echo", address: "127.0.0.1", port: echo.port }],
          },
          { name: "dns", listen: "127.0.0.1:0", protocol: "udp", health: { type: "udp", ...fast, send: "q", expect: "u:q" }, backends: [{ id: "u", address: "127.0.0.1", port: udpUp.port }] },
          // `tcp` (the default) on a UDP service probes with a datagram: there is no TCP port to connect to.
          { name: "dns2", listen: "127.0.0.1:0", protocol: "udp", health: { ...fast }, backends: [{ id: "u", address: "127.0.0.1", port: udpUp.port }] },
          { name: "off", listen: "127.0.0.1:0", health: { type: "none" }, backends: [{ id: "dead", address: "127.0.0.1", port: dead }] },
        ],
      });
      const expected: Array<[string, string, "up" | "down", string]> = [
        ["tcp", "up", "up", "connected"],
        ["tcp", "dead", "down", "connect ECONNREFUSED"],
        ["web", "ok", "up", "http 200"],
        ["web", "bad", "down", "http 503"],
        ["ssh", "banner", "up", "expect matched"],
        ["ssh", "echo", "down", "expect mismatch"],
        ["dns", "u", "up", "reply matched"],
        ["dns2", "u", "up", "reply matched"],
      ];
      for (const [svc, id, state, reason] of expected) {
        await waitFor(() => verdictOf(node, svc, id)?.state === state, { message: `${svc}/${id} ${state}` });
        expect(verdictOf(node, svc, id)?.reason, `${svc}/${id}`).toBe(reason);
        expect(verdictOf(node, svc, id)?.checker).toBe("solo");
      }
      expect(verdictOf(node, "off", "dead")).toBeNull();

      const st = await getJson<StateJson>(node.admin.address, "/api/state");
      expect(st.health).toMatchObject({ leader: "solo", isLeader: true, mode: "standalone", checking: 8 });
      expect(st.services.find((s) => s.name === "web")!.backends.find((b) => b.id === "bad")).toMatchObject({ routable: false, verdict: { state: "down", reason: "http 503" } });

      // Traffic only reaches what is up.
      for (let i = 0; i < 6; i++) expect(await tcpExchange(portOf(node, "tcp"), `${i}`)).toBe(`up:${i}`);
      expect(node.plane.stats.backend("tcp", "dead").connectFailures.refused ?? 0).toBe(0);

      const metrics = await (await fetch(`http://${node.admin.address}/metrics`)).text();
      expect(metricValue(metrics, "ballast_health_leader")).toBe(1);
      expect(metricValue(metrics, "ballast_health_mode", { mode: "standalone" })).toBe(1);
      expect(metricValue(metrics, "ballast_health_mode", { mode: "shared" })).toBe(0);
      expect(metricValue(metrics, "ballast_health_checks_total", { service: "web", result: "status" })).toBeGreaterThan(0);
      expect(metricValue(metrics, "ballast_health_checks_total", { service: "tcp", result: "refused" })).toBeGreaterThan(0);
      expect(metricValue(metrics, "ballast_health_verdict_changes_total", { service: "web", state: "down", source: "shared" })).toBe(1);
      expect(metricValue(metrics, "ballast_health_check_seconds_count", { service: "tcp" })).toBeGreaterThan(0);
      expect(metricValue(metrics, "ballast_health_fenced_writes_total", { result: "ok" })).toBeGreaterThan(0);
    } finally {
      banner.close();
    }
  });

  it("a backend that dies goes down after fall, comes back up after rise; unknownRoutes=false holds new backends back", async () => {
    const a = await startTcpEcho("a");
    const b = await startTcpEcho("b");
    const node = await startNode({
      node: { id: "solo" },
      services: [
        {
          name: "web",
          listen: "127.0.0.1:0",
          health: { ...fast, unknownRoutes: false },
          backends: [{ id: "a", address: "127.0.0.1", port: a.port }, { id: "b", address: "127.0.0.1", port: b.port }],
        },
      ],
    });
    // Until the first verdict, nothing routes (unknownRoutes: false).
    const first = node.reconciler.snapshot!.services.get("web")!;
    expect(first.backends.map((x) => x.why)).toEqual(["unknown", "unknown"]);
    await waitFor(() => verdictOf(node, "web", "a")?.state === "up" && verdictOf(node, "web", "b")?.state === "up");
    const port = b.port;
    await b.close();
    const t0 = Date.now();
    await waitFor(() => verdictOf(node, "web", "b")?.state === "down", { intervalMs: 5 });
    expect(Date.now() - t0).toBeLessThan(100 * 2 + 500);
    expect(verdictOf(node, "web", "b")).toMatchObject({ reason: "connect ECONNREFUSED", count: 2 });
    const b2 = await startTcpEcho("b", { port });
    await waitFor(() => verdictOf(node, "web", "b")?.state === "up");
    expect(verdictOf(node, "web", "b")).toMatchObject({ reason: "connected", count: 2 });
    await waitFor(async () => (await tcpExchange(portOf(node, "web"), "x")) === "b:x");
    expect(b2.hits).toBeGreaterThan(0);
  });
});
