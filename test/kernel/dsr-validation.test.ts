// What `forwarding: dsr` refuses (naming the field), and the shape of the transactions the DSR
// forwarder writes: pin maps are never flushed, unchanged services write nothing but the dispatch map.
// No kernel here: records, snapshots and rendered nft text.
import { describe, expect, it } from "vitest";
import { parseServiceValue, RecordTable } from "../../node/control/records.js";
import { StatsRegistry } from "../../node/model/stats.js";
import { dsrServicePlan } from "../../node/kernel/dsr.js";
import { type DsrServicePlan, type DsrTablePlan, renderDsr } from "../../node/kernel/dsr-ruleset.js";
import { buildSnapshot } from "../../node/model/snapshot.js";
import { KeySchema } from "../../shared/keys.js";
import { formatIssues, nodeConfigSchema } from "../../shared/schema.js";
import { labSnapshot } from "./lab.js";

const refusal = (record: Record<string, unknown>): string => {
  try {
    parseServiceValue("web", Buffer.from(JSON.stringify({ listen: "10.0.0.1:80", forwarding: "dsr", ...record })));
    return "";
  } catch (err) {
    return (err as Error).message;
  }
};

describe("forwarding: dsr validation", () => {
  it.each([
    { description: "PROXY protocol", record: { proxyProtocol: "v2" }, field: /proxyProtocol: needs forwarding: proxy/ },
    { description: "accepting PROXY headers", record: { acceptProxy: { version: "v1", from: ["10.0.0.0/8"] } }, field: /acceptProxy: needs forwarding: proxy/ },
    { description: "slow start", record: { slowStart: "30s" }, field: /slowStart: needs forwarding: proxy/ },
    { description: "a stateful algorithm", record: { algorithm: "least-conn" }, field: /algorithm: least-conn needs forwarding: proxy/ },
    { description: "per-backend connection caps", record: { limits: { maxConnectionsPerBackend: 10 } }, field: /limits\.maxConnectionsPerBackend: needs forwarding: proxy/ },
    { description: "a service connection cap", record: { limits: { maxConnections: 10 } }, field: /limits\.maxConnections: needs forwarding: proxy or nat/ },
    { description: "a per-source rate", record: { limits: { sourceRate: 5 } }, field: /limits\.sourceRate: / },
    { description: "shared affinity entries", record: { affinity: { mode: "source-ip" } }, field: /affinity\.mode: needs forwarding: proxy or nat/ },
    { description: "nat options", record: { nat: { snat: false } }, field: /nat: only for forwarding: nat/ },
    { description: "zone-aware routing", record: { locality: "prefer-zone" }, field: /locality: prefer-zone needs forwarding: proxy/ },
    { description: "a wildcard listen address", record: { listen: "0.0.0.0:80" }, field: /listen: forwarding dsr needs the service's own address/ },
    { description: "an IPv6 VIP", record: { listen: "[fd00::1]:80" }, field: /listen: forwarding dsr needs the service's own IPv4 address/ },
    { description: "port 0", record: { listen: "10.0.0.1:0" }, field: /listen: forwarding dsr needs a fixed port/ },
    { description: "an IPv6 access entry", record: { access: { deny: ["fd00::/8"] } }, field: /access\.deny\[0\]: forwarding dsr is IPv4 only/ },
  ])("refuses $description, naming the field", ({ record, field }) => {
    expect(refusal(record)).toMatch(field);
  });

  it("accepts a plain DSR service and hashes with maglev by default (source-ip when asked)", () => {
    expect(refusal({})).toBe("");
    expect(parseServiceValue("web", Buffer.from(JSON.stringify({ listen: "10.0.0.1:80", forwarding: "dsr" }))).algorithm).toBe("maglev");
    expect(parseServiceValue("web", Buffer.from(JSON.stringify({ listen: "10.0.0.1:53", protocol: "udp", forwarding: "dsr", algorithm: "source-ip", access: { allow: ["10.0.0.0/8"] } }))).algorithm).toBe("source-ip");
  });

  it("refuses a backend whose port differs from the listen port (no port translation) or that is not IPv4, and keeps the others", () => {
    const snap = labSnapshotAllowInvalid({
      web: {
        service: { listen: "10.0.0.1:80", forwarding: "dsr" },
        backends: { ok: { address: "10.0.1.1", port: 80 }, moved: { address: "10.0.1.2", port: 8080 }, v6: { address: "fd00::2", port: 80 }, name: { address: "backend.local", port: 80 } },
      },
    });
    const reasons = new Map(snap.invalid.map((r) => [r.key.split("/").pop(), r.reason]));
    expect(reasons.get("moved")).toBe("port: forwarding dsr cannot translate ports: backend port 8080 must equal the service's listen port 80");
    expect(reasons.get("v6")).toMatch(/^address: forwarding dsr needs an IPv4 backend address/);
    expect(reasons.get("name")).toMatch(/^address: forwarding dsr needs an IPv4 backend address/);
    expect(snap.services.get("web")!.backends.map((b) => b.id)).toEqual(["ok"]);
  });

  it("a node config names the DSR interface; a bad one fails with its field path, and so does a DSR service in the file", () => {
    const ok = nodeConfigSchema.safeParse({ dsr: { interface: "eth0" } });
    expect(ok.success).toBe(true);
    const bad = nodeConfigSchema.safeParse({ dsr: { interface: "a name with spaces" } });
    expect(bad.success).toBe(false);
    if (!bad.success) expect(formatIssues(bad.error).join("\n")).toMatch(/^dsr\.interface: expected a network interface name/);
    const svc = nodeConfigSchema.safeParse({ services: [{ name: "web", listen: "10.0.0.1:80", forwarding: "dsr", proxyProtocol: "v1" }] });
    expect(svc.success).toBe(false);
    if (!svc.success) expect(formatIssues(svc.error).join("\n")).toMatch(/services\[0\]\.proxyProtocol: needs forwarding: proxy/);
  });
});

/** A snapshot through the real record parser and builder, invalid records kept in `invalid`. */
function labSnapshotAllowInvalid(services: Record<string, { service: Record<string, unknown>; backends: Record<string, Record<string, unknown>> }>) {
  const keys = KeySchema.forCluster("v");
  const kvs = [];
  for (const [name, s] of Object.entries(services)) {
    kvs.push({ key: keys.service(name), value: Buffer.from(JSON.stringify(s.service)), modRevision: 1, lease: "0" });
    for (const [id, b] of Object.entries(s.backends)) kvs.push({ key: keys.backend(name, id), value: Buffer.from(JSON.stringify(b)), modRevision: 1, lease: "0" });
  }
  const table = new RecordTable(keys);
  table.reset(kvs, 1);
  return buildSnapshot(table.input(new Map()), new StatsRegistry());
}

describe("DSR transactions", () => {
  const plan = (states: Record<string, "up" | "down">, extra: Record<string, unknown> = {}): DsrTablePlan => {
    const backends: Record<string, Record<string, unknown>> = {};
    const ids = Object.keys(states);
    ids.forEach((id, i) => {
      backends[id] = { address: `10.0.1.${i + 1}`, port: 80 };
    });
    const snap = labSnapshot(1, { web: { service: { listen: "10.0.0.1:80", forwarding: "dsr", ...extra }, backends, down: ids.filter((id) => states[id] === "down") } });
    const p = dsrServicePlan(snap.services.get("web")!, 7) as DsrServicePlan;
    return { table: "ballast_t", device: "eth0", services: new Map([["web", p]]) };
  };
  const flowsFlushed = (script: string) => /flush map netdev ballast_t dsr_web_\w+_flows/.test(script) || /delete map netdev ballast_t dsr_web_\w+_flows/.test(script);

  it("the first apply declares everything; the slots are the picker's table; pins are never flushed", () => {
    const p = plan({ b1: "up", b2: "up" });
    const s = p.services.get("web")!;
    expect(s.modulus).toBeGreaterThanOrEqual(200);
    expect(new Set(s.slots)).toEqual(new Set(s.backends.map((b) => b.key)));
    const first = renderDsr(null, p);
    expect(first).toMatch(/add chain netdev ballast_t ingress \{ type filter hook ingress device "eth0" priority -500; policy accept; \}/);
    expect(first).toMatch(/flags dynamic,timeout; timeout 300s;/);
    expect(first).toMatch(new RegExp(`jhash ip saddr \\. th sport mod ${s.modulus} seed 0x00000007 map @dsr_web_\\w+_slots`));
    expect(flowsFlushed(first)).toBe(false);
  });

  it("an unchanged snapshot rewrites nothing but the dispatch map; a verdict flip rewrites slots and backends, not the chain or the pins", () => {
    const a = plan({ b1: "up", b2: "up", b3: "up" });
    const same = renderDsr(a, plan({ b1: "up", b2: "up", b3: "up" }));
    expect(same).not.toMatch(/_slots|_backends|chain netdev ballast_t dsr_/);
    const flip = renderDsr(a, plan({ b1: "up", b2: "down", b3: "up" }));
    expect(flip).toMatch(/flush map netdev ballast_t dsr_web_\w+_slots/);
    expect(flip).toMatch(/flush map netdev ballast_t dsr_web_\w+_backends/);
    expect(flip).toMatch(/delete counter netdev ballast_t dsr_web_\w+_b0a000102/);
    expect(flip).not.toMatch(/flush chain/);
    expect(flowsFlushed(flip)).toBe(false);
  });

  it("a new idle timeout declares a new pin map and drops the old one only after the chain no longer uses it", () => {
    const a = plan({ b1: "up" });
    const b = plan({ b1: "up" }, { timeouts: { idle: "10m" } });
    const script = renderDsr(a, b).split("\n");
    const flush = script.findIndex((l) => /^flush chain netdev ballast_t dsr_web_/.test(l));
    const drop = script.findIndex((l) => /^delete map netdev ballast_t dsr_web_\w+_flows_300s_/.test(l));
    expect(flush).toBeGreaterThanOrEqual(0);
    expect(drop).toBeGreaterThan(flush);
    expect(script.some((l) => /_flows_600s_65536 \{/.test(l))).toBe(true);
  });
});
