// The userspace proxy data plane, the "proxy" forwarder: owns the listeners of `forwarding: proxy`
// services and swaps snapshots. apply() reconciles listeners with the new snapshot (reusing a listener
// whose address is unchanged, so connections are never cut by a config change) and starts the drain
// clock for backends that left.
import os from "node:os";
import type { Logger } from "pino";
import type { Exclude } from "../lb/algorithm.js";
import { type Forwarder, type ForwarderServiceStatus, type ForwardingMode, forwardingOf } from "../model/forwarder.js";
import type { BackendView, ServiceState, Snapshot, Target } from "../model/snapshot.js";
import { type BackendCounters, type ConnectFailureReason, StatsRegistry } from "../model/stats.js";
import { FdBudget } from "../model/fd-budget.js";
import type { AccessLog } from "./access-log.js";
import type { ListenerHost } from "./host.js";
import { type AffinityHook, Router } from "./router.js";
import { TcpListener } from "./tcp.js";
import { UdpListener } from "./udp.js";

export interface PlaneOptions {
  /** Passive ejection backoff after a connect failure: base, doubling per consecutive failure, capped. */
  ejectBaseMs: number;
  ejectMaxMs: number;
  /** Never eject more than this share of a service's backends (so a bad network does not empty it). */
  maxEjectedShare: number;
  /** Bind services on this address instead of their listen host (node config `node.bindAddress`). */
  bindAddress?: string;
  /** The descriptor budget (tests pass a small one); by default from RLIMIT_NOFILE. */
  fdBudget?: FdBudget;
}

export interface PlaneHooks {
  onConnected?(svc: ServiceState, target: Target, seconds: number): void;
  onConnectFailure?(svc: ServiceState, target: Target, reason: ConnectFailureReason): void;
  onEject?(svc: ServiceState, target: Target, untilMs: number): void;
}

type Listener = TcpListener | UdpListener;

/** On drain, how long UDP flows may still carry replies before they end (capped by the service's udpIdle). */
export const UDP_DRAIN_GRACE_MS = 2000;

const DEFAULT_OPTIONS: PlaneOptions = { ejectBaseMs: 1000, ejectMaxMs: 30_000, maxEjectedShare: 0.5 };

export interface PlaneDeps {
  /** Session affinity for services that ask for it; null = none (the router then uses the algorithm only). */
  affinity?: AffinityHook | null;
  /** Counters shared with the snapshot builder (the model's registry); a fresh one when omitted. */
  stats?: StatsRegistry;
  hooks?: PlaneHooks;
  /** The node's zone (node config `node.zone`): the router's plan for `locality: prefer-zone` services. */
  zone?: string;
}

export class DataPlane implements Forwarder<Snapshot>, ListenerHost {
  readonly name = "proxy";
  current: Snapshot | null = null;
  readonly listeners = new Map<string, Listener>();
  readonly stats: StatsRegistry;
  readonly router: Router;
  /** Connections and flows share it with probes, etcd and admin (see fd-budget.ts). */
  readonly fds: FdBudget;
  draining = false;
  /** After close(), snapshots are ignored: nothing may reopen a listener. */
  private closed = false;
  private readonly hooks: PlaneHooks;
  /** One line per finished connection/flow (set by the node from `accessLog`); null: off. */
  accessLog: AccessLog | null = null;
  private idleWaiters: Array<() => void> = [];
  /** TCP listeners drain() stopped accepting on: resume() makes them anew. */
  private readonly stoppedByDrain = new Set<Listener>();
  /** Ports of this node's bound UDP listeners, and its own addresses: a datagram from one is a loop. */
  private ownUdpPorts = new Set<number>();
  private readonly ownAddresses = localAddresses();
  private applying: Promise<void> = Promise.resolve();
  /** Service → revision of the snapshot whose apply last (re)programmed its listener. */
  private readonly revisions = new Map<string, number>();

  constructor(
    readonly log: Logger,
    readonly options: PlaneOptions = DEFAULT_OPTIONS,
    deps: PlaneDeps = {},
  ) {
    this.stats = deps.stats ?? new StatsRegistry();
    this.router = new Router(deps.affinity ?? null, deps.zone ?? "");
    this.hooks = deps.hooks ?? {};
    this.fds = options.fdBudget ?? new FdBudget();
  }

