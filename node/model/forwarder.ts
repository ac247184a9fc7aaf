// The forwarder seam: everything that carries a service's traffic receives the same snapshot. The
// userspace proxy (node/data/) carries `forwarding: proxy` services; the kernel data plane (nftables,
// node/kernel/) carries `nat` and `dsr` ones. The node hands every snapshot to every forwarder, in
// order; each programs the services of the modes it handles and reports per service what it did.

/** How a service's packets reach its backends (the service record's `forwarding` field). */
export type ForwardingMode = "proxy" | "nat" | "dsr";

/** One forwarder's word on one service: /api/state, the status page, metrics and the CLI show it. */
export interface ForwarderServiceStatus {
  /** True while this forwarder carries the service's traffic (possibly from an older snapshot). */
  readonly programmed: boolean;
  /** Why the service is not programmed, or why the last apply failed while the previous one serves; null when all is well. */
  readonly reason: string | null;
  /** Revision of the snapshot this forwarder last applied successfully for the service (0 = never). */
  readonly revision: number;
}

/** A snapshot as a forwarder needs it; the model's Snapshot satisfies it. */
export interface ForwarderSnapshot {
  readonly revision: number;
  readonly services: ReadonlyMap<string, { readonly name: string; readonly spec: { readonly forwarding?: ForwardingMode } }>;
}

export interface Forwarder<S extends ForwarderSnapshot = ForwarderSnapshot> {
  /** "proxy" or "kernel": a label in logs and state. */
  readonly name: string;
  /** Whether this forwarder carries services of this mode. */
  handles(mode: ForwardingMode): boolean;
  /**
   * Applies a snapshot. Called in snapshot order, never concurrently. Never rejects: a failure is
   * logged, counted and kept in status() while the previous programming keeps serving.
   */
  apply(snapshot: S): Promise<void>;
  /** Status of a service this forwarder handles; undefined for services of other modes. */
  status(service: string): ForwarderServiceStatus | undefined;
  /** SIGTERM: stop taking new traffic where the mode allows it, let what is open finish, up to timeoutMs. */
  drain(timeoutMs: number): Promise<{ remaining: number }>;
  /** Stops the forwarder's own process-side work. A kernel forwarder leaves its tables in place (fail-static). */
  close(): Promise<void>;
}

/** The mode of a service spec; records written before `forwarding` existed are proxied. */
export function forwardingOf(spec: { readonly forwarding?: ForwardingMode }): ForwardingMode {
  return spec.forwarding ?? "proxy";
}

/**
 * The word of the forwarder that carries a service of `mode` (the first that handles the mode), or of
 * nobody: /api/state shows it, and the node record lists the services it cannot carry.
 */
export function carrierStatus(forwarders: readonly Forwarder[], service: string, mode: ForwardingMode): ForwarderServiceStatus & { readonly forwarder: string | null } {
  for (const f of forwarders) {
    if (!f.handles(mode)) continue;
    const st = f.status(service) ?? { programmed: false, reason: "not applied yet", revision: 0 };
    return { forwarder: f.name, programmed: st.programmed, reason: st.reason, revision: st.revision };
  }
  return { forwarder: null, programmed: false, reason: `no forwarder on this node handles forwarding mode ${mode}`, revision: 0 };
}

/**
 * Services of the snapshot that no forwarder of this node carries (a listener that failed to bind, a
 * kernel table it could not program), sorted, at most `max`: the node must not name itself in DNS
 * answers for them.
 */
export function unservedServices(forwarders: readonly Forwarder[], snapshot: ForwarderSnapshot, max: number): string[] {
  const out: string[] = [];
  for (const svc of snapshot.services.values()) {
    if (!carrierStatus(forwarders, svc.name, forwardingOf(svc.spec)).programmed) out.push(svc.name);
  }
  return out.sort().slice(0, max);
}
