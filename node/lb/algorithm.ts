// The one interface every load-balancing algorithm implements (one file per algorithm, as HAProxy's
// lb_ops). A picker is built once per snapshot from the routable backends and then used per connection.
import type { AlgorithmName } from "../../shared/schema.js";

/**
 * Live per-backend counters that outlive snapshots: a backend keeps its active-connection count and
 * ejection state when the config changes. Owned by the data plane, read by pickers (least-conn, p2c).
 */
export interface BackendStats {
  active: number;
  /** Passive ejection: no new connections until this time (ms, coarse clock); 0 = not ejected. */
  ejectedUntil: number;
}

/** A backend as the data plane uses it: resolved at snapshot time, read-only but for `stats`. */
export interface BackendTarget {
  readonly id: string;
  readonly host: string;
  readonly port: number;
  readonly weight: number;
  readonly zone: string;
  /** "host:port", precomputed for logs and metric labels. */
  readonly label: string;
  /**
   * What a consistent hash places (default: `id`). Each address of a host-name backend is a target of
   * its own with the backend's id, so it needs a key of its own ("id|address").
   */
  readonly hashKey?: string;
  readonly stats: BackendStats;
}

/** Rejects a backend for this attempt (full, ejected, already tried). Must not throw. */
export type Exclude = (target: BackendTarget) => boolean;

export interface Picker {
  readonly algorithm: AlgorithmName;
  /**
   * Chooses a backend. `hash` is the flow hash (client ip:port) or the source hash (client ip),
   * depending on the algorithm; algorithms that do not hash ignore it. Returns null when every
   * backend is excluded. Never throws, allocates nothing on the common path.
   */
  pick(hash: number, exclude: Exclude | null): BackendTarget | null;
  /**
   * What pick() would return now, changing nothing (no rotation, no random draw): `route explain`
   * uses it, so asking never moves the next real pick.
   */
  peek(hash: number, exclude: Exclude | null): BackendTarget | null;
}

export interface PickerFactory {
  readonly name: AlgorithmName;
  /** Whether the hash should be of the client IP only (so a client's connections agree). */
  readonly hashSourceOnly: boolean;
  /** `targets` is sorted by id and contains only routable backends with weight > 0. */
  build(targets: readonly BackendTarget[]): Picker;
}