  handles(mode: ForwardingMode): boolean {
    return mode === "proxy";
  }

  status(service: string): ForwarderServiceStatus | undefined {
    const svc = this.current?.services.get(service);
    if (svc === undefined || forwardingOf(svc.spec) !== "proxy") return undefined;
    const l = this.listenerOf(service);
    const revision = this.revisions.get(service) ?? 0;
    if (l === undefined) return { programmed: false, reason: this.draining ? "draining: no new listeners" : "not applied yet", revision };
    if (l.error !== null) return { programmed: false, reason: l.error, revision };
    return { programmed: true, reason: null, revision };
  }

  /** The address a service's listener binds. */
  bindHost(svc: ServiceState): string {
    return this.options.bindAddress ?? svc.host;
  }

  /**
   * Ready = a snapshot is applied, the node is not draining, and it serves: one service that cannot
   * bind (address in use, not configured here) is reported per service (listenerError in /api/state,
   * `ballast_service_listening` 0, listed under invalid) and must not make anycast withdraw every other
   * VIP of the node. Only when no listener is bound at all is the node unready.
   */
  get ready(): boolean {
    if (this.current === null || this.draining) return false;
    let bound = false;
    let failed = false;
    for (const l of this.listeners.values()) {
      if (l.error === null) bound = true;
      else failed = true;
    }
    return bound || !failed;
  }

  /** Services whose listener failed, with the reason (for state, metrics and `ballast status`). */
  listenerFailures(): Array<{ service: string; reason: string }> {
    const out = [];
    for (const l of this.listeners.values()) if (l.error !== null) out.push({ service: l.svc.name, reason: l.error });
    return out;
  }

  /** Total open connections and UDP flows. */
  get active(): number {
    let n = 0;
    for (const s of this.stats.services.values()) n += s.active;
    return n;
  }

  listenerOf(service: string): Listener | undefined {
    for (const l of this.listeners.values()) if (l.svc.name === service) return l;
    return undefined;
  }

  /** Applies snapshots one at a time, in order. Never rejects: a failure is logged and the listeners stay as they were. */
  apply(next: Snapshot): Promise<void> {
    this.applying = this.applying.then(() =>
      this.applyNow(next).catch((err: Error) => this.log.error({ forwarder: this.name, revision: next.revision, err: err.message }, "applying snapshot failed")),
    );
    return this.applying;
  }

  private async applyNow(next: Snapshot): Promise<void> {
    if (this.closed) return;
    const prev = this.current;
    this.current = next;
    const wanted = new Map<string, ServiceState>();
    for (const svc of next.services.values()) {
      // Services of other forwarding modes belong to another forwarder (the kernel's).
      if (forwardingOf(svc.spec) !== "proxy") continue;
      wanted.set(svc.port === 0 ? `${svc.listenKey}|${svc.name}` : svc.listenKey, svc);
    }

    const closing: Promise<void>[] = [];
    for (const [key, l] of this.listeners) {
      const svc = wanted.get(key);
      // A listener that never bound is made again: each snapshot is a retry of the bind.
      if (svc && svc.name === l.svc.name && !(l.error !== null && l.boundPort === 0)) continue;
      // Removed service or address taken over by another one: stop accepting; open connections finish.
      this.listeners.delete(key);
      closing.push(l.close());
    }
    await Promise.all(closing);
    const opening: Promise<void>[] = [];
    for (const [key, svc] of wanted) {
      const l = this.listeners.get(key);
      if (l) {
        l.update(svc);
        this.revisions.set(svc.name, next.revision);
        continue;
      }
      // A draining node opens nothing new.
      if (this.draining) continue;
      const created = svc.spec.protocol === "udp" ? new UdpListener(this, svc, this.log) : new TcpListener(this, svc, this.log);
      this.listeners.set(key, created);
      opening.push(created.listen().then(() => {
        this.revisions.set(svc.name, next.revision);
        if (created.error) this.log.error({ service: svc.name, err: created.error }, "listener failed");
        else this.log.info({ service: svc.name, protocol: svc.spec.protocol, address: `${svc.host}:${created.boundPort}` }, "listening");
      }));
    }
    await Promise.all(opening);
    const ports = new Set<number>();
    for (const l of this.listeners.values()) if (l instanceof UdpListener && l.boundPort !== 0) ports.add(l.boundPort);
    this.ownUdpPorts = ports;
    this.fds.reserve("listeners", this.listeners.size);
    for (const name of this.revisions.keys()) if (!next.services.has(name)) this.revisions.delete(name);
    this.reconcileBackends(prev, next);
  }

