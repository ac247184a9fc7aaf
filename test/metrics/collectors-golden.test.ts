// Golden output of the scrape-time collectors outside node/metrics.ts (kernel NAT, DSR, DNS, backend
// gauges, last known good, access log): names, help, types, labels and values byte for byte, so moving
// them onto node/collect.ts (or anything later) cannot change what an alert rule or a dashboard reads.
// The sources are plain objects with the fields the collectors read; what each source counts is
// tested where it lives (test/kernel, test/dns, test/data, test/cluster).

import client from "prom-client";
import { describe, expect, it } from "vitest";
import type { LastKnownGood } from "../../node/control/last-good.js";
import { registerLastGoodMetrics } from "../../node/control/last-good.js";
import type { AccessLog } from "../../node/data/access-log.js";
import { registerAccessLogMetrics } from "../../node/data/access-log.js";
import type { DataPlane } from "../../node/data/plane.js";
import { registerBackendGauges } from "../../node/backend-metrics.js";
import { registerDnsMetrics } from "../../node/dns/metrics.js";
import type { DnsResponder } from "../../node/dns/responder.js";
import type { DsrForwarder } from "../../node/kernel/dsr.js";
import { registerDsrMetrics } from "../../node/kernel/dsr-metrics.js";
import type { KernelForwarder } from "../../node/kernel/forwarder.js";
import { registerKernelMetrics } from "../../node/kernel/metrics.js";
import type { Snapshot } from "../../node/model/snapshot.js";

const svc = (name: string, backends: unknown[], health = "http") => ({ name, spec: { health: { type: health } }, backends });
const backend = (id: string, zone: string, state: string, weight: number, verdict: "up" | "down" | null, routable: boolean, effectiveWeight: number) => ({
  id,
  spec: { zone, state, weight },
  verdict: verdict === null ? null : { state: verdict },
  routable,
  effectiveWeight,
});

function sources(now: number) {
  const snapshot = {
    services: new Map([
      ["web", svc("web", [backend("b1", "z1", "active", 100, "up", true, 100), backend("b2", "z2", "drain", 50, "down", false, 0)])],
      ["raw", svc("raw", [backend("r1", "", "disabled", 0, null, false, 0)], "none")],
    ]),
  };
  const kernel = {
    status: (name: string) => (name === "web" ? { programmed: true } : name === "raw" ? { programmed: false } : undefined),
    stats: { applies: 5, failures: 1, flowsRemoved: 3, lastApplyMs: 1250, lastSlotsChanged: 42 },
  };
  const dsr = {
    current: {},
    lastCounters: new Map([["dsr", new Map([["b1", { packets: 10, bytes: 1000 }], ["b2", { packets: 0, bytes: 0 }]])]]),
    status: (name: string) => (name === "dsr" ? { programmed: true } : name === "cold" ? { programmed: false } : undefined),
    stats: { failures: 2 },
  };
  const dns = {
    stats: { queries: new Map([["A|NOERROR", 7], ["AAAA|NXDOMAIN", 2]]), answers: 9, truncated: 1, dropped: 4, tcpConnections: 3, tcpRefused: 0, rrlDropped: 6, rrlSlipped: 2 },
    cache: { hits: 5 },
    rrl: { size: 11 },
    view: { nodes: [{ live: true }, { live: false }, { live: true }] },
  };
  const plane = { current: snapshot, stats: { backend: (_s: string, id: string) => ({ ejectedUntil: id === "b2" ? now + 60_000 : 0 }) } };
  const lkg = { source: "disk", saves: 4 };
  const log = { written: 12, suppressed: { rate: 1, sampled: 2, overflow: 0 } };
  return { snapshot, kernel, dsr, dns, plane, lkg, log };
}

function register(s: ReturnType<typeof sources>): client.Registry {
  const r = new client.Registry();
  registerKernelMetrics(r, s.kernel as unknown as KernelForwarder, () => s.snapshot as unknown as Snapshot);
  registerDsrMetrics(r, s.dsr as unknown as DsrForwarder, () => ["dsr", "cold", "unknown"]);
  registerDnsMetrics(r, s.dns as unknown as DnsResponder);
  registerBackendGauges(r, s.plane as unknown as DataPlane);
  registerLastGoodMetrics(r, s.lkg as unknown as LastKnownGood);
  registerAccessLogMetrics(r, s.log as unknown as AccessLog);
  return r;
}

