// What a NAT service cannot do is refused at validation, naming the field — in etcd records (the
// record is skipped with its key and reason) and in the YAML config (the node does not start).
// Also the pure pieces: the table-size ladder, the cluster seed, and the ruleset delta.
import { describe, expect, it } from "vitest";
import { RecordTable } from "../../node/control/records.js";
import { StatsRegistry } from "../../node/model/stats.js";
import { natServiceModel } from "../../node/kernel/forwarder.js";
import { flowKey, jhash, reciprocalScale } from "../../node/kernel/jhash.js";
import { type NatServiceModel, renderDelta, renderFull } from "../../node/kernel/ruleset.js";
import { clusterSeed } from "../../node/kernel/seed.js";
import { NAT_TABLE_LADDER, natTableSize } from "../../node/lb/nat-table.js";
import { buildSnapshot } from "../../node/model/snapshot.js";
import { KeySchema } from "../../shared/keys.js";
import { formatIssues, nodeConfigSchema } from "../../shared/schema.js";

const keys = KeySchema.forCluster("t");
const kv = (key: string, value: unknown) => ({ key, value: Buffer.from(JSON.stringify(value)), modRevision: 1, lease: "0" });

function snapshotOf(records: Array<[string, unknown]>) {
  const t = new RecordTable(keys);
  t.reset(records.map(([k, v]) => kv(k, v)), 3);
  return buildSnapshot(t.input(new Map()), new StatsRegistry());
}

