// Prometheus metrics of `forwarding: dsr`: per-backend packets from the kernel's named counters
// (read just before each scrape; client → backend only, since replies bypass the node; the bytes land in the
// proxy's ballast_backend_bytes_in_total with forwarding="dsr"), whether each DSR service is
// programmed, and failed applies.
import client from "prom-client";
import type { DsrForwarder } from "./dsr.js";

export function registerDsrMetrics(registry: client.Registry, dsr: DsrForwarder, services: () => Iterable<string>): void {
  const perBackend = (name: string, help: string, read: (c: { packets: number; bytes: number }) => number) =>
    new client.Counter({
      name,
      help,
      labelNames: ["service", "backend", "forwarding"],
      registers: [registry],
      collect() {
        this.reset();
        if (dsr.current === null) return;
        // Read by the node just before each scrape (the same read feeds ballast_backend_bytes_in_total).
        for (const [service, backends] of dsr.lastCounters) {
          for (const [backend, c] of backends) this.inc({ service, backend, forwarding: "dsr" }, read(c));
        }
      },
    });
  perBackend("ballast_dsr_backend_packets_total", "Packets the kernel forwarded to each backend of a dsr service (client to backend; replies bypass the node).", (c) => c.packets);
  new client.Gauge({
    name: "ballast_dsr_service_programmed",
    help: "1 while the kernel carries the dsr service on this node, 0 when it is not programmed (see /api/state for the reason).",
    labelNames: ["service"],
    registers: [registry],
    collect() {
      this.reset();
      for (const s of services()) {
        const st = dsr.status(s);
        if (st) this.set({ service: s }, st.programmed ? 1 : 0);
      }
    },
  });
  new client.Counter({
    name: "ballast_dsr_apply_failures_total",
    help: "DSR nftables transactions the kernel refused (the previous ruleset kept forwarding).",
    registers: [registry],
    collect() {
      this.reset();
      this.inc(dsr.stats.failures);
    },
  });
}
