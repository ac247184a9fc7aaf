// What the admin API says about a node: /api/state (the documented JSON behind the CLI and the status
// page) and /api/route (route explain: which backend a client would get, and why).
import net from "node:net";
import type { ApiError, DnsStateView, DrainReport, ForwardingStateView, RouteAnswer, ServiceStateView, StateView } from "../shared/api.js";
import { clientAddress } from "../shared/ip.js";
import { membersDown } from "../shared/members.js";
import type { NodeConfig } from "../shared/schema.js";
import { VERSION } from "../shared/version.js";
import type { AffinityTable } from "./affinity/table.js";
import type { LastKnownGood } from "./control/last-good.js";
import type { Reconciler } from "./control/reconciler.js";
import type { DataPlane } from "./data/plane.js";
import type { HealthManager } from "./health/manager.js";
import type { NodeMode } from "./health/mode.js";
import type { DsrForwarder } from "./kernel/dsr.js";
import { explainNat, type KernelForwarder } from "./kernel/forwarder.js";
import { carrierStatus, type Forwarder, forwardingOf } from "./model/forwarder.js";
import type { ServiceState, Snapshot } from "./model/snapshot.js";
import type { PeerTrust } from "./admin/peer-trust.js";

/** What the admin answers read from the node that composes them (the node itself satisfies it). */
export interface StateContext {
  readonly id: string;
  readonly config: { readonly cluster: string; readonly node: Pick<NodeConfig["node"], "zone"> };
  readonly standalone: boolean;
  readonly startedAt: number;
  readonly ready: boolean;
  readonly withdrawing: boolean;
  readonly mode: NodeMode;
  readonly admin: { readonly address: string };
  readonly metrics: { readonly lastSync: number };
  readonly reconciler: Pick<Reconciler, "snapshot" | "heartbeat" | "connected" | "lastError" | "appliedRevision" | "nodes" | "dns" | "drains" | "rollout" | "members">;
  readonly drain: { readonly state: DrainReport | null; readonly active: boolean };
  readonly plane: Pick<DataPlane, "listenerOf" | "stats" | "router" | "availabilityExclude" | "draining" | "listenerFailures">;
  readonly keys: { service(name: string): string; readonly dns: string };
  readonly dns: { describe(): DnsStateView } | null;
  readonly forwarders: readonly Forwarder<Snapshot>[];
  readonly affinity: Pick<AffinityTable, "describe" | "entries" | "warnings">;
  readonly health: Pick<HealthManager, "status">;
  readonly kernel: Pick<KernelForwarder, "seed" | "state">;
  readonly dsr: Pick<DsrForwarder, "seed" | "state" | "lastCounters">;
  readonly lastGood: Pick<LastKnownGood, "source" | "file" | "revision" | "savedAt" | "lastError"> | null;
  /** Which peers the status page may send the token to (admin.trustedPeers). */
  readonly peerTrust: Pick<PeerTrust, "trusts">;
}

