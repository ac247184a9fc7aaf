// What the admin API says about a node: /api/state (the documented JSON behind the CLI and the status
// page) and /api/route (route explain: which backend a client would get, and why).
import net from "node:net";
import { VERSION } from "../shared/version.js";
import { explainNat } from "./kernel/forwarder.js";
import { forwardingOf } from "./model/forwarder.js";
import type { BallastNode } from "./node.js";

export function describeState(n: BallastNode) {
  const snap = n.reconciler.snapshot;
  const now = Date.now();
  const services = [];
  for (const svc of snap?.services.values() ?? []) {
    const l = n.plane.listenerOf(svc.name);
    const c = n.plane.stats.service(svc.name);
    services.push({
      name: svc.name,
      listen: svc.spec.listen,
      boundPort: l?.boundPort ?? 0,
      listenerError: l?.error ?? null,
      protocol: svc.spec.protocol,
      forwarding: forwardingOf(svc.spec),
      // The kernel's word on a NAT or DSR service: programmed, or why not (null for proxied services).
      kernel: n.kernel.status(svc.name) ?? n.dsr.status(svc.name) ?? null,
      algorithm: svc.spec.algorithm,
      proxyProtocol: svc.spec.proxyProtocol,
      affinity: { mode: svc.spec.affinity.mode, ttlMs: svc.spec.affinity.ttl, entries: n.affinity.entries.table(svc.name)?.size ?? 0 },
      health: { type: svc.spec.health.type, intervalMs: svc.spec.health.interval, rise: svc.spec.health.rise, fall: svc.spec.health.fall },
      active: c.active,
      accepted: c.accepted,
      bytesIn: c.bytesIn,
      bytesOut: c.bytesOut,
      retries: c.retries,
      refused: c.refused,
      udp: svc.spec.protocol === "udp" ? { flows: c.udpFlows, datagramsIn: c.udpDatagramsIn, datagramsOut: c.udpDatagramsOut, dropped: c.udpDropped } : undefined,
      backends: svc.backends.map((b) => {
        const s = n.plane.stats.backend(svc.name, b.id);
        return {
          id: b.id,
          address: b.spec.address,
          port: b.spec.port,
          weight: b.spec.weight,
          zone: b.spec.zone,
          state: b.spec.state,
          verdict: b.verdict,
          routable: b.routable,
          why: b.why,
          ejected: s.ejectedUntil > now,
          active: s.active,
          connections: s.connections,
          bytesIn: s.bytesIn,
          bytesOut: s.bytesOut,
          connectFailures: s.connectFailures,
          // DSR: packets and bytes the kernel forwarded to the backend (client → backend; replies bypass the node).
          dsr: forwardingOf(svc.spec) === "dsr" ? (n.dsr.lastCounters.get(svc.name)?.get(b.id) ?? { packets: 0, bytes: 0 }) : undefined,
        };
      }),
    });
  }
  const hb = n.reconciler.heartbeat;
  return {
    node: { id: n.id, zone: n.config.node.zone, version: VERSION, ready: n.ready, draining: n.withdrawing || n.plane.draining, mode: n.mode, startedAt: n.startedAt, admin: n.admin.address },
    cluster: n.config.cluster,
    store: {
      kind: n.standalone ? "memory" : "etcd",
      connected: n.standalone ? true : n.reconciler.connected,
      lastError: n.reconciler.lastError,
      staleSeconds: n.metrics.lastSync === 0 ? 0 : (now - n.metrics.lastSync) / 1000,
    },
    revision: n.reconciler.appliedRevision,
    kernel: n.kernel.state(),
    snapshotRevision: snap?.revision ?? 0,
    services,
    dsr: n.dsr.state(),
    invalid: snap?.invalid ?? [],
    nodes: [...n.reconciler.nodes.values()].sort((a, b) => (a.id < b.id ? -1 : 1)),
    // leader/isLeader/mode/term/checking/modeReason/modeSince come from the health manager.
    health: { ...n.health.status(), heartbeatAt: hb?.at ?? null, heartbeatAgeMs: hb ? now - hb.at : null },
  };
}

export function explainRoute(n: BallastNode, service: string, client: string, port: number): { status: number; body: unknown } {
  const snap = n.reconciler.snapshot;
  const svc = snap?.services.get(service);
  if (!snap || !svc) return { status: 404, body: { error: `no service ${service}`, revision: snap?.revision ?? 0 } };
  if (net.isIP(client) === 0) return { status: 400, body: { error: `client must be an IP address, got ${client}` } };
  const base = { service, client, port, revision: n.reconciler.appliedRevision, node: n.id };
  if (forwardingOf(svc.spec) === "dsr") {
    // The kernel's own choice: its jhash over the picker's table (the same table it holds). A flow this
    // node already pinned keeps its pinned backend while that backend is not down.
    if (net.isIP(client) !== 4) return { status: 400, body: { error: `forwarding dsr is IPv4 only, got client ${client}` } };
    if (svc.access !== null && !svc.access.permits(client)) return { status: 200, body: { ...base, backend: null, reason: "denied", forwarding: "dsr" } };
    const e = explainNat(svc, n.dsr.seed, client, port);
    const st = n.dsr.status(service);
    return {
      status: 200,
      body: {
        ...base,
        forwarding: "dsr",
        backend: e.backend ? { id: e.backend.id, address: e.backend.label } : null,
        reason: e.backend ? `${e.reason}; dsr: a flow this node pinned earlier keeps its backend while it is not down` : e.reason,
        slot: e.slot,
        programmed: st?.programmed ?? false,
        notProgrammed: st && !st.programmed ? st.reason : st ? undefined : "not applied yet",
        version: VERSION,
      },
    };
  }
  if (svc.access !== null && !svc.access.permits(client)) return { status: 200, body: { ...base, backend: null, reason: "denied" } };
  const now = Date.now();
  if (forwardingOf(svc.spec) === "nat") {
    // The kernel's own choice: an affinity entry (a map element consulted first), else jhash → slot → backend.
    const entry = svc.spec.affinity.mode === "source-ip" ? n.affinity.describe(svc, client, now) : null;
    const sticky = entry ? svc.sticky.get(entry.backend) : undefined;
    if (entry && sticky) {
      return { status: 200, body: { ...base, forwarding: "nat", backend: { id: sticky.id, address: sticky.label }, reason: `affinity (from node ${entry.node})`, version: VERSION } };
    }
    const k = explainNat(svc, n.kernel.seed, client, port);
    return { status: 200, body: { ...base, forwarding: "nat", backend: k.backend ? { id: k.backend.id, address: k.backend.label } : null, reason: k.reason, slot: k.slot, version: VERSION } };
  }
  const router = n.plane.router;
  const described = svc.spec.affinity.mode === "source-ip" ? (router.affinity?.describe?.(svc, client, now) ?? null) : null;
  const t = router.route(svc, client, port, n.plane.availabilityExclude(svc), now, false);
  let reason = router.reason;
  if (reason === "affinity" && described) reason = `affinity (from node ${described.node}, last used ${Math.round((now - described.lastUsed) / 1000)} s ago)`;
  return {
    status: 200,
    body: { ...base, backend: t ? { id: t.id, address: t.label } : null, reason, version: VERSION },
  };
}
