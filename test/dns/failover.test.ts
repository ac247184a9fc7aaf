// Clients that find the nodes through DNS (no anycast), on loopback: clients resolve the service
// through a node's DNS responder, cache the answer for its TTL as a stub resolver would, and connect
// to the first address. One node is SIGKILLed: the figures are how long answers still named it and how
// many connections failed; after it left the answers (+ TTL) no connection may fail.
import dgram from "node:dgram";
import net from "node:net";
import * as packet from "dns-packet";
import { describe, expect, it } from "vitest";
import { startTcpEcho, tcpExchange } from "../helpers/backends.js";
import type { EtcdProcess } from "../helpers/etcd.js";
import { spawnNode, startNode } from "../helpers/node.js";
import { useSharedEtcd } from "../helpers/suite.js";
import { waitFor } from "../helpers/wait.js";

let etcd: EtcdProcess;
useSharedEtcd((e) => {
  etcd = e;
});

/** One A query from `source` (a loopback address), answered addresses in order. */
function resolve(server: string, port: number, name: string, source: string): Promise<{ addresses: string[]; ttl: number }> {
  return new Promise((done, fail) => {
    const s = dgram.createSocket("udp4");
    const timer = setTimeout(() => {
      s.close();
      fail(new Error("dns timeout"));
    }, 1000);
    s.on("message", (m) => {
      clearTimeout(timer);
      s.close();
      const r = packet.decode(m);
      const a = (r.answers ?? []).filter((x) => x.type === "A") as Array<{ data: string; ttl?: number }>;
      done({ addresses: a.map((x) => x.data), ttl: a[0]?.ttl ?? 0 });
    });
    s.bind(0, source, () => s.send(packet.encode({ type: "query", id: 1, questions: [{ type: "A", name }] }), port, server));
  });
}

function freePort(): Promise<number> {
  return new Promise((r) => {
    const srv = net.createServer().listen(0, "127.0.0.1", () => {
      const p = (srv.address() as net.AddressInfo).port;
      srv.close(() => r(p));
    });
  });
}

describe("clients resolving through the nodes' DNS", () => {
  it("a killed node leaves the answers within its lease TTL; connections fail only until then (+ TTL)", { timeout: 90_000 }, async () => {
    const p = "/ballast/dnsfail/";
    const echo = await startTcpEcho("e");
    const port = await freePort();
    await etcd.put(`${p}services/web`, JSON.stringify({ listen: `127.0.0.1:${port}`, health: { type: "none" } }));
    await etcd.put(`${p}backends/web/e`, `127.0.0.1:${echo.port}`);
    await etcd.put(`${p}dns`, JSON.stringify({ zone: "lb.test", ttl: 1 }));
    const base = (id: string, ip: string) => ({ node: { id, publicAddresses: [ip], bindAddress: ip }, cluster: "dnsfail", etcd: { endpoints: [etcd.endpoint], leaseTtl: 2 } });
    const n1 = await startNode({ ...base("n1", "127.0.0.41"), dns: { listen: "127.0.0.41:0", rrl: { responsesPerSecond: 0 } } });
    const victim = await spawnNode(base("n2", "127.0.0.42"));
    const dnsPort = n1.dns!.responder.port;
    await waitFor(async () => (await resolve("127.0.0.41", dnsPort, "web.lb.test", "127.0.0.1")).addresses.length === 2, { message: "both nodes answered" });
    expect(await tcpExchange(port, "x", { host: "127.0.0.42" })).toBe("e:x");

    // 8 clients (their own source addresses, so their answers rotate differently), each resolving
    // when its cached answer expires and connecting to the first address, one connection at a time.
    const sources = Array.from({ length: 8 }, (_, i) => `127.0.10.${i + 1}`);
    const log: Array<{ at: number; ok: boolean; to: string }> = [];
    const answers: Array<{ at: number; named: boolean }> = [];
    const deadline = Date.now() + 12_000;
    const client = async (src: string) => {
      let cache: { addresses: string[]; until: number } = { addresses: [], until: 0 };
      while (Date.now() < deadline) {
        if (Date.now() >= cache.until) {
          const sent = Date.now();
          const r = await resolve("127.0.0.41", dnsPort, "web.lb.test", src).catch(() => ({ addresses: [] as string[], ttl: 0 }));
          // Stamped when the query left: what the responder knew then, not how long the reply took to be read.
          answers.push({ at: sent, named: r.addresses.includes("127.0.0.42") });
          cache = { addresses: r.addresses, until: Date.now() + r.ttl * 1000 };
        }
        const to = cache.addresses[0];
        if (to === undefined) continue;
        const at = Date.now();
        const ok = await tcpExchange(port, "p", { host: to, localAddress: src, timeoutMs: 3000 }).then((r) => r === "e:p", () => false);
        log.push({ at, ok, to });
        await new Promise((r) => setTimeout(r, 50));
      }
    };
    const running = Promise.all(sources.map(client));
    await new Promise((r) => setTimeout(r, 3000));
    const killRequested = Date.now();
    victim.kill("SIGKILL");
    await victim.exited;
    const killedAt = Date.now();
    await running;

    const lastNamed = Math.max(...answers.filter((a) => a.named).map((a) => a.at));
    const namedForMs = lastNamed - killedAt;
    const failed = log.filter((x) => !x.ok);
    const before = log.filter((x) => x.at < killRequested);
    const lateFailures = failed.filter((x) => x.at > lastNamed + 1000 + 200);
    process.stdout.write(
      `\nDNS failover (loopback, leaseTtl 2 s, TTL 1 s, 8 clients): answers named the killed node for ${namedForMs} ms after the kill; ` +
        `${failed.length} of ${log.length - before.length} connections after the kill failed (all to the killed node: ${failed.every((x) => x.to === "127.0.0.42")}); ` +
        `connections through it before the kill: ${before.filter((x) => x.to === "127.0.0.42").length}\n`,
    );
    expect(before.filter((x) => x.to === "127.0.0.42").length, "clients used the victim before the kill").toBeGreaterThan(0);
    expect(before.every((x) => x.ok)).toBe(true);
    expect(namedForMs).toBeLessThan(2000 + 1500);
    expect(failed.every((x) => x.to === "127.0.0.42")).toBe(true);
    expect(lateFailures).toEqual([]);
    expect(log.filter((x) => x.at > lastNamed + 1200 && x.ok).length, "connections succeed after it left").toBeGreaterThan(0);
  });
});
