// GET /api/summary: a node's own state in a size bounded by its services and backends, not by the
// cluster's node count. `ballast status` and the status page ask every node for this and only one node
// for the full /api/state, whose `nodes[]` grows with the cluster (N nodes × N records was the N² of
// issue 19).
import type { NodeSummaryView } from "../../shared/api.js";
import { healthView, nodeView, type StateContext, serviceCounters, storeView } from "../state.js";

export function describeSummary(n: StateContext): NodeSummaryView {
  const snap = n.reconciler.snapshot;
  const services: NodeSummaryView["services"] = [];
  for (const svc of snap?.services.values() ?? []) {
    services.push({
      name: svc.name,
      ...serviceCounters(n, svc),
      affinityEntries: n.affinity.entries.table(svc.name)?.size ?? 0,
      backends: svc.backends.map((b) => {
        const s = n.plane.stats.backend(svc.name, b.id);
        return { id: b.id, active: s.active, connections: s.connections, bytesIn: s.bytesIn, bytesOut: s.bytesOut, connectFailures: s.connectFailures };
      }),
    });
  }
  const now = Date.now();
  return {
    node: nodeView(n),
    cluster: n.config.cluster,
    revision: n.reconciler.appliedRevision,
    snapshotRevision: snap?.revision ?? 0,
    store: storeView(n, now),
    health: healthView(n, now),
    services,
    invalid: (snap?.invalid.length ?? 0) + n.plane.listenerFailures().length + (n.reconciler.dns.error ? 1 : 0),
    dns: n.dns !== null,
  };
}