describe("scrape-time collectors (golden)", () => {
  it("emit exactly these series", async () => {
    const text = await register(sources(Date.now())).metrics();
    expect(text).toBe(GOLDEN);
  });

  it("read afresh at each scrape: totals are not added up across scrapes, series that left are gone", async () => {
    const s = sources(Date.now());
    const r = register(s);
    const first = await r.metrics();
    expect(await r.metrics()).toBe(first);
    // The kernel no longer carries "raw", DSR has no table yet, a service left the snapshot.
    s.kernel.status = (name: string) => (name === "web" ? { programmed: true } : undefined);
    (s.dsr as { current: unknown }).current = null;
    s.snapshot.services.delete("raw");
    s.log.written = 13;
    const after = await r.metrics();
    expect(after).not.toContain('ballast_kernel_service_programmed{service="raw"}');
    expect(after).not.toContain("ballast_dsr_backend_packets_total{");
    expect(after).not.toContain('service="raw"');
    expect(after).toContain("ballast_access_log_lines_total 13\n");
  });
});

const GOLDEN = `# HELP ballast_kernel_service_programmed 1 while a forwarding: nat service is programmed into nftables, 0 when not (see /api/state for the reason).
# TYPE ballast_kernel_service_programmed gauge
ballast_kernel_service_programmed{service="web"} 1
ballast_kernel_service_programmed{service="raw"} 0

# HELP ballast_kernel_applies_total nftables transactions applied (full or delta).
# TYPE ballast_kernel_applies_total counter
ballast_kernel_applies_total 5

# HELP ballast_kernel_apply_failures_total nftables transactions that failed; the previous ruleset kept forwarding.
# TYPE ballast_kernel_apply_failures_total counter
ballast_kernel_apply_failures_total 1

# HELP ballast_kernel_flows_removed_total Tracked flows removed (backend down, or past its drain timeout).
# TYPE ballast_kernel_flows_removed_total counter
ballast_kernel_flows_removed_total 3

# HELP ballast_kernel_last_apply_seconds Duration of the last nftables transaction.
# TYPE ballast_kernel_last_apply_seconds gauge
ballast_kernel_last_apply_seconds 1.25

# HELP ballast_kernel_last_apply_slots Map slots written by the last nftables transaction (a delta writes only the slots that changed).
# TYPE ballast_kernel_last_apply_slots gauge
ballast_kernel_last_apply_slots 42

# HELP ballast_dsr_backend_packets_total Packets the kernel forwarded to each backend of a dsr service (client to backend; replies bypass the node).
# TYPE ballast_dsr_backend_packets_total counter
ballast_dsr_backend_packets_total{service="dsr",backend="b1",forwarding="dsr"} 10
ballast_dsr_backend_packets_total{service="dsr",backend="b2",forwarding="dsr"} 0

# HELP ballast_dsr_service_programmed 1 while the kernel carries the dsr service on this node, 0 when it is not programmed (see /api/state for the reason).
# TYPE ballast_dsr_service_programmed gauge
ballast_dsr_service_programmed{service="dsr"} 1
ballast_dsr_service_programmed{service="cold"} 0

# HELP ballast_dsr_apply_failures_total DSR nftables transactions the kernel refused (the previous ruleset kept forwarding).
# TYPE ballast_dsr_apply_failures_total counter
ballast_dsr_apply_failures_total 2

# HELP ballast_dns_queries_total DNS queries answered (or dropped by RRL after being read), by query type and response code.
# TYPE ballast_dns_queries_total counter
ballast_dns_queries_total{type="A",rcode="NOERROR"} 7
ballast_dns_queries_total{type="AAAA",rcode="NXDOMAIN"} 2

# HELP ballast_dns_answers_total Address records (A/AAAA) sent in answers.
# TYPE ballast_dns_answers_total counter
ballast_dns_answers_total 9

# HELP ballast_dns_cache_hits_total Queries answered from the reply cache of the current view (same query bytes, same client rotation): no decode, no encode.
# TYPE ballast_dns_cache_hits_total counter
ballast_dns_cache_hits_total 5

# HELP ballast_dns_truncated_total UDP replies truncated (TC) because they did not fit; the client retries over TCP.
# TYPE ballast_dns_truncated_total counter
ballast_dns_truncated_total 1

# HELP ballast_dns_dropped_total Datagrams or frames that were not DNS queries (too short, responses): dropped unanswered.
# TYPE ballast_dns_dropped_total counter
ballast_dns_dropped_total 4

# HELP ballast_dns_tcp_connections_total DNS TCP connections accepted.
# TYPE ballast_dns_tcp_connections_total counter
ballast_dns_tcp_connections_total 3

# HELP ballast_dns_tcp_refused_total DNS TCP connections refused at dns.maxTcpConnections.
# TYPE ballast_dns_tcp_refused_total counter
ballast_dns_tcp_refused_total 0

# HELP ballast_dns_rrl_total UDP replies held back by response rate limiting: dropped, or sent truncated (slip).
# TYPE ballast_dns_rrl_total counter
ballast_dns_rrl_total{action="drop"} 6
ballast_dns_rrl_total{action="slip"} 2

# HELP ballast_dns_rrl_sources Source prefixes RRL tracks now (bounded by dns.rrl.maxSources).
# TYPE ballast_dns_rrl_sources gauge
ballast_dns_rrl_sources 11

# HELP ballast_dns_live_nodes Nodes the DNS view answers with (registered, ready, not draining, with a public address).
# TYPE ballast_dns_live_nodes gauge
ballast_dns_live_nodes 2

# HELP ballast_backend_up 1 when the backend's health verdict is up (or its service has no health check), 0 when down or not yet known.
# TYPE ballast_backend_up gauge
ballast_backend_up{service="web",backend="b1",zone="z1"} 1
ballast_backend_up{service="web",backend="b2",zone="z2"} 0
ballast_backend_up{service="raw",backend="r1",zone=""} 1

# HELP ballast_backend_routable 1 when the backend takes new connections (active, weight > 0, not down).
# TYPE ballast_backend_routable gauge
ballast_backend_routable{service="web",backend="b1",zone="z1"} 1
ballast_backend_routable{service="web",backend="b2",zone="z2"} 0
ballast_backend_routable{service="raw",backend="r1",zone=""} 0

# HELP ballast_backend_state The backend's administrative state: 1 for the current one of active, drain, disabled.
# TYPE ballast_backend_state gauge
ballast_backend_state{service="web",backend="b1",zone="z1",state="active"} 1
ballast_backend_state{service="web",backend="b1",zone="z1",state="drain"} 0
ballast_backend_state{service="web",backend="b1",zone="z1",state="disabled"} 0
ballast_backend_state{service="web",backend="b2",zone="z2",state="active"} 0
ballast_backend_state{service="web",backend="b2",zone="z2",state="drain"} 1
ballast_backend_state{service="web",backend="b2",zone="z2",state="disabled"} 0
ballast_backend_state{service="raw",backend="r1",zone="",state="active"} 0
ballast_backend_state{service="raw",backend="r1",zone="",state="drain"} 0
ballast_backend_state{service="raw",backend="r1",zone="",state="disabled"} 1

# HELP ballast_backend_weight The backend's configured weight (0: no new clients).
# TYPE ballast_backend_weight gauge
ballast_backend_weight{service="web",backend="b1",zone="z1"} 100
ballast_backend_weight{service="web",backend="b2",zone="z2"} 50
ballast_backend_weight{service="raw",backend="r1",zone=""} 0

# HELP ballast_backend_effective_weight The weight new connections are spread by: 0 when not routable, below the configured weight during slow start.
# TYPE ballast_backend_effective_weight gauge
ballast_backend_effective_weight{service="web",backend="b1",zone="z1"} 100
ballast_backend_effective_weight{service="web",backend="b2",zone="z2"} 0
ballast_backend_effective_weight{service="raw",backend="r1",zone=""} 0

# HELP ballast_backend_ejected 1 while this node has passively ejected the backend after connect failures.
# TYPE ballast_backend_ejected gauge
ballast_backend_ejected{service="web",backend="b1",zone="z1"} 0
ballast_backend_ejected{service="web",backend="b2",zone="z2"} 1
ballast_backend_ejected{service="raw",backend="r1",zone=""} 0

# HELP ballast_snapshot_from_disk 1 while the node serves the last known good snapshot from its state directory (etcd not reached since start).
# TYPE ballast_snapshot_from_disk gauge
ballast_snapshot_from_disk 1

# HELP ballast_last_known_good_writes_total Last known good snapshots written to the state directory.
# TYPE ballast_last_known_good_writes_total counter
ballast_last_known_good_writes_total 4

# HELP ballast_access_log_lines_total Access log lines written.
# TYPE ballast_access_log_lines_total counter
ballast_access_log_lines_total 12

# HELP ballast_access_log_suppressed_total Finished connections not logged: rate (over accessLog.ratePerSecond), sampled (left out by accessLog.sample), overflow (output too slow).
# TYPE ballast_access_log_suppressed_total counter
ballast_access_log_suppressed_total{reason="rate"} 1
ballast_access_log_suppressed_total{reason="sampled"} 2
ballast_access_log_suppressed_total{reason="overflow"} 0
`;