  /** Whether a UDP source is one of this node's own listeners (checked once per new flow). */
  isOwnUdpEndpoint(address: string, port: number): boolean {
    return this.ownUdpPorts.has(port) && (this.ownAddresses.has(address) || address.startsWith("127.") || address.startsWith("::ffff:127."));
  }

  /**
   * Backends that left the snapshot (removed, disabled) keep their connections for the service's
   * drain timeout; drained ones too; down ones are closed at once when the service says closeOnDown.
   */
  private reconcileBackends(prev: Snapshot | null, next: Snapshot): void {
    if (prev === null) return;
    // Views by service and id, built only for services that have open connections (10k backends
    // must not cost a linear search per backend).
    const views = new Map<string, Map<string, BackendView>>();
    for (const [key, counters] of this.stats.backends) {
      if (counters.open.size === 0 && counters.drainTimer === null) continue;
      const slash = key.indexOf("/");
      const svc = next.services.get(key.slice(0, slash));
      let byId = svc ? views.get(svc.name) : undefined;
      if (svc && !byId) {
        byId = new Map(svc.backends.map((b) => [b.id, b]));
        views.set(svc.name, byId);
      }
      const view = byId?.get(counters.id);
      const keep = view !== undefined && view.spec.state === "active" && view.verdict?.state !== "down";
      if (keep) {
        if (counters.drainTimer) {
          clearTimeout(counters.drainTimer);
          counters.drainTimer = null;
        }
        continue;
      }
      if (view?.verdict?.state === "down" && svc!.spec.health.closeOnDown) {
        closeAll(counters, "backend down");
        continue;
      }
      if (counters.drainTimer === null && counters.open.size > 0) {
        const drainMs = svc?.spec.timeouts.drain ?? prev.services.get(key.slice(0, slash))?.spec.timeouts.drain ?? 30_000;
        counters.drainTimer = setTimeout(() => {
          counters.drainTimer = null;
          closeAll(counters, "drain timeout");
        }, drainMs);
        counters.drainTimer.unref();
      }
    }
  }

  /** Exclusion for new connections of a service: ejected backends, and full ones when a per-backend cap is set. */
  availabilityExclude(svc: ServiceState): Exclude {
    const max = svc.spec.limits.maxConnectionsPerBackend;
    if (max > 0) return (t) => t.stats.active >= max || (t.stats.ejectedUntil !== 0 && t.stats.ejectedUntil > Date.now());
    return (t) => t.stats.ejectedUntil !== 0 && t.stats.ejectedUntil > Date.now();
  }

  onConnected(svc: ServiceState, target: Target, seconds: number): void {
    (target.stats as BackendCounters).ejections = 0;
    this.hooks.onConnected?.(svc, target, seconds);
  }

  /** Passive health: a connect failure ejects the backend locally at once, with backoff and a cap. */
  onConnectFailure(svc: ServiceState, target: Target, reason: ConnectFailureReason): void {
    const s = target.stats;
    s.connectFailures[reason]++;
    this.hooks.onConnectFailure?.(svc, target, reason);
    const now = Date.now();
    if (s.ejectedUntil > now) return;
    let ejected = 0;
    for (const t of svc.targets) if (t.stats.ejectedUntil > now) ejected++;
    if ((ejected + 1) / Math.max(1, svc.targets.length) > this.options.maxEjectedShare) return;
    const backoff = Math.min(this.options.ejectMaxMs, this.options.ejectBaseMs * 2 ** Math.min(s.ejections, 16));
    s.ejections++;
    s.ejectedUntil = now + backoff;
    this.hooks.onEject?.(svc, target, s.ejectedUntil);
  }

