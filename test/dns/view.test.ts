// The DNS view as a pure function: the same inputs give the same names and answers whatever the order
// of node records; rogue peer records are ignored field by field; names that clash or leave the zone
// are reported, not served; rotation is per client and bounded.
import { describe, expect, it } from "vitest";
import type { NodeRecord } from "../../shared/codec.js";
import { dnsRecordSchema } from "../../shared/schema.js";
import { buildDnsView, orderAnswers } from "../../node/dns/view.js";

const rec = (id: string, extra: Partial<NodeRecord> & Record<string, unknown> = {}): NodeRecord =>
  ({ id, address: "", admin: "", zone: "", version: "", ready: true, draining: false, revision: 0, mode: "shared", startedAt: 0, updatedAt: 0, ...extra }) as NodeRecord;

describe("DNS view", () => {
  it("lists exactly the live nodes, in the same order whatever the record order", () => {
    const spec = dnsRecordSchema.parse({ zone: "LB.Example." });
    const nodes = [
      rec("n3", { public: ["10.0.0.3", "2001:db8::3"] }),
      rec("n1", { public: ["10.0.0.1"] }),
      rec("n2", { public: ["10.0.0.2"], draining: true }),
      rec("n4", { public: ["10.0.0.4"], ready: false }),
      rec("n5"),
    ];
    const v1 = buildDnsView(spec, nodes, ["web"], 42)!;
    const v2 = buildDnsView(spec, [...nodes].reverse(), ["web"], 42)!;
    expect(v1.zone).toBe("lb.example");
    expect(v1.serial).toBe(42);
    const web = v1.names.get("web.lb.example")!;
    expect(web.v4.all.map((a) => a.address)).toEqual(["10.0.0.1", "10.0.0.3"]);
    expect(web.v6.all.map((a) => a.address)).toEqual(["2001:db8::3"]);
    expect(v2.names.get("web.lb.example")).toEqual(web);
    expect(v1.nodes.map((n) => [n.id, n.why])).toEqual([["n1", ""], ["n2", "draining"], ["n3", ""], ["n4", "not ready"], ["n5", "no public address"]]);
  });

  it("ignores what a rogue peer wrote instead of addresses, and never throws", () => {
    const spec = dnsRecordSchema.parse({ zone: "lb.example" });
    const rogue = [rec("r1", { public: "10.0.0.9" as unknown as string[] }), rec("r2", { public: [7, "not-an-ip", "10.0.0.8"] as unknown as string[] }), rec("r3", { zone: 5 as unknown as string, public: ["10.0.0.7"] })];
    const v = buildDnsView(spec, rogue, ["web"], 1)!;
    expect(v.names.get("web.lb.example")!.v4.all.map((a) => `${a.node}:${a.address}:${a.zone}`)).toEqual(["r2:10.0.0.8:", "r3:10.0.0.7:"]);
  });

  it("leaves a node out of the names of services it says it cannot carry, and only those", () => {
    const spec = dnsRecordSchema.parse({ zone: "lb.example", clientZones: { a: ["192.0.2.0/24"] }, services: { api: { locality: "prefer-zone" } } });
    const nodes = [
      rec("n1", { zone: "a", public: ["10.0.0.1"], unserved: ["web"] }),
      rec("n2", { zone: "a", public: ["10.0.0.2", "2001:db8::2"], unserved: ["api", "gone"] }),
      rec("n3", { zone: "b", public: ["10.0.0.3"] }),
      // A rogue peer's unserved that is not a list of strings is ignored, not fatal.
      rec("n4", { public: ["10.0.0.4"], unserved: "web" as unknown as string[] }),
      rec("n5", { public: ["10.0.0.5"], unserved: [7, null] as unknown as string[] }),
    ];
    const v = buildDnsView(spec, nodes, ["web", "api"], 1)!;
    const addrs = (name: string) => v.names.get(name)!.v4.all.map((a) => a.address);
    expect(addrs("web.lb.example")).toEqual(["10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5"]);
    expect(addrs("api.lb.example")).toEqual(["10.0.0.1", "10.0.0.3", "10.0.0.4", "10.0.0.5"]);
    expect(v.names.get("api.lb.example")!.v6.all).toEqual([]);
    expect(v.names.get("web.lb.example")!.v6.all.map((a) => a.address)).toEqual(["2001:db8::2"]);
    // Zone-first answers are built from the same reduced list: n2 is not in zone a's group for api.
    expect(v.names.get("api.lb.example")!.v4.byZone.get("a")![0].map((a) => a.node)).toEqual(["n1"]);
    // Nameserver names answer with every live node: each one serves DNS whatever it cannot carry.
    expect(addrs("ns.lb.example")).toEqual(["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5"]);
    expect(v.nodes.map((n) => [n.id, n.live, n.unserved])).toEqual([
      ["n1", true, ["web"]],
      ["n2", true, ["api", "gone"]],
      ["n3", true, []],
      ["n4", true, []],
      ["n5", true, []],
    ]);
  });

  it("publishes names per service settings, reports clashes and names outside the zone, knows empty non-terminals", () => {
    const spec = dnsRecordSchema.parse({
      zone: "lb.example",
      services: { web: { name: "www.eu" }, api: { name: "www.eu" }, ext: { name: "other.example." }, hidden: { publish: false }, db: { ttl: 30, answers: 2 } },
    });
    const v = buildDnsView(spec, [rec("n1", { public: ["10.0.0.1"] })], ["web", "api", "ext", "hidden", "db"], 1)!;
    expect([...v.names.keys()].sort()).toEqual(["db.lb.example", "ns.lb.example", "www.eu.lb.example"]);
    expect(v.names.get("www.eu.lb.example")!.service).toBe("api");
    expect(v.problems).toEqual(["service ext: name other.example is outside zone lb.example", "service web: name www.eu.lb.example already used by api"]);
    expect(v.emptyNonTerminals.has("eu.lb.example")).toBe(true);
    expect(v.names.get("db.lb.example")).toMatchObject({ ttl: 30, answers: 2 });
  });

  it("rotates per client, bounded by answers; prefer-zone puts the client zone's nodes first", () => {
    const spec = dnsRecordSchema.parse({ zone: "lb.example", clientZones: { b: ["192.0.2.0/24"] }, services: { web: { locality: "prefer-zone" } } });
    const nodes = ["a", "a", "b", "c"].map((z, i) => rec(`n${i}`, { zone: z, public: [`10.0.0.${i}`] }));
    const web = buildDnsView(spec, nodes, ["web"], 1)!.names.get("web.lb.example")!;
    const starts = new Set<string>();
    for (let h = 0; h < 8; h++) {
      const order = orderAnswers(web.v4, "", h, 8).map((a) => a.address);
      expect([...order].sort()).toEqual(["10.0.0.0", "10.0.0.1", "10.0.0.2", "10.0.0.3"]);
      expect(orderAnswers(web.v4, "", h, 8).map((a) => a.address)).toEqual(order);
      starts.add(order[0]);
    }
    expect(starts.size).toBe(4);
    expect(orderAnswers(web.v4, "", 5, 2)).toHaveLength(2);
    for (let h = 0; h < 8; h++) expect(orderAnswers(web.v4, "b", h, 8)[0].address).toBe("10.0.0.2");
  });
});
