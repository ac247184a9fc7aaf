// What a listener needs from the plane that owns it. Listeners import this interface, never the plane,
// so the arrow runs one way: plane.ts → tcp.ts / udp.ts → host.ts.
import type { Exclude } from "../lb/algorithm.js";
import type { ServiceState, Target } from "../model/snapshot.js";
import type { ConnectFailureReason, StatsRegistry } from "../model/stats.js";
import type { FdBudget } from "../model/fd-budget.js";
import type { AccessLog } from "./access-log.js";
import type { Router } from "./router.js";

export interface ListenerHost {
  readonly stats: StatsRegistry;
  readonly router: Router;
  /** The descriptor budget connections and flows draw on (fd-budget.ts). */
  readonly fds: FdBudget;
  /** Whether a UDP source is one of this node's own listeners (a relay loop). */
  isOwnUdpEndpoint(address: string, port: number): boolean;
  /** Set on SIGTERM: new connections and flows are refused with "draining". */
  readonly draining: boolean;
  /** The address a service's listener binds. */
  bindHost(svc: ServiceState): string;
  /** New-connection exclusion (ejected or full backends), built once per service update. */
  availabilityExclude(svc: ServiceState): Exclude;
  onConnected(svc: ServiceState, target: Target, seconds: number): void;
  /** Passive health: a connect failure may eject the backend locally. */
  onConnectFailure(svc: ServiceState, target: Target, reason: ConnectFailureReason): void;
  /** A connection or flow ended (drain waits on the last one). */
  onConnectionClosed(): void;
  /** One line per finished connection/flow; null: off. */
  readonly accessLog: AccessLog | null;
}
