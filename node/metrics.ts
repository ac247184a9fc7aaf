// Prometheus metrics. Hot-path counters are plain numbers on the stats objects; prom-client reads them
// at scrape time (collect), so a connection costs no label lookups. Histograms use cached children.
import client from "prom-client";
import { type ChildCache, childCache, collectedCounter, collectedGauge } from "./collect.js";
import type { DataPlane, PlaneHooks } from "./data/plane.js";
import type { Snapshot } from "./model/snapshot.js";
import { CONNECT_FAILURE_REASONS, REFUSE_REASONS, type StatsRegistry, UDP_DISCARD_REASONS } from "./model/stats.js";

export class Metrics {
  readonly registry = new client.Registry();
  readonly connectLatency: client.Histogram<"service">;
  private readonly latency: ChildCache<"service">;
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
      collectedCounter({ name, help, labelNames: ["service", "forwarding"], registry: r, read: (emit) => {
        for (const s of stats.services.values()) emit({ service: s.service, forwarding: mode(s.service) }, read(s));
      } });
    svcCounter("ballast_connections_accepted_total", "Connections (and UDP flows) accepted per service.", (s) => s.accepted);
    svcCounter("ballast_service_bytes_in_total", "Bytes from clients to backends per service.", (s) => s.bytesIn);
    svcCounter("ballast_service_bytes_out_total", "Bytes from backends to clients per service.", (s) => s.bytesOut);
    svcCounter("ballast_connect_retries_total", "Connect attempts on another backend after a failure.", (s) => s.retries);
    svcCounter("ballast_udp_flows_total", "UDP flows created.", (s) => s.udpFlows);
    svcCounter("ballast_udp_datagrams_in_total", "UDP datagrams received from clients.", (s) => s.udpDatagramsIn);
    svcCounter("ballast_udp_datagrams_out_total", "UDP datagrams relayed back to clients.", (s) => s.udpDatagramsOut);
    svcCounter("ballast_udp_datagrams_dropped_total", "UDP datagrams that could not be delivered.", (s) => s.udpDropped);
    collectedCounter({
      name: "ballast_udp_datagrams_discarded_total",
      help: "UDP datagrams discarded per service and reason (also counted in ballast_udp_datagrams_dropped_total).",
      labelNames: ["service", "reason"],
      registry: r,
      read: (emit) => {
        for (const s of stats.services.values()) for (const reason of UDP_DISCARD_REASONS) emit({ service: s.service, reason }, s.udpDiscarded[reason]);
      },
    });
    collectedGauge({
      name: "ballast_connections_active",
      help: "Open connections and UDP flows per service.",
      labelNames: ["service"],
      registry: r,
      read: (emit) => {
        for (const s of stats.services.values()) emit({ service: s.service }, s.active);
      },
    });
    collectedCounter({
      name: "ballast_connections_refused_total",
      help: "Connections refused per service and reason.",
      labelNames: ["service", "reason"],
      registry: r,
      read: (emit) => {
        for (const s of stats.services.values()) for (const reason of REFUSE_REASONS) emit({ service: s.service, reason }, s.refused[reason]);
      },
    });
    const beCounter = (name: string, help: string, read: (b: import("./model/stats.js").BackendCounters) => number) =>
      collectedCounter({ name, help, labelNames: ["service", "backend", "forwarding"], registry: r, read: (emit) => {
        for (const b of stats.backends.values()) emit({ service: b.service, backend: b.id, forwarding: mode(b.service) }, read(b));
      } });
    beCounter("ballast_backend_connections_total", "Connections (and UDP flows) sent to each backend.", (b) => b.connections);
    beCounter("ballast_backend_bytes_in_total", "Bytes sent to each backend.", (b) => b.bytesIn);
    beCounter("ballast_backend_bytes_out_total", "Bytes received from each backend.", (b) => b.bytesOut);
    collectedGauge({
      name: "ballast_backend_connections_active",
      help: "Open connections and UDP flows per backend (forwarding nat: tracked flows in conntrack).",
      labelNames: ["service", "backend", "forwarding"],
      registry: r,
      read: (emit) => {
        for (const b of stats.backends.values()) emit({ service: b.service, backend: b.id, forwarding: mode(b.service) }, b.active);
      },
    });
    collectedCounter({
      name: "ballast_backend_connect_failures_total",
      help: "Failed connects to each backend, by reason.",
      labelNames: ["service", "backend", "reason"],
      registry: r,
      read: (emit) => {
        for (const b of stats.backends.values())
          for (const reason of CONNECT_FAILURE_REASONS) emit({ service: b.service, backend: b.id, reason }, b.connectFailures[reason]);
      },
    });
    collectedCounter({
      name: "ballast_zone_routed_total",
      help: "New clients of locality: prefer-zone services routed by this node's zone plan: kept in its zone (local) or sent to another (spillover).",
      labelNames: ["service", "decision"],
      registry: r,
      read: (emit) => {
        for (const s of stats.services.values()) {
          if (s.zoneLocal === 0 && s.zoneSpillover === 0) continue;
          emit({ service: s.service, decision: "local" }, s.zoneLocal);
          emit({ service: s.service, decision: "spillover" }, s.zoneSpillover);
        }
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
    this.secondsSinceSync = collectedGauge({
      name: "ballast_store_staleness_seconds",
      help: "Seconds since the node last knew it was in sync with etcd (0 while connected).",
      registry: r,
      read: (emit) => emit({}, this.lastSync === 0 ? 0 : Math.max(0, (Date.now() - this.lastSync) / 1000)),
    });
    this.latency = childCache(this.connectLatency);
    this.planeHooks = {
      onConnected: (svc, _t, seconds) => this.latency(svc.name).observe(seconds),
      onEject: (svc, t) => this.ejections.inc({ service: svc.name, backend: t.id }),
    };
  }

  /** Gauges read from the proxy data plane at scrape time: its descriptor budget and which listeners are bound. */
  observePlane(plane: DataPlane): void {
    const r = this.registry;
    collectedGauge({
      name: "ballast_fd_budget",
      help: "The data plane's descriptor budget: capacity (RLIMIT_NOFILE less headroom and reserves) and in_use (2 per TCP connection, 1 per UDP flow).",
      labelNames: ["kind"],
      registry: r,
      read: (emit) => {
        const b = plane.fds;
        emit({ kind: "capacity" }, Number.isFinite(b.capacity) ? b.capacity : -1);
        emit({ kind: "in_use" }, b.inUse);
      },
    });
    collectedGauge({
      name: "ballast_service_listening",
      help: "1 while the service's listener is bound on this node, 0 when it failed (see listenerError in /api/state).",
      labelNames: ["service"],
      registry: r,
      read: (emit) => {
        for (const l of plane.listeners.values()) emit({ service: l.svc.name }, l.error === null ? 1 : 0);
      },
    });
  }

  /**
   * Drops counters of backends and services that left `snapshot` and have nothing open (see
   * StatsRegistry.prune), with their series kept outside the registry. Called on every snapshot and
   * before every scrape (a backend with connections when it left is dropped once they closed).
   */
  prune(stats: StatsRegistry, snapshot: Parameters<StatsRegistry["prune"]>[0]): string[] {
    const dropped = stats.prune(snapshot);
    for (const b of dropped.backends) this.ejections.remove({ service: b.service, backend: b.id });
    for (const s of dropped.services) this.latency.forget(s);
    return dropped.services;
  }

  /**
   * The zone of each backend of the routing snapshot as an info metric (join on service, backend), so
   * the backend series aggregate by zone without a label change on every one of them.
   */
  backendZones(current: () => Snapshot | null): void {
    collectedGauge({
      name: "ballast_backend_zone_info",
      help: "1 per backend of the applied snapshot, labelled with its zone.",
      labelNames: ["service", "backend", "zone"],
      registry: this.registry,
      read: (emit) => {
        for (const svc of current()?.services.values() ?? []) for (const b of svc.backends) emit({ service: svc.name, backend: b.id, zone: b.spec.zone }, 1);
      },
    });
  }
}