export function describeState(n: StateContext): StateView {
  const snap = n.reconciler.snapshot;
  const now = Date.now();
  const services: ServiceStateView[] = [];
  for (const svc of snap?.services.values() ?? []) {
    const l = n.plane.listenerOf(svc.name);
    services.push({
      name: svc.name,
      listen: svc.spec.listen,
      boundPort: l?.boundPort ?? 0,
      listenerError: l?.error ?? null,
      protocol: svc.spec.protocol,
      algorithm: svc.spec.algorithm,
      proxyProtocol: svc.spec.proxyProtocol,
      locality: svc.spec.locality,
      forwarding: forwardingStatus(n, svc),
      affinity: { mode: svc.spec.affinity.mode, ttlMs: svc.spec.affinity.ttl, entries: n.affinity.entries.table(svc.name)?.size ?? 0 },
      health: { type: svc.spec.health.type, intervalMs: svc.spec.health.interval, rise: svc.spec.health.rise, fall: svc.spec.health.fall },
      ...serviceCounters(n, svc),
      backends: svc.backends.map((b) => {
        const s = n.plane.stats.backend(svc.name, b.id);
        return {
          id: b.id,
          address: b.spec.address,
          port: b.spec.port,
          weight: b.spec.weight,
          effectiveWeight: b.effectiveWeight,
          zone: b.spec.zone,
          state: b.spec.state,
          verdict: b.verdict,
          routable: b.routable,
          why: b.why,
          addresses: b.addresses,
          resolution: b.resolution === null ? null : { name: b.spec.address, ...b.resolution },
          ejected: s.ejectedUntil > now,
          active: s.active,
          connections: s.connections,
          bytesIn: s.bytesIn,
          bytesOut: s.bytesOut,
          connectFailures: s.connectFailures,
          dsr: forwardingOf(svc.spec) === "dsr" ? (n.dsr.lastCounters.get(svc.name)?.get(b.id) ?? { packets: 0, bytes: 0 }) : undefined,
        };
      }),
    });
  }
  return {
    node: nodeView(n),
    rollout: { drains: [...n.reconciler.drains.keys()].sort(), state: n.reconciler.rollout },
    members: { count: n.reconciler.members.size, down: membersDown(n.reconciler.members.values(), new Set(n.reconciler.nodes.keys()), new Set(n.reconciler.drains.keys())) },
    cluster: n.config.cluster,
    store: {
      ...storeView(n, now),
      lastKnownGood: n.lastGood ? { file: n.lastGood.file, revision: n.lastGood.revision, savedAt: n.lastGood.savedAt || null, writeError: n.lastGood.lastError } : null,
    },
    revision: n.reconciler.appliedRevision,
    kernel: n.kernel.state(),
    dsr: n.dsr.state(),
    snapshotRevision: snap?.revision ?? 0,
    services,
    // A service this node cannot bind is listed like an invalid record, for this node only; so is a rejected dns record.
    invalid: [
      ...(snap?.invalid ?? []),
      ...n.plane.listenerFailures().map((f) => ({ key: n.keys.service(f.service), reason: `not served on this node: ${f.reason}` })),
      ...(n.reconciler.dns.error ? [{ key: n.keys.dns, reason: n.reconciler.dns.error, keptLastGood: n.reconciler.dns.spec !== null }] : []),
    ],
    warnings: n.affinity.warnings(),
    // `trusted`: the status page sends the token to this node's admin API (admin.trustedPeers).
    nodes: [...n.reconciler.nodes.values()].sort((a, b) => (a.id < b.id ? -1 : 1)).map((r) => ({ ...r, trusted: r.id === n.id || n.peerTrust.trusts(r.admin) })),
    // leader/isLeader/mode/term/checking/modeReason/modeSince come from the health manager.
    dns: n.dns?.describe() ?? null,
    health: healthView(n, now),
  };
}

// The parts /api/state and /api/summary (node/admin/summary.ts) share, built once here.

export function nodeView(n: StateContext): StateView["node"] {
  return { id: n.id, zone: n.config.node.zone, version: VERSION, ready: n.ready, draining: n.withdrawing || n.plane.draining || n.drain.active, mode: n.mode, startedAt: n.startedAt, admin: n.admin.address, drain: n.drain.state };
}

export function storeView(n: StateContext, now: number) {
  return {
    kind: n.standalone ? ("memory" as const) : ("etcd" as const),
    connected: n.standalone ? true : n.reconciler.connected,
    lastError: n.reconciler.lastError,
    staleSeconds: n.metrics.lastSync === 0 ? 0 : (now - n.metrics.lastSync) / 1000,
    // "disk": serving the last known good file since etcd has not answered since start.
    snapshotSource: n.standalone ? ("memory" as const) : (n.lastGood?.source ?? ("etcd" as const)),
  };
}

export function healthView(n: StateContext, now: number): StateView["health"] {
  const hb = n.reconciler.heartbeat;
  return { ...n.health.status(), heartbeatAt: hb?.at ?? null, heartbeatAgeMs: hb ? now - hb.at : null };
}

/** A service's traffic counters on this node. */
export function serviceCounters(n: StateContext, svc: ServiceState) {
  const c = n.plane.stats.service(svc.name);
  return {
    active: c.active,
    accepted: c.accepted,
    bytesIn: c.bytesIn,
    bytesOut: c.bytesOut,
    retries: c.retries,
    refused: c.refused,
    udp: svc.spec.protocol === "udp" ? { flows: c.udpFlows, datagramsIn: c.udpDatagramsIn, datagramsOut: c.udpDatagramsOut, dropped: c.udpDropped } : undefined,
  };
}

/** Which forwarder carries a service, and its word on it (a mode no forwarder handles says so). */
function forwardingStatus(n: StateContext, svc: ServiceState): ForwardingStateView {
  const mode = forwardingOf(svc.spec);
  return { mode, ...carrierStatus(n.forwarders, svc.name, mode) };
}

