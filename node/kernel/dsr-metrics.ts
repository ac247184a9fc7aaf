// Prometheus metrics of `forwarding: dsr`: per-backend packets from the kernel's named counters
// (read just before each scrape; client → backend only, since replies bypass the node; the bytes land in the
// proxy's ballast_backend_bytes_in_total with forwarding="dsr"), whether each DSR service is
// programmed, and failed applies.
import type client from "prom-client";
import { collectedCounter, collectedGauge, collectedTotal } from "../collect.js";
import type { DsrForwarder } from "./dsr.js";

export function registerDsrMetrics(registry: client.Registry, dsr: DsrForwarder, services: () => Iterable<string>): void {
  collectedCounter({
    name: "ballast_dsr_backend_packets_total",
    help: "Packets the kernel forwarded to each backend of a dsr service (client to backend; replies bypass the node).",
    labelNames: ["service", "backend", "forwarding"],
    registry,
    read: (emit) => {
      if (dsr.current === null) return;
      // Read by the node just before each scrape (the same read feeds ballast_backend_bytes_in_total).
      for (const [service, backends] of dsr.lastCounters) {
        for (const [backend, c] of backends) emit({ service, backend, forwarding: "dsr" }, c.packets);
      }
    },
  });
  collectedGauge({
    name: "ballast_dsr_service_programmed",
    help: "1 while the kernel carries the dsr service on this node, 0 when it is not programmed (see /api/state for the reason).",
    labelNames: ["service"],
    registry,
    read: (emit) => {
      for (const s of services()) {
        const st = dsr.status(s);
        if (st) emit({ service: s }, st.programmed ? 1 : 0);
      }
    },
  });
  collectedTotal({
    name: "ballast_dsr_apply_failures_total",
    help: "DSR nftables transactions the kernel refused (the previous ruleset kept forwarding).",
    registry,
    value: () => dsr.stats.failures,
  });
}
