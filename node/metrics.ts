// Prometheus metrics. Hot-path counters are plain numbers on the stats objects; prom-client reads them
// at scrape time (collect), so a connection costs no label lookups. Histograms use cached children.
import client from "prom-client";
import type { PlaneHooks } from "./data/plane.js";
import { CONNECT_FAILURE_REASONS, REFUSE_REASONS, type StatsRegistry } from "./model/stats.js";

export class Metrics {
  readonly registry = new client.Registry();
  readonly connectLatency: client.Histogram<"service">;
  private readonly latencyChildren = new Map<string, client.Histogram.Internal<"service">>();
  readonly invalidRecords: client.Gauge<"kind">;
  readonly invalidRecordsTotal: client.Counter;
  readonly snapshotRevision: client.Gauge;
  readonly snapshotSwaps: client.Counter;
  readonly storeConnected: client.Gauge;
  readonly secondsSinceSync: client.Gauge;
  readonly ejections: client.Counter<"service" | "backend">;
  /** Set by the node: last time the store was in sync (ms), for the staleness gauge. */
  lastSync = 0;

  /** The forwarding label of a service's series; the node points it at the applied snapshot. */
  forwardingOf: (service: string) => string = () => "proxy";

  /** Handed to the data plane at construction: connect latency and ejections. */
  readonly planeHooks: PlaneHooks;

