// Prometheus metrics of the kernel forwarder: whether each NAT service is programmed, applies and
// failed applies, the last apply's duration and size, and tracked flows removed. Read at scrape time.
import client from "prom-client";
import { collectedCounter } from "../collect.js";
import type { Snapshot } from "../model/snapshot.js";
import type { KernelForwarder } from "./forwarder.js";

export function registerKernelMetrics(r: client.Registry, k: KernelForwarder, snapshot: () => Snapshot | null): void {
  new client.Gauge({
    name: "ballast_kernel_service_programmed",
    help: "1 while a forwarding: nat service is programmed into nftables, 0 when not (see /api/state for the reason).",
    labelNames: ["service"],
    registers: [r],
    collect() {
      this.reset();
      for (const svc of snapshot()?.services.values() ?? []) {
        const st = k.status(svc.name);
        if (st) this.set({ service: svc.name }, st.programmed ? 1 : 0);
      }
    },
  });
  const counter = (name: string, help: string, read: () => number) => collectedCounter({ name, help, registry: r, read: (emit) => emit({}, read()) });
  counter("ballast_kernel_applies_total", "nftables transactions applied (full or delta).", () => k.stats.applies);
  counter("ballast_kernel_apply_failures_total", "nftables transactions that failed; the previous ruleset kept forwarding.", () => k.stats.failures);
  counter("ballast_kernel_flows_removed_total", "Tracked flows removed (backend down, or past its drain timeout).", () => k.stats.flowsRemoved);
  new client.Gauge({
    name: "ballast_kernel_last_apply_seconds",
    help: "Duration of the last nftables transaction.",
    registers: [r],
    collect() {
      this.set(k.stats.lastApplyMs / 1000);
    },
  });
  new client.Gauge({
    name: "ballast_kernel_last_apply_slots",
    help: "Map slots written by the last nftables transaction (a delta writes only the slots that changed).",
    registers: [r],
    collect() {
      this.set(k.stats.lastSlotsChanged);
    },
  });
}
