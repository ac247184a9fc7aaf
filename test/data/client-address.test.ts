// One client, one spelling: a dual-stack socket reports IPv4 clients as ::ffff:a.b.c.d, and access,
// affinity, the source hash and the rate limiter must all see the same client either way.
import { afterEach, describe, expect, it } from "vitest";
import { clientAddress } from "../../shared/ip.js";
import { closeAllBackends, startTcpEcho } from "../helpers/backends.js";
import { startNode, stopAllNodes } from "../helpers/node.js";

afterEach(async () => {
  await stopAllNodes();
  await closeAllBackends();
});

describe("client address normaliser", () => {
  it.each([
    { input: "::ffff:10.1.2.3", expected: "10.1.2.3" },
    { input: "::FFFF:10.1.2.3", expected: "::FFFF:10.1.2.3" },
    { input: "10.1.2.3", expected: "10.1.2.3" },
    { input: "::1", expected: "::1" },
    { input: "::ffff:1:2", expected: "::ffff:1:2" },
    { input: "::ffff:999.1.2.3", expected: "::ffff:999.1.2.3" },
    { input: "2001:db8::1", expected: "2001:db8::1" },
  ])("$input → $expected", ({ input, expected }) => {
    expect(clientAddress(input)).toBe(expected);
  });

  it("a mapped IPv4 client gets the backend its plain IPv4 spelling gets (source hash)", async () => {
    const backends = await Promise.all(["a", "b", "c"].map((n) => startTcpEcho(n)));
    const node = await startNode({
      services: [{ name: "web", listen: "127.0.0.1:0", algorithm: "source-ip", health: { type: "none" }, backends: backends.map((b, i) => ({ id: "abc"[i], address: "127.0.0.1", port: b.port })) }],
    });
    const explain = async (client: string) => {
      const res = await fetch(`http://${node.admin.address}/api/route?service=web&client=${encodeURIComponent(client)}`);
      return ((await res.json()) as { backend: { id: string } | null }).backend?.id;
    };
    for (let i = 1; i <= 20; i++) {
      const v4 = `10.0.0.${i}`;
      expect(await explain(`::ffff:${v4}`), v4).toBe(await explain(v4));
    }
  });
});