  constructor(stats: StatsRegistry, nodeId: string) {
    const r = this.registry;
    // The forwarding mode of a service (proxy, or nat: the kernel forwarder fills the same counters).
    const mode = (service: string): string => this.forwardingOf(service);
    r.setDefaultLabels({ node: nodeId });
    client.collectDefaultMetrics({ register: r, prefix: "ballast_process_" });

    const svcCounter = (name: string, help: string, read: (s: import("./model/stats.js").ServiceCounters) => number) =>
      new client.Counter({
        name,
        help,
        labelNames: ["service", "forwarding"],
        registers: [r],
        collect() {
          this.reset();
          for (const s of stats.services.values()) this.inc({ service: s.service, forwarding: mode(s.service) }, read(s));
        },
      });
    svcCounter("ballast_connections_accepted_total", "Connections (and UDP flows) accepted per service.", (s) => s.accepted);
    svcCounter("ballast_service_bytes_in_total", "Bytes from clients to backends per service.", (s) => s.bytesIn);
    svcCounter("ballast_service_bytes_out_total", "Bytes from backends to clients per service.", (s) => s.bytesOut);
    svcCounter("ballast_connect_retries_total", "Connect attempts on another backend after a failure.", (s) => s.retries);
    svcCounter("ballast_udp_flows_total", "UDP flows created.", (s) => s.udpFlows);
    svcCounter("ballast_udp_datagrams_in_total", "UDP datagrams received from clients.", (s) => s.udpDatagramsIn);
    svcCounter("ballast_udp_datagrams_out_total", "UDP datagrams relayed back to clients.", (s) => s.udpDatagramsOut);
    svcCounter("ballast_udp_datagrams_dropped_total", "UDP datagrams that could not be delivered.", (s) => s.udpDropped);
    new client.Gauge({
      name: "ballast_connections_active",
      help: "Open connections and UDP flows per service.",
      labelNames: ["service"],
      registers: [r],
      collect() {
        this.reset();
        for (const s of stats.services.values()) this.set({ service: s.service }, s.active);
      },
    });
    new client.Counter({
      name: "ballast_connections_refused_total",
      help: "Connections refused per service and reason.",
      labelNames: ["service", "reason"],
      registers: [r],
      collect() {
        this.reset();
        for (const s of stats.services.values()) for (const reason of REFUSE_REASONS) this.inc({ service: s.service, reason }, s.refused[reason]);
      },
    });
    const beCounter = (name: string, help: string, read: (b: import("./model/stats.js").BackendCounters) => number) =>
      new client.Counter({
        name,
        help,
        labelNames: ["service", "backend", "forwarding"],
        registers: [r],
        collect() {
          this.reset();
          for (const b of stats.backends.values()) this.inc({ service: b.service, backend: b.id, forwarding: mode(b.service) }, read(b));
        },
      });
    beCounter("ballast_backend_connections_total", "Connections (and UDP flows) sent to each backend.", (b) => b.connections);
    beCounter("ballast_backend_bytes_in_total", "Bytes sent to each backend.", (b) => b.bytesIn);
    beCounter("ballast_backend_bytes_out_total", "Bytes received from each backend.", (b) => b.bytesOut);
    new client.Gauge({
      name: "ballast_backend_connections_active",
      help: "Open connections and UDP flows per backend (forwarding nat: tracked flows in conntrack).",
      labelNames: ["service", "backend", "forwarding"],
      registers: [r],
      collect() {
        this.reset();
        for (const b of stats.backends.values()) this.set({ service: b.service, backend: b.id, forwarding: mode(b.service) }, b.active);
      },
    });
    new client.Counter({
      name: "ballast_backend_connect_failures_total",
      help: "Failed connects to each backend, by reason.",
      labelNames: ["service", "backend", "reason"],
      registers: [r],
      collect() {
        this.reset();
        for (const b of stats.backends.values())
          for (const reason of CONNECT_FAILURE_REASONS) this.inc({ service: b.service, backend: b.id, reason }, b.connectFailures[reason]);
      },
    });
    this.ejections = new client.Counter({ name: "ballast_backend_ejections_total", help: "Passive ejections after connect failures.", labelNames: ["service", "backend"], registers: [r] });
    this.connectLatency = new client.Histogram({
      name: "ballast_upstream_connect_seconds",
      help: "Time to connect to a backend.",
      labelNames: ["service"],
      buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
      registers: [r],
    });
    this.invalidRecords = new client.Gauge({ name: "ballast_invalid_records", help: "Records skipped in the applied snapshot, by kind.", labelNames: ["kind"], registers: [r] });
    this.invalidRecordsTotal = new client.Counter({ name: "ballast_invalid_records_total", help: "Invalid records seen (counted once per key and reason).", registers: [r] });
    this.snapshotRevision = new client.Gauge({ name: "ballast_snapshot_revision", help: "etcd revision of the applied snapshot.", registers: [r] });
    this.snapshotSwaps = new client.Counter({ name: "ballast_snapshot_swaps_total", help: "Snapshots applied.", registers: [r] });
    this.storeConnected = new client.Gauge({ name: "ballast_store_connected", help: "1 while the etcd watch is connected.", registers: [r] });
    const self = this;
    this.secondsSinceSync = new client.Gauge({
      name: "ballast_store_staleness_seconds",
      help: "Seconds since the node last knew it was in sync with etcd (0 while connected).",
      registers: [r],
      collect() {
        this.set(self.lastSync === 0 ? 0 : Math.max(0, (Date.now() - self.lastSync) / 1000));
      },
    });
    this.planeHooks = {
      onConnected: (svc, _t, seconds) => this.latency(svc.name).observe(seconds),
      onEject: (svc, t) => this.ejections.inc({ service: svc.name, backend: t.id }),
    };
  }

  /**
   * Drops counters of backends and services that left `snapshot` and have nothing open (see
   * StatsRegistry.prune), with their series kept outside the registry. Called on every snapshot and
   * before every scrape (a backend with connections when it left is dropped once they closed).
   */
  prune(stats: StatsRegistry, snapshot: Parameters<StatsRegistry["prune"]>[0]): string[] {
    const dropped = stats.prune(snapshot);
    for (const b of dropped.backends) this.ejections.remove({ service: b.service, backend: b.id });
    for (const s of dropped.services) {
      this.latencyChildren.delete(s);
      this.connectLatency.remove({ service: s });
    }
    return dropped.services;
  }

  private latency(service: string): client.Histogram.Internal<"service"> {
    let child = this.latencyChildren.get(service);
    if (!child) {
      child = this.connectLatency.labels(service);
      this.latencyChildren.set(service, child);
    }
    return child;
  }
}
