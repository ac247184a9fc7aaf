// The responder's reply cache: a cached reply is byte for byte what the codec would have produced
// (with the asking query's ID), each client still gets its own rotation and zone order, a new view is
// never answered from the old one's replies, RRL and the counters see every query, and a flood of
// distinct names cannot grow it past its bound.
import * as packet from "dns-packet";
import { describe, expect, it } from "vitest";
import type { NodeRecord } from "../../shared/codec.js";
import { dnsRecordSchema } from "../../shared/schema.js";
import { createLogger } from "../../node/log.js";
import { DnsResponder } from "../../node/dns/responder.js";
import { buildDnsView } from "../../node/dns/view.js";

const rec = (id: string, zone: string, ip: string): NodeRecord =>
  ({ id, address: "", admin: "", zone, version: "", ready: true, draining: false, revision: 0, mode: "shared", public: [ip], startedAt: 0, updatedAt: 0 }) as NodeRecord;
const NODES = [rec("n1", "a", "10.0.0.1"), rec("n2", "a", "10.0.0.2"), rec("n3", "b", "10.0.0.3"), rec("n4", "b", "10.0.0.4")];
const SPEC = dnsRecordSchema.parse({ zone: "lb.test", ttl: 5, clientZones: { a: ["192.0.2.0/24"], b: ["198.51.100.0/24"] }, services: { geo: { locality: "prefer-zone" } } });

function responder(rrl: Record<string, number> = { responsesPerSecond: 0 }) {
  const r = new DnsResponder(
    { listen: "127.0.0.1:0", rrl: { responsesPerSecond: 0, burst: 100, slip: 2, ipv4Prefix: 24, ipv6Prefix: 56, maxSources: 1000, ...rrl }, maxTcpConnections: 4, tcpIdleMs: 1000 },
    createLogger("silent"),
  );
  r.update(buildDnsView(SPEC, NODES, ["web", "geo"], 1));
  return r;
}

function query(name: string, id: number, opts: { type?: "A" | "AAAA" | "SOA"; edns?: boolean; ecs?: string } = {}): Buffer {
  const additionals = opts.edns || opts.ecs
    ? [{ type: "OPT", name: ".", udpPayloadSize: 1232, flags: 0, options: opts.ecs ? [{ code: 8, family: 1, sourcePrefixLength: 24, scopePrefixLength: 0, ip: opts.ecs }] : [] } as unknown as packet.Answer]
    : [];
  return packet.encode({ type: "query", id, flags: packet.RECURSION_DESIRED, questions: [{ type: opts.type ?? "A", name }], additionals });
}

/** The header's rcode (NXDOMAIN 3, REFUSED 5). */
const rcodeOf = (reply: Buffer | null) => reply!.readUInt16BE(2) & 0xf;
const addresses = (reply: Buffer | null) => (packet.decode(reply!).answers ?? []).map((a) => (a as { data: string }).data);

