// `ballast dns …` and the zone-aware parts of `ballast service put`, `status` and `route`, run as the
// real CLI against a real etcd and nodes; the answers are checked with dig.
import { describe, expect, it } from "vitest";
import { startTcpEcho } from "../helpers/backends.js";
import { ballastCli } from "../helpers/cli.js";
import type { EtcdProcess } from "../helpers/etcd.js";
import { startNode } from "../helpers/node.js";
import { useSharedEtcd } from "../helpers/suite.js";
import { waitFor } from "../helpers/wait.js";
import { dig } from "./dig.js";

let etcd: EtcdProcess;
useSharedEtcd((e) => {
  etcd = e;
});
const ballast = ballastCli(() => etcd.endpoint, "dnscli");

describe("ballast dns", () => {
  it("sets the zone and a service's name, rejects a bad record, shows the view; status groups backends by zone; route explains locality", { timeout: 240_000 }, async () => {
    const a = await startTcpEcho("a1");
    const b = await startTcpEcho("b1");
    expect((await ballast("service", "put", "web", "--listen", "127.0.0.1:0", "--locality", "prefer-zone", "--min-healthy-share", "0.5")).code).toBe(0);
    expect(JSON.parse((await etcd.get("/ballast/dnscli/services/web"))!)).toEqual({ listen: "127.0.0.1:0", locality: "prefer-zone", zoneAware: { minHealthyShare: 0.5 } });
    // Backends through etcdctl: `backend add --zone` has its own test; each CLI run costs seconds on a busy machine.
    await etcd.put("/ballast/dnscli/backends/web/b1", JSON.stringify({ address: "127.0.0.1", port: b.port, zone: "b" }));
    await etcd.put("/ballast/dnscli/backends/web/a1", JSON.stringify({ address: "127.0.0.1", port: a.port, zone: "a" }));
    expect((await ballast("dns", "set", "--zone", "lb.test.", "--ttl", "7")).code).toBe(0);
    expect((await ballast("dns", "service", "web", "--name", "www", "--locality", "prefer-zone")).code).toBe(0);
    expect((await ballast("dns", "client-zone", "a", "127.0.8.0/24")).code).toBe(0);
    const bad = await ballast("dns", "set", "--zone", "not a name");
    expect(bad.code).toBe(1);
    expect(bad.stderr).toMatch(/^ballast: dns record is invalid: zone: expected a DNS name/);
    const rec = JSON.parse((await ballast("dns", "get")).stdout);
    expect(rec).toEqual({ zone: "lb.test.", ttl: 7, services: { web: { name: "www", locality: "prefer-zone", publish: true } }, clientZones: { a: ["127.0.8.0/24"] } });

    const n1 = await startNode({ node: { id: "n1", zone: "a", publicAddresses: ["127.0.0.21"] }, cluster: "dnscli", etcd: { endpoints: [etcd.endpoint], leaseTtl: 2 }, dns: { listen: "127.0.0.1:0" } });
    await startNode({ node: { id: "n2", zone: "b", publicAddresses: ["127.0.0.22"] }, cluster: "dnscli", etcd: { endpoints: [etcd.endpoint], leaseTtl: 2 } });
    await waitFor(() => n1.dns!.describe().names.find((x) => x.name === "www.lb.test")?.addresses.length === 2, { message: "both nodes in the view" });
    const fromA = await dig(n1.dns!.responder.port, "www.lb.test", "A", ["-b", "127.0.8.1"]);
    expect(fromA.answers).toEqual(["127.0.0.21", "127.0.0.22"]);
    expect(fromA.raw).toMatch(/www\.lb\.test\.\s+7\s+IN\s+A/);

    const show = await ballast("dns", "show", "--node", n1.admin.address);
    expect(show.stdout).toMatch(/zone lb\.test, serial \d+/);
    expect(show.stdout).toMatch(/www\.lb\.test\s+web\s+7\s+prefer-zone\s+127\.0\.0\.21 \(n1, zone a\), 127\.0\.0\.22 \(n2, zone b\)/);

    const status = await ballast("status");
    const backendBlock = status.stdout.slice(status.stdout.indexOf("BACKENDS"));
    expect(backendBlock.indexOf(" a1 ")).toBeLessThan(backendBlock.indexOf(" b1 "));
    expect(backendBlock).toMatch(/web\s+a\s+a1/);
    expect(status.stdout).toMatch(/DNS \(zone lb\.test/);

    const route = await ballast("route", "web", "203.0.113.7", "--node", n1.admin.address);
    expect(route.stdout).toMatch(/a1 \(127\.0\.0\.1:\d+\)\s+zone-local\s+n1/);
  });
});
