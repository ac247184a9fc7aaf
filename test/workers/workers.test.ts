// `workers: N` (issue 18): real node processes from dist/ (npm run build), each forking real worker
// processes, real loopback sockets. The per-worker view is /api/state `workers` (counters reported by
// each worker at most 1 s late, so the assertions poll for them).
import dgram from "node:dgram";
import net from "node:net";
import { afterEach, describe, expect, it } from "vitest";
import type { RouteAnswer } from "../../shared/api.js";
import { udpOwner } from "../../node/workers/protocol.js";
import { closeAllBackends, startTcpEcho, startUdpEcho } from "../helpers/backends.js";
import { getJson } from "../helpers/node.js";
import { waitFor } from "../helpers/wait.js";
import { type Conn, connect, health, readyNode, state, tcpPortOf } from "./helpers.js";

afterEach(async () => {
  await closeAllBackends();
});

describe("workers: N", () => {
  it("connections land on more than one worker, and the node's counters are the workers' sums", async () => {
    const b1 = await startTcpEcho("b1");
    const b2 = await startTcpEcho("b2");
    const node = await readyNode({
      workers: 2,
      services: [{ name: "web", listen: "127.0.0.1:0", algorithm: "round-robin", health, backends: [{ id: "b1", address: "127.0.0.1", port: b1.port }, { id: "b2", address: "127.0.0.1", port: b2.port }] }],
    });
    try {
      const port = tcpPortOf(await state(node), "web");
      const n = 20;
      for (let i = 0; i < n; i++) {
        const c = await connect(port);
        c.sock.end();
        await waitFor(() => c.closed, { message: "connection closed" });
      }
      // The node's sum and each worker's own count, once every worker has reported.
      await waitFor(async () => {
        const s = await state(node);
        const web = s.services.find((x) => x.name === "web")!;
        return web.accepted === n && web.active === 0 && s.workers!.reduce((a, w) => a + w.accepted, 0) === n;
      }, { timeoutMs: 15_000, message: `accepted = ${n} on the node and summed over the workers` });
      const s = await state(node);
      expect(s.workers!.length).toBe(2);
      for (const w of s.workers!) expect(w.accepted, `worker ${w.worker} took connections`).toBeGreaterThan(0);
      // Per backend: the node's counters equal what each backend saw.
      const web = s.services.find((x) => x.name === "web")!;
      expect(b1.hits + b2.hits).toBe(n);
      const metrics = await (await fetch(`http://${node.admin}/metrics`)).text();
      for (const b of [b1, b2]) {
        const line = metrics.split("\n").find((l) => l.startsWith("ballast_backend_connections_total") && l.includes(`backend="${b.name}"`));
        expect(line, `${b.name} connections metric`).toBeDefined();
        expect(Number(line!.split(" ").pop())).toBe(b.hits);
      }
      // Bytes: "hello" (5 bytes) each way per connection, plus the echo backend's "bN:" prefix.
      expect(web.bytesIn).toBe(5 * n);
      expect(web.bytesOut).toBe(8 * n);
      // The connect-latency histogram of the node holds every worker's connects.
      const connects = metrics.split("\n").find((l) => l.startsWith("ballast_upstream_connect_seconds_count") && l.includes('service="web"'));
      expect(Number(connects?.split(" ").pop())).toBe(n);
      const perWorker = metrics.split("\n").filter((l) => l.startsWith("ballast_worker_accepted{"));
      expect(perWorker.map((l) => Number(l.split(" ").pop())).reduce((a, b) => a + b, 0)).toBe(n);
    } finally {
      node.kill("SIGKILL");
    }
  }, 120_000);

  it("a client gets the same backend through any worker: Maglev picks match the primary's, affinity entries are shared", async () => {
    const backs = await Promise.all(["b1", "b2", "b3"].map((n) => startTcpEcho(n)));
    const node = await readyNode({
      workers: 2,
      services: [
        { name: "mag", listen: "127.0.0.1:0", algorithm: "maglev", health, backends: backs.map((b) => ({ id: b.name, address: "127.0.0.1", port: b.port })) },
        { name: "aff", listen: "127.0.0.1:0", algorithm: "round-robin", affinity: { mode: "source-ip", ttl: "60s" }, health, backends: backs.map((b) => ({ id: b.name, address: "127.0.0.1", port: b.port })) },
      ],
    });
    try {
      const s0 = await state(node);
      // Maglev: every connection (consecutive ones go to different workers) lands where the primary's
      // own router says that flow goes.
      const mag = tcpPortOf(s0, "mag");
      for (let i = 0; i < 12; i++) {
        const c = await connect(mag);
        const r = await getJson<RouteAnswer>(node.admin, `/api/route?service=mag&client=127.0.0.1&port=${c.localPort}`);
        expect(c.backend, `flow 127.0.0.1:${c.localPort}`).toBe(r.backend?.id);
        c.sock.destroy();
      }
      // Affinity: each client's first pick is learned by the node and handed to every worker; its
      // later connections (over both workers, whose round-robin positions differ) keep that backend.
      const aff = tcpPortOf(s0, "aff");
      const clients = ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"];
      const first = new Map<string, string>();
      for (const ip of clients) {
        const c = await connect(aff, ip);
        first.set(ip, c.backend);
        c.sock.destroy();
      }
      await waitFor(async () => (await state(node)).services.find((x) => x.name === "aff")!.affinity.entries === clients.length, { message: "the node's table holds each client's entry" });
      for (const ip of clients) {
        for (let i = 0; i < 6; i++) {
          const c = await connect(aff, ip);
          expect(c.backend, `client ${ip}, connection ${i}`).toBe(first.get(ip));
          c.sock.destroy();
        }
      }
      const s1 = await state(node);
      await waitFor(async () => (await state(node)).workers!.every((w) => w.accepted > 0), { message: "both workers took connections" });
      expect(s1.workers!.length).toBe(2);
    } finally {
      node.kill("SIGKILL");
    }
  }, 120_000);

  it("a SIGKILLed worker is replaced; the other worker's open connections carry on", async () => {
    const b1 = await startTcpEcho("b1");
    const node = await readyNode({ workers: 2, services: [{ name: "web", listen: "127.0.0.1:0", health, backends: [{ id: "b1", address: "127.0.0.1", port: b1.port }] }] });
    try {
      const port = tcpPortOf(await state(node), "web");
      const conns: Conn[] = [];
      for (let i = 0; i < 10; i++) conns.push(await connect(port));
      await waitFor(async () => {
        const ws = (await state(node)).workers!;
        return ws.every((w) => w.active > 0) && ws.reduce((a, w) => a + w.active, 0) === 10;
      }, { timeoutMs: 15_000, message: "both workers report their open connections" });
      const before = (await state(node)).workers!;
      const victim = before[0];
      process.kill(victim.pid, "SIGKILL");
      await waitFor(async () => {
        const w = (await state(node)).workers![0];
        return w.running && w.pid !== victim.pid && w.pid !== 0 && w.restarts === 1;
      }, { timeoutMs: 30_000, message: "worker 0 replaced by a new process" });
      const alive = await Promise.all(conns.map((c) => c.echo("again", 3000)));
      // Exactly the connections the surviving worker held still echo; the killed worker's are gone.
      expect(alive.filter(Boolean).length).toBe(before[1].active);
      expect(alive.filter((x) => !x).length).toBe(victim.active);
      // The node keeps serving, through the replacement too, and its total did not go backwards.
      await waitFor(async () => (await fetch(`http://${node.admin}/readyz`)).status === 200, { timeoutMs: 30_000, message: "ready again" });
      for (let i = 0; i < 4; i++) (await connect(port)).sock.destroy();
      await waitFor(async () => (await state(node)).services[0].accepted === 14, { timeoutMs: 15_000, message: "accepted = 10 before + 4 after" });
      await waitFor(async () => (await state(node)).workers![0].accepted > 0, { message: "the replacement took connections" });
      for (const c of conns) c.sock.destroy();
    } finally {
      node.kill("SIGKILL");
    }
  }, 120_000);

  it("SIGTERM drains every worker's connections: they keep working, and the node exits once they end", async () => {
    const b1 = await startTcpEcho("b1");
    const node = await readyNode({ workers: 2, drainTimeout: "120s", services: [{ name: "web", listen: "127.0.0.1:0", health, backends: [{ id: "b1", address: "127.0.0.1", port: b1.port }] }] });
    try {
      const port = tcpPortOf(await state(node), "web");
      const conns: Conn[] = [];
      for (let i = 0; i < 8; i++) conns.push(await connect(port));
      await waitFor(async () => (await state(node)).workers!.every((w) => w.active > 0), { timeoutMs: 15_000, message: "both workers hold connections" });
      node.kill("SIGTERM");
      await waitFor(async () => (await fetch(`http://${node.admin}/readyz`)).status === 503, { message: "readyz 503 while draining" });
      // New connections are refused once the listeners closed (in every worker, and the shared socket).
      await waitFor(
        () =>
          new Promise<boolean>((resolve) => {
            const s = net.connect(port, "127.0.0.1");
            s.on("connect", () => {
              s.destroy();
              resolve(false);
            });
            s.on("error", () => resolve(true));
          }),
        { timeoutMs: 15_000, message: "new connections refused" },
      );
      // Every open connection, on either worker, still works during the drain.
      expect(await Promise.all(conns.map((c) => c.echo("draining")))).toEqual(conns.map(() => true));
      expect(node.child.exitCode).toBeNull();
      for (const c of conns) c.sock.end();
      const code = await Promise.race([node.exited, new Promise<string>((r) => setTimeout(() => r("still running"), 60_000).unref())]);
      expect(code).toBe(0);
      expect(node.logs.some((l) => l.includes('"stopped"') && l.includes('"remaining":0'))).toBe(true);
    } finally {
      node.kill("SIGKILL");
    }
  }, 150_000);

  it("UDP: one worker binds each UDP service, so every flow stays on one worker", async () => {
    // Two service names owned by different workers.
    const names = ["dns-a", "dns-b", "dns-c", "dns-d", "dns-e", "dns-f"];
    const a = names.find((n) => udpOwner(n, 2) === 0)!;
    const b = names.find((n) => udpOwner(n, 2) === 1)!;
    const ua = await startUdpEcho("ua");
    const ub = await startUdpEcho("ub");
    const node = await readyNode({
      workers: 2,
      services: [
        { name: a, listen: "127.0.0.1:0", protocol: "udp", health, backends: [{ id: "ua", address: "127.0.0.1", port: ua.port }] },
        { name: b, listen: "127.0.0.1:0", protocol: "udp", health, backends: [{ id: "ub", address: "127.0.0.1", port: ub.port }] },
      ],
    });
    try {
      const s0 = await state(node);
      expect(s0.workers!.find((w) => w.worker === 0)!.udpServices).toEqual([a]);
      expect(s0.workers!.find((w) => w.worker === 1)!.udpServices).toEqual([b]);
      const clients = 4;
      const rounds = 5;
      for (const [name, backend] of [[a, ua], [b, ub]] as const) {
        const port = tcpPortOf(s0, name);
        for (let i = 0; i < clients; i++) {
          const sock = dgram.createSocket("udp4");
          await new Promise<void>((r) => sock.bind(0, "127.0.0.1", () => r()));
          for (let j = 0; j < rounds; j++) {
            const reply = await new Promise<string>((resolve, reject) => {
              const t = setTimeout(() => reject(new Error("no reply")), 5000);
              sock.once("message", (m) => {
                clearTimeout(t);
                resolve(String(m));
              });
              sock.send(`q${j}`, port, "127.0.0.1");
            });
            expect(reply).toBe(`${backend.name}:q${j}`);
          }
          sock.close();
        }
        // One upstream socket per client flow: a flow's datagrams split over two workers would reach
        // the backend from more than one source port.
        expect(backend.clients.size).toBe(clients);
        expect(backend.hits).toBe(clients * rounds);
      }
      await waitFor(async () => {
        const s = await state(node);
        return [a, b].every((n) => s.services.find((x) => x.name === n)!.udp?.flows === clients);
      }, { timeoutMs: 15_000, message: "flows counted once each" });
      const s1 = await state(node);
      expect(s1.workers!.find((w) => w.worker === 0)!.accepted).toBe(clients);
      expect(s1.workers!.find((w) => w.worker === 1)!.accepted).toBe(clients);
    } finally {
      node.kill("SIGKILL");
    }
  }, 120_000);

  it("rejects a bad workers value with its field path", async () => {
    const { nodeConfigSchema } = await import("../../shared/schema.js");
    const r = nodeConfigSchema.safeParse({ workers: 0 });
    expect(r.success).toBe(false);
    expect(r.error!.issues[0].path).toEqual(["workers"]);
    expect(nodeConfigSchema.safeParse({ workers: "many" }).success).toBe(false);
    expect(nodeConfigSchema.parse({ workers: "auto" }).workers).toBe("auto");
    expect(nodeConfigSchema.parse({}).workers).toBe(1);
  });
});
