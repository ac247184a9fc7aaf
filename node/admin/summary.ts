// GET /api/summary: a node's own state in a size bounded by its services and backends, not by the
// cluster's node count. `ballast status` and the status page ask every node for this and only one node
// for the full /api/state, whose `nodes[]` grows with the cluster (N nodes × N records was the N² of
// issue 19).
import type { NodeSummaryView } from "../../shared/api.js";
import { VERSION } from "../../shared/version.js";
import type { StateContext } from "../state.js";

export function describeSummary(n: StateContext): NodeSummaryView {
  const snap = n.reconciler.snapshot;
  const services: NodeSummaryView["services"] = [];
  for (const svc of snap?.services.values() ?? []) {
    const c = n.plane.stats.service(svc.name);
    services.push({
      name: svc.name,
      active: c.active,
      accepted: c.accepted,
      bytesIn: c.bytesIn,
      bytesOut: c.bytesOut,
      retries: c.retries,
      refused: c.refused,
      udp: svc.spec.protocol === "udp" ? { flows: c.udpFlows, datagramsIn: c.udpDatagramsIn, datagramsOut: c.udpDatagramsOut, dropped: c.udpDropped } : undefined,
      affinityEntries: n.affinity.entries.table(svc.name)?.size ?? 0,
      backends: svc.backends.map((b) => {
        const s = n.plane.stats.backend(svc.name, b.id);
        return { id: b.id, active: s.active, connections: s.connections, bytesIn: s.bytesIn, bytesOut: s.bytesOut, connectFailures: s.connectFailures };
      }),
    });
  }
  const hb = n.reconciler.heartbeat;
  const now = Date.now();
  return {
    node: { id: n.id, zone: n.config.node.zone, version: VERSION, ready: n.ready, draining: n.withdrawing || n.plane.draining || n.drain.active, mode: n.mode, startedAt: n.startedAt, admin: n.admin.address, drain: n.drain.state },
    cluster: n.config.cluster,
    revision: n.reconciler.appliedRevision,
    snapshotRevision: snap?.revision ?? 0,
    store: {
      kind: n.standalone ? "memory" : "etcd",
      connected: n.standalone ? true : n.reconciler.connected,
      lastError: n.reconciler.lastError,
      staleSeconds: n.metrics.lastSync === 0 ? 0 : (now - n.metrics.lastSync) / 1000,
      snapshotSource: n.standalone ? "memory" : (n.lastGood?.source ?? "etcd"),
    },
    health: { ...n.health.status(), heartbeatAt: hb?.at ?? null, heartbeatAgeMs: hb ? now - hb.at : null },
    services,
    invalid: (snap?.invalid.length ?? 0) + n.plane.listenerFailures().length + (n.reconciler.dns.error ? 1 : 0),
    dns: n.dns !== null,
  };
}
