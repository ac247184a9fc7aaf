// Per-backend gauges from the applied snapshot, read at scrape time: what an alert rule needs ("backend
// X is down", "service Y has nothing to route to"). Series follow the snapshot: a backend removed from
// it (or a removed service) stops being reported at the next scrape, so no stale series linger.
import type client from "prom-client";
import type { BackendState } from "../shared/schema.js";
import { collectedGauge, type Emit } from "./collect.js";
import type { DataPlane } from "./data/plane.js";
import type { BackendView, ServiceState } from "./model/snapshot.js";

const STATES: readonly BackendState[] = ["active", "drain", "disabled"];
type Labels = "service" | "backend" | "zone";

export function registerBackendGauges(registry: client.Registry, plane: DataPlane): void {
  const gauge = <L extends string>(name: string, help: string, labelNames: readonly L[], read: (emit: Emit<L>, now: number) => void) =>
    collectedGauge({ name, help, labelNames, registry, read: (emit) => read(emit, Date.now()) });
  const each = (fn: (labels: Record<Labels, string>, b: BackendView, svc: ServiceState) => void) => {
    const snap = plane.current;
    if (snap === null) return;
    for (const svc of snap.services.values()) for (const b of svc.backends) fn({ service: svc.name, backend: b.id, zone: b.spec.zone }, b, svc);
  };
  const labels = ["service", "backend", "zone"] as const;
  gauge("ballast_backend_up", "1 when the backend's health verdict is up (or its service has no health check), 0 when down or not yet known.", labels, (emit) =>
    each((l, b, svc) => emit(l, b.verdict !== null ? (b.verdict.state === "up" ? 1 : 0) : svc.spec.health.type === "none" ? 1 : 0)),
  );
  gauge("ballast_backend_routable", "1 when the backend takes new connections (active, weight > 0, not down).", labels, (emit) => each((l, b) => emit(l, b.routable ? 1 : 0)));
  gauge("ballast_backend_state", "The backend's administrative state: 1 for the current one of active, drain, disabled.", [...labels, "state"], (emit) =>
    each((l, b) => {
      for (const state of STATES) emit({ ...l, state }, b.spec.state === state ? 1 : 0);
    }),
  );
  gauge("ballast_backend_weight", "The backend's configured weight (0: no new clients).", labels, (emit) => each((l, b) => emit(l, b.spec.weight)));
  gauge("ballast_backend_effective_weight", "The weight new connections are spread by: 0 when not routable, below the configured weight during slow start.", labels, (emit) =>
    each((l, b) => emit(l, b.effectiveWeight)),
  );
  gauge("ballast_backend_ejected", "1 while this node has passively ejected the backend after connect failures.", labels, (emit, now) =>
    each((l, b, svc) => emit(l, plane.stats.backend(svc.name, b.id).ejectedUntil > now ? 1 : 0)),
  );
}
