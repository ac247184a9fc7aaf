// Prometheus metrics of the kernel forwarder: whether each NAT service is programmed, applies and
// failed applies, the last apply's duration and size, and tracked flows removed. Read at scrape time.
import type client from "prom-client";
import { collectedGauge, collectedTotal, collectedValue } from "../collect.js";
import type { Snapshot } from "../model/snapshot.js";
import type { KernelForwarder } from "./forwarder.js";

export function registerKernelMetrics(registry: client.Registry, k: KernelForwarder, snapshot: () => Snapshot | null): void {
  collectedGauge({
    name: "ballast_kernel_service_programmed",
    help: "1 while a forwarding: nat service is programmed into nftables, 0 when not (see /api/state for the reason).",
    labelNames: ["service"],
    registry,
    read: (emit) => {
      for (const svc of snapshot()?.services.values() ?? []) {
        const st = k.status(svc.name);
        if (st) emit({ service: svc.name }, st.programmed ? 1 : 0);
      }
    },
  });
  collectedTotal({ name: "ballast_kernel_applies_total", help: "nftables transactions applied (full or delta).", registry, value: () => k.stats.applies });
  collectedTotal({ name: "ballast_kernel_apply_failures_total", help: "nftables transactions that failed; the previous ruleset kept forwarding.", registry, value: () => k.stats.failures });
  collectedTotal({ name: "ballast_kernel_flows_removed_total", help: "Tracked flows removed (backend down, or past its drain timeout).", registry, value: () => k.stats.flowsRemoved });
  collectedValue({ name: "ballast_kernel_last_apply_seconds", help: "Duration of the last nftables transaction.", registry, value: () => k.stats.lastApplyMs / 1000 });
  collectedValue({
    name: "ballast_kernel_last_apply_slots",
    help: "Map slots written by the last nftables transaction (a delta writes only the slots that changed).",
    registry,
    value: () => k.stats.lastSlotsChanged,
  });
}