describe("DNS reply cache", () => {
  it("answers a repeated query from the cache with the same bytes under the asker's ID", () => {
    const r = responder();
    for (const opts of [{}, { edns: true }, { type: "SOA" as const }, { edns: true, ecs: "192.0.2.0" }]) {
      const first = r.answer(query("web.lb.test", 1, opts), "127.0.0.1", true)!;
      const hitsBefore = r.cache.hits;
      const second = r.answer(query("web.lb.test", 0xbeef, opts), "127.0.0.1", true)!;
      expect(r.cache.hits, JSON.stringify(opts)).toBe(hitsBefore + 1);
      expect(second.readUInt16BE(0)).toBe(0xbeef);
      expect(second.subarray(2)).toEqual(first.subarray(2));
      // The same query answered by a responder that has never seen it (no cache involved).
      expect(second.subarray(2)).toEqual(responder().answer(query("web.lb.test", 7, opts), "127.0.0.1", true)!.subarray(2));
    }
    // Unknown names and names outside the zone are answered (and cached) too, without confusion.
    expect(rcodeOf(r.answer(query("nope.lb.test", 2), "127.0.0.1", true))).toBe(3);
    expect(rcodeOf(r.answer(query("nope.lb.test", 3), "127.0.0.1", true))).toBe(3);
    expect(rcodeOf(r.answer(query("web.other.test", 4), "127.0.0.1", true))).toBe(5);
  });

  it("gives every client its own rotation and zone order, as without the cache", () => {
    const r = responder();
    const clients = ["127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5", "192.0.2.7", "192.0.2.8", "198.51.100.9", "198.51.100.10"];
    const orders = new Set<string>();
    for (const name of ["web.lb.test", "geo.lb.test"]) {
      for (let round = 0; round < 2; round++) {
        for (const c of clients) {
          const got = addresses(r.answer(query(name, 9), c, true));
          expect(got, `${name} for ${c}, round ${round}`).toEqual(addresses(responder().answer(query(name, 9), c, true)));
          orders.add(got.join(","));
        }
      }
    }
    // Zone clients of geo get their zone's nodes first whichever client filled the cache.
    expect(addresses(r.answer(query("geo.lb.test", 1), "192.0.2.99", true)).slice(0, 2).sort()).toEqual(["10.0.0.1", "10.0.0.2"]);
    expect(addresses(r.answer(query("geo.lb.test", 1), "198.51.100.99", true)).slice(0, 2).sort()).toEqual(["10.0.0.3", "10.0.0.4"]);
    // EDNS Client Subnet decides the zone, not the resolver's own address.
    expect(addresses(r.answer(query("geo.lb.test", 1, { ecs: "198.51.100.0" }), "192.0.2.5", true)).slice(0, 2).sort()).toEqual(["10.0.0.3", "10.0.0.4"]);
    expect(orders.size, "clients see different orders").toBeGreaterThan(2);
  });

  it("never answers a new view from the old one's replies", () => {
    const r = responder();
    expect(addresses(r.answer(query("web.lb.test", 1), "127.0.0.1", true)).sort()).toEqual(["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"]);
    r.update(buildDnsView(SPEC, NODES.slice(1), ["web", "geo"], 2));
    expect(r.cache.size).toBe(0);
    expect(addresses(r.answer(query("web.lb.test", 1), "127.0.0.1", true)).sort()).toEqual(["10.0.0.2", "10.0.0.3", "10.0.0.4"]);
    const soa = packet.decode(r.answer(query("lb.test", 2, { type: "SOA" }), "127.0.0.1", true)!).answers![0] as packet.SoaAnswer;
    expect(soa.data.serial).toBe(2);
  });

  it("counts and rate-limits cached replies like the others", () => {
    const r = responder({ responsesPerSecond: 1, burst: 5, slip: 2 });
    const replies = Array.from({ length: 40 }, (_, i) => r.answer(query("web.lb.test", i), "203.0.113.5", true));
    expect(r.cache.hits).toBe(39);
    const sent = replies.filter((x) => x !== null);
    const truncated = sent.filter((x) => (packet.decode(x!).flags! & 0x0200) !== 0);
    // The burst passes in full, then every second limited query slips (TC, no answers), the rest are dropped.
    expect(sent.length - truncated.length).toBeLessThanOrEqual(6);
    expect(truncated.length).toBeGreaterThan(0);
    for (const t of truncated) expect(packet.decode(t!).answers).toEqual([]);
    expect(r.stats.rrlDropped + r.stats.rrlSlipped).toBe(40 - (sent.length - truncated.length));
    expect(r.stats.rrlSlipped).toBe(truncated.length);
    expect(r.stats.queries.get("A|NOERROR")).toBe(40);
    expect(r.stats.answers).toBe(40 * 4);
    // Another source is not limited by the first one's bucket.
    expect(addresses(r.answer(query("web.lb.test", 99), "198.18.0.1", true))).toHaveLength(4);
  });

  it("stays bounded under a flood of distinct names", () => {
    const r = responder();
    // More distinct names than the bound (8192): the cache starts over instead of growing.
    for (let i = 0; i < 9_000; i++) r.answer(query(`x${i}.lb.test`, i), "127.0.0.1", true);
    expect(r.cache.size).toBeLessThanOrEqual(8192);
    // A query longer than 512 bytes (a TCP frame may carry 64 KiB) is answered, never kept as a key.
    const padded = packet.encode({ type: "query", id: 5, questions: [{ type: "A", name: "web.lb.test" }], additionals: [{ type: "OPT", name: ".", udpPayloadSize: 1232, flags: 0, options: [{ code: 12, data: Buffer.alloc(4000) }] } as unknown as packet.Answer] });
    const sizeBefore = r.cache.size;
    expect(addresses(r.answer(padded, "127.0.0.1", false))).toHaveLength(4);
    expect(r.cache.size).toBe(sizeBefore);
    expect(addresses(r.answer(query("web.lb.test", 1), "127.0.0.1", true))).toHaveLength(4);
  });
});