describe("forwarding: nat records", () => {
  it.each([
    { description: "PROXY protocol", extra: { proxyProtocol: "v1" }, reason: /proxyProtocol: needs forwarding: proxy/ },
    { description: "accepting PROXY headers", extra: { acceptProxy: { version: "v2", from: ["10.0.0.0/8"] } }, reason: /acceptProxy: needs forwarding: proxy/ },
    { description: "slow start", extra: { slowStart: "30s" }, reason: /slowStart: needs forwarding: proxy/ },
    { description: "a stateful picker", extra: { algorithm: "least-conn" }, reason: /algorithm: least-conn needs forwarding: proxy/ },
    { description: "per-backend connection caps", extra: { limits: { maxConnectionsPerBackend: 5 } }, reason: /limits.maxConnectionsPerBackend: needs forwarding: proxy/ },
    { description: "zone-aware routing", extra: { locality: "prefer-zone" }, reason: /locality: prefer-zone needs forwarding: proxy/ },
    { description: "a wildcard listen address", extra: { listen: "0.0.0.0:80" }, reason: /listen: forwarding nat needs the service's own address/ },
    { description: "port 0", extra: { listen: "10.0.0.1:0" }, reason: /listen: forwarding nat needs a fixed port/ },
    { description: "an unknown nat option", extra: { nat: { masquerade: true } }, reason: /nat: unknown key.*masquerade/ },
  ])("refuses $description with the field in the reason, and keeps the other services", ({ extra, reason }) => {
    const snap = snapshotOf([
      [keys.service("bad"), { listen: "10.0.0.1:80", forwarding: "nat", ...extra }],
      [keys.service("good"), { listen: "10.0.0.2:80", forwarding: "nat" }],
      [keys.backend("good", "b1"), "10.1.0.1:8080"],
    ]);
    expect(snap.invalid.find((r) => r.key === keys.service("bad"))?.reason).toMatch(reason);
    expect(snap.services.get("good")?.spec.forwarding).toBe("nat");
  });

  it("refuses nat options on a proxied service", () => {
    const snap = snapshotOf([[keys.service("p"), { listen: "10.0.0.1:80", nat: { snat: false } }]]);
    expect(snap.invalid[0]?.reason).toMatch(/nat: only for forwarding: nat/);
  });

  it("defaults: proxy forwarding; a NAT service hashes with maglev, or source-ip with affinity", () => {
    const snap = snapshotOf([
      [keys.service("p"), { listen: "10.0.0.1:80" }],
      [keys.service("n"), { listen: "10.0.0.2:80", forwarding: "nat" }],
      [keys.service("a"), { listen: "10.0.0.3:80", forwarding: "nat", affinity: { mode: "source-ip" } }],
    ]);
    expect(snap.services.get("p")!.spec.forwarding).toBe("proxy");
    expect(snap.services.get("n")!.spec.algorithm).toBe("maglev");
    expect(snap.services.get("a")!.spec.algorithm).toBe("source-ip");
    expect(snap.services.get("a")!.hashSourceOnly).toBe(true);
  });

  it("a YAML config with a refused NAT field fails with the field path", () => {
    const r = nodeConfigSchema.safeParse({ services: [{ name: "web", listen: "10.0.0.1:80", forwarding: "nat", proxyProtocol: "v2", backends: [] }] });
    expect(r.success).toBe(false);
    expect(formatIssues(r.error!).join("\n")).toMatch(/services\[0\]\.proxyProtocol: needs forwarding: proxy/);
  });

  it("a backend of the other address family makes the service not programmable, with the reason", () => {
    const snap = snapshotOf([
      [keys.service("web"), { listen: "10.0.0.1:80", forwarding: "nat" }],
      [keys.backend("web", "v6"), { address: "fd00::1", port: 80 }],
    ]);
    expect(natServiceModel(snap.services.get("web")!, null)).toMatch(/backend v6 \(fd00::1\) is not an IPv4 address/);
  });
});

describe("kernel pieces", () => {
  it("the table-size ladder: smallest step ≥ 100 × backends, primes, fixed", () => {
    expect(NAT_TABLE_LADDER.slice(0, 8)).toEqual([101, 211, 401, 809, 1601, 3203, 6421, 12809]);
    expect(natTableSize(1)).toBe(101);
    expect(natTableSize(3)).toBe(401);
    expect(natTableSize(4)).toBe(401);
    expect(natTableSize(100)).toBe(12809);
    expect(natTableSize(656)).toBe(102407);
  });

  it("the seed depends on the cluster name only", () => {
    expect(clusterSeed("prod")).toBe(clusterSeed("prod"));
    expect(clusterSeed("prod")).not.toBe(clusterSeed("staging"));
  });

  it("jhash: the kernel's lookup3 (reference values) and reciprocal_scale", () => {
    // An empty key returns the initial value (JHASH_INITVAL + length + seed); agreement with the
    // kernel itself is tested against the real kernel in nat.test.ts (1000 TCP + 300 UDP flows).
    expect(jhash(new Uint8Array(0), 0)).toBe(0xdeadbeef);
    expect(reciprocalScale(0xffffffff, 401)).toBe(400);
    expect(reciprocalScale(0, 401)).toBe(0);
    expect(reciprocalScale(0x80000000, 10)).toBe(5);
    // Register layout: IPv4 address, then the port in network order padded to 4 bytes.
    expect([...flowKey("10.1.2.3", 0x1234, false)!]).toEqual([10, 1, 2, 3, 0x12, 0x34, 0, 0]);
    expect([...flowKey("fd00::1", 80, true)!]).toEqual([0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
  });

  it("a delta touches only changed slots when the shape is the same, and rebuilds the service when it is not", () => {
    const base: NatServiceModel = { name: "web", id: "s_web", family: 4, protocol: "tcp", vip: "10.0.0.1", port: 80, snat: true, sourceOnly: false, size: 5, slots: ["a . 1", "b . 1", "a . 1", "b . 1", "a . 1"], affinity: null, allow: [], deny: [], sourceRate: 0, sourceBurst: 20, maxConnections: 0, counters: new Map() };
    const m = (s: NatServiceModel) => ({ table: "ballast_t", seed: 7, services: new Map([["web", s]]) });
    const d = renderDelta(m(base), m({ ...base, slots: ["a . 1", "a . 1", "a . 1", "b . 1", "a . 1"] }));
    expect(d.slotsChanged).toBe(1);
    expect(d.script).toBe("delete element inet ballast_t s_web_slots { 1 }\nadd element inet ballast_t s_web_slots { 1 : a . 1 }\n");
    expect(renderDelta(m(base), m(base)).script).toBe("");
    const rebuilt = renderDelta(m(base), m({ ...base, snat: false }));
    expect(rebuilt.servicesRebuilt).toBe(1);
    expect(rebuilt.script).toMatch(/delete chain inet ballast_t s_web\n/);
    expect(renderFull(m(base))).toMatch(/jhash ip saddr \. tcp sport mod 5 seed 0x7 map @s_web_slots/);
  });

  it("full NAT masquerades by default and uses `snat to` the node's source address per family when configured", () => {
    const base: NatServiceModel = { name: "web", id: "s_web", family: 4, protocol: "tcp", vip: "10.0.0.1", port: 80, snat: true, sourceOnly: false, size: 1, slots: ["a . 1"], affinity: null, allow: [], deny: [], sourceRate: 0, sourceBurst: 20, maxConnections: 0, counters: new Map() };
    const post = (source?: { 4?: string; 6?: string }) => renderFull({ table: "t", seed: 7, source, services: new Map([["web", base]]) }).split("\n").filter((l) => l.startsWith("add rule inet t postrouting"));
    expect(post()).toEqual([expect.stringMatching(/@snat4 masquerade$/), expect.stringMatching(/@snat6 masquerade$/)]);
    expect(post({ 4: "10.0.2.11" })).toEqual([expect.stringMatching(/@snat4 snat ip to 10\.0\.2\.11$/), expect.stringMatching(/@snat6 masquerade$/)]);
    expect(post({ 4: "10.0.2.11", 6: "fd00::11" })[1]).toMatch(/@snat6 snat ip6 to fd00::11$/);
  });
});