  /**
   * Observer quorum (issue 17): this node's own probes fail a backend that the cluster keeps in
   * rotation (a partial verdict), so this node sends it no new connections until `untilMs` (0 ends
   * it). The same exclusion, cap (maxEjectedShare) and `ejected` view as passive ejection, without its
   * backoff: the health checker renews it while its probes keep failing. Returns whether it applies.
   */
  avoidLocally(service: string, id: string, untilMs: number): boolean {
    const svc = this.current?.services.get(service);
    if (svc === undefined) return false;
    const now = Date.now();
    let target: Target | undefined;
    let ejected = 0;
    for (const t of svc.targets) {
      if (t.id === id) target = t;
      else if (t.stats.ejectedUntil > now) ejected++;
    }
    if (target === undefined) return false;
    const s = target.stats;
    if (untilMs === 0) {
      s.ejectedUntil = 0;
      return true;
    }
    if ((ejected + 1) / Math.max(1, svc.targets.length) > this.options.maxEjectedShare) return false;
    s.ejectedUntil = Math.max(s.ejectedUntil, untilMs);
    return true;
  }

  onConnectionClosed(): void {
    if (this.idleWaiters.length > 0 && this.active === 0) {
      const waiters = this.idleWaiters;
      this.idleWaiters = [];
      for (const w of waiters) w();
    }
  }

  /**
   * Stops accepting, waits for open connections up to `timeoutMs`, then closes what is left. UDP has no
   * end of a flow to wait for: its flows get a short grace for replies in flight (UDP_DRAIN_GRACE_MS, or
   * the service's udpIdle if shorter), then end, so an idle flow never holds the exit for its idle timeout.
   */
  async drain(timeoutMs: number, cancel?: AbortSignal): Promise<{ remaining: number }> {
    this.draining = true;
    const graces: NodeJS.Timeout[] = [];
    for (const l of this.listeners.values()) {
      if (!(l instanceof UdpListener)) continue;
      const grace = setTimeout(() => l.closeFlows(), Math.min(UDP_DRAIN_GRACE_MS, l.svc.spec.timeouts.udpIdle));
      grace.unref();
      graces.push(grace);
    }
    // server.close() stops accepting at once but calls back only when every connection has ended:
    // awaiting it here would start the drain clock after the connections were gone (no timeout at all).
    const tcp = [...this.listeners.values()].filter((l) => l instanceof TcpListener);
    for (const l of tcp) this.stoppedByDrain.add(l);
    const tcpClosed = Promise.all(tcp.map((l) => l.close()));
    if (this.active > 0 && cancel?.aborted !== true) {
      await new Promise<void>((resolve) => {
        const done = () => {
          clearTimeout(timer);
          cancel?.removeEventListener("abort", done);
          resolve();
        };
        const timer = setTimeout(done, timeoutMs);
        timer.unref();
        this.idleWaiters.push(done);
        cancel?.addEventListener("abort", done);
      });
    }
    const remaining = this.active;
    // An operator drain undone before its end (resume() follows): open connections and flows carry on.
    if (cancel?.aborted === true) {
      for (const g of graces) clearTimeout(g);
      return { remaining };
    }
    for (const counters of this.stats.backends.values()) closeAll(counters, "shutdown");
    await tcpClosed;
    for (const l of this.listeners.values()) if (l instanceof UdpListener) await l.close();
    return { remaining };
  }

  /**
   * Ends an operator drain (rollout/drains/<node> deleted): the listeners drain() stopped are made
   * anew from the current snapshot, on the same addresses; connections still open were never cut.
   */
  async resume(): Promise<void> {
    if (this.closed || !this.draining) return;
    this.draining = false;
    for (const [key, l] of this.listeners) {
      if (this.stoppedByDrain.has(l) || (l instanceof UdpListener && l.closed)) this.listeners.delete(key);
    }
    this.stoppedByDrain.clear();
    if (this.current !== null) await this.apply(this.current);
  }

  async close(): Promise<void> {
    this.closed = true;
    this.draining = true;
    for (const counters of this.stats.backends.values()) closeAll(counters, "shutdown");
    await Promise.all([...this.listeners.values()].map((l) => l.close()));
    this.listeners.clear();
  }
}

/** This host's interface addresses (read once; loopback ranges are checked by prefix). */
function localAddresses(): Set<string> {
  const out = new Set<string>(["::1", "0.0.0.0", "::"]);
  for (const list of Object.values(os.networkInterfaces())) for (const a of list ?? []) out.add(a.address);
  return out;
}

function closeAll(counters: BackendCounters, reason: string): void {
  for (const c of [...counters.open]) c.close(reason);
}
