// acceptProxy: Ballast behind another balancer. Only trusted peers may send a PROXY header; the client
// it names is the one access rules, affinity and the PROXY header sent onward use.
import net from "node:net";
import { afterEach, describe, expect, it } from "vitest";
import { parseProxyHeader, proxyV1Header, proxyV2Header } from "../../node/data/proxy-protocol.js";
import { closeAllBackends, startRecorder, startTcpEcho } from "../helpers/backends.js";
import { portOf, startNode, stopAllNodes } from "../helpers/node.js";
import { waitFor } from "../helpers/wait.js";

afterEach(async () => {
  await stopAllNodes();
  await closeAllBackends();
});

/** Sends `bytes` (in two writes, split inside the header) and resolves with everything received, or "closed". */
function send(port: number, bytes: Buffer, split = 5, localAddress = "127.0.0.1"): Promise<string> {
  return new Promise((resolve) => {
    const s = net.connect({ port, host: "127.0.0.1", localAddress });
    let got = "";
    s.on("data", (d) => (got += d));
    s.on("error", () => {});
    s.on("close", () => resolve(got === "" ? "closed" : got));
    s.on("connect", () => {
      s.write(bytes.subarray(0, split));
      setImmediate(() => {
        s.write(bytes.subarray(split));
        s.end();
      });
    });
  });
}

describe("acceptProxy", () => {
  it("takes the client from a v2 header and passes it on in the backend's PROXY header; the payload after it arrives intact", async () => {
    const r = await startRecorder("r");
    const node = await startNode({
      services: [{ name: "web", listen: "127.0.0.1:0", acceptProxy: { version: "v2", from: ["127.0.0.1/32"] }, proxyProtocol: "v1", health: { type: "none" }, backends: [{ id: "r", address: "127.0.0.1", port: r.port }] }],
    });
    const header = proxyV2Header("203.0.113.7", 4242, "198.51.100.1", 443, "tcp");
    expect(await send(portOf(node, "web"), Buffer.concat([header, Buffer.from("payload")]))).toBe("ok");
    await waitFor(() => r.firsts.length === 1);
    const onward = parseProxyHeader(r.firsts[0])!;
    expect(onward).toMatchObject({ version: 1, src: "203.0.113.7", srcPort: 4242, dst: "198.51.100.1", dstPort: 443 });
    expect(r.firsts[0].subarray(onward.length).toString()).toBe("payload");
  });

  it("access rules and affinity see the client in the header, not the balancer", async () => {
    const a = await startTcpEcho("a");
    const b = await startTcpEcho("b");
    const node = await startNode({
      services: [
        {
          name: "web",
          listen: "127.0.0.1:0",
          acceptProxy: { version: "v1", from: ["127.0.0.0/8"] },
          access: { deny: ["203.0.113.0/24"] },
          affinity: { mode: "source-ip", ttl: "10m" },
          algorithm: "round-robin",
          health: { type: "none" },
          backends: [{ id: "a", address: "127.0.0.1", port: a.port }, { id: "b", address: "127.0.0.1", port: b.port }],
        },
      ],
    });
    const port = portOf(node, "web");
    expect(await send(port, Buffer.concat([proxyV1Header("203.0.113.9", 1000, "198.51.100.1", 80), Buffer.from("x")]))).toBe("closed");
    expect(node.plane.stats.service("web").refused.denied).toBe(1);
    // Two different real clients behind the same balancer each get (and keep) their own entry.
    const first = await send(port, Buffer.concat([proxyV1Header("192.0.2.1", 1000, "198.51.100.1", 80), Buffer.from("x")]));
    const second = await send(port, Buffer.concat([proxyV1Header("192.0.2.2", 1000, "198.51.100.1", 80), Buffer.from("x")]));
    expect(new Set([first, second])).toEqual(new Set(["a:x", "b:x"]));
    expect(await send(port, Buffer.concat([proxyV1Header("192.0.2.1", 2000, "198.51.100.1", 80), Buffer.from("x")]))).toBe(first);
    expect(node.affinity.entries.table("web")?.size).toBe(2);
  });

  it("refuses peers that are not trusted, a missing header and the other version", async () => {
    const a = await startTcpEcho("a");
    const node = await startNode({
      services: [{ name: "web", listen: "127.0.0.1:0", acceptProxy: { version: "v2", from: ["127.0.0.2/32"] }, health: { type: "none" }, backends: [{ id: "a", address: "127.0.0.1", port: a.port }] }],
    });
    const port = portOf(node, "web");
    const v2 = proxyV2Header("192.0.2.1", 1, "198.51.100.1", 80, "tcp");
    // From an untrusted address, even a valid header is refused.
    expect(await send(port, Buffer.concat([v2, Buffer.from("x")]), 5, "127.0.0.1")).toBe("closed");
    // From the trusted one: no header, or a v1 header, is refused; a v2 header works.
    expect(await send(port, Buffer.from("GET / HTTP/1.0\r\n\r\n"), 5, "127.0.0.2")).toBe("closed");
    expect(await send(port, Buffer.concat([proxyV1Header("192.0.2.1", 1, "198.51.100.1", 80), Buffer.from("x")]), 5, "127.0.0.2")).toBe("closed");
    expect(await send(port, Buffer.concat([v2, Buffer.from("x")]), 5, "127.0.0.2")).toBe("a:x");
    expect(node.plane.stats.service("web").refused["proxy-header"]).toBe(3);
    expect(a.hits).toBe(1);
  });

  it("a udp service with acceptProxy is an invalid record", async () => {
    const node = await startNode({ services: [{ name: "u", listen: "127.0.0.1:0", protocol: "udp", acceptProxy: { version: "v2", from: ["127.0.0.1"] }, health: { type: "none" }, backends: [] }] }, { waitForSnapshot: true });
    expect(node.reconciler.snapshot?.invalid.map((r) => r.reason)).toEqual(["acceptProxy: only for tcp services"]);
  });
});