export function explainRoute(n: StateContext, service: string, client: string, port: number): { status: number; body: RouteAnswer | ApiError } {
  const snap = n.reconciler.snapshot;
  const svc = snap?.services.get(service);
  if (!snap || !svc) return { status: 404, body: { error: `no service ${service}`, revision: snap?.revision ?? 0 } };
  if (net.isIP(client) === 0) return { status: 400, body: { error: `client must be an IP address, got ${client}` } };
  const base = { service, client, port, revision: n.reconciler.appliedRevision, node: n.id };
  const ip = clientAddress(client);
  if (svc.access !== null && !svc.access.permits(ip)) return { status: 200, body: { ...base, backend: null, reason: "denied" } };
  const now = Date.now();
  if (forwardingOf(svc.spec) === "dsr") {
    // The kernel's own choice: its jhash over the picker's table (the same table it holds). A flow this
    // node pinned earlier keeps its pinned backend while that backend is not down.
    if (net.isIP(ip) !== 4) return { status: 400, body: { error: `forwarding dsr is IPv4 only, got client ${client}` } };
    const k = explainNat(svc, n.dsr.seed, ip, port);
    const reason = k.backend ? `${k.reason}; a flow this node pinned earlier keeps its backend while it is not down` : k.reason;
    return { status: 200, body: { ...base, forwarding: "dsr", backend: k.backend ? { id: k.backend.id, address: k.backend.label } : null, reason, slot: k.slot, version: VERSION } };
  }
  if (forwardingOf(svc.spec) === "nat") {
    // The kernel's own choice: an affinity entry (a map element consulted first), else jhash → slot → backend.
    const entry = svc.spec.affinity.mode === "source-ip" ? n.affinity.describe(svc, ip, now) : null;
    const sticky = entry ? svc.sticky.get(entry.backend) : undefined;
    if (entry && sticky) {
      return { status: 200, body: { ...base, forwarding: "nat", backend: { id: sticky.id, address: sticky.label }, reason: `affinity (from node ${entry.node})`, version: VERSION } };
    }
    const k = explainNat(svc, n.kernel.seed, ip, port);
    return { status: 200, body: { ...base, forwarding: "nat", backend: k.backend ? { id: k.backend.id, address: k.backend.label } : null, reason: k.reason, slot: k.slot, version: VERSION } };
  }
  const described = svc.spec.affinity.mode === "source-ip" ? n.affinity.describe(svc, ip, now) : null;
  const { target, reason } = n.plane.router.route(svc, ip, port, n.plane.availabilityExclude(svc), now, false);
  let why: string = reason === "affinity" && described ? `affinity (from node ${described.node}, last used ${Math.round((now - described.lastUsed) / 1000)} s ago)` : reason;
  // No backend: say why each is out (a name that does not resolve reads "b1 resolve api.internal: NXDOMAIN").
  if (target === null && reason === "no-backend") {
    const out = svc.backends.filter((b) => !b.routable).map((b) => `${b.id} ${b.why}`);
    if (out.length > 0) why = `no-backend: ${out.slice(0, 10).join("; ")}${out.length > 10 ? `; … ${out.length - 10} more` : ""}`;
  }
  const view = target === null ? undefined : svc.backends.find((b) => b.id === target.id);
  const name = view !== undefined && view.resolution !== null ? { name: view.spec.address } : {};
  const body: RouteAnswer = { ...base, backend: target ? { id: target.id, address: target.label, ...name } : null, reason: why, version: VERSION };
  // Observer quorum: the chosen backend's votes, and the partial backends this node steers around.
  const v = view?.verdict;
  if (v?.votes !== undefined) {
    body.verdict = { state: v.state, reason: v.reason, quorum: v.quorum, votes: v.votes, ...(v.partial ? { partial: true } : {}) };
    if (v.partial) why += `; verdict partial: ${v.reason}`;
  }
  const avoided = svc.targets.filter((t) => t.stats.ejectedUntil > now && svc.backends.find((b) => b.id === t.id)?.verdict?.partial === true).map((t) => t.id);
  if (avoided.length > 0) {
    body.avoided = avoided;
    why += `; avoided here (own probes fail): ${avoided.join(", ")}`;
  }
  body.reason = why;
  return { status: 200, body };
}
