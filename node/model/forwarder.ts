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
