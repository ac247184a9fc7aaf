// The messages between the primary (the node's one control plane) and its data-plane workers
// (`workers: N`, issue 18). The IPC channel uses Node's "advanced" serialization (structured clone),
// so Maps cross as Maps. Nothing here is per connection: learned affinity entries and counters are
// batched by the worker, snapshots are sent once per revision.
import type { ResolvedName, SnapshotInput, VerdictView } from "../model/snapshot.js";
import type { NodeConfig } from "../../shared/schema.js";
import { hashString } from "../lb/hash.js";

/**
 * A snapshot's input as it crosses to a worker: the records of one revision, the verdicts the node
 * routes by, the clock of the build and the resolver's answers. The worker runs the same pure
 * buildSnapshot on it, so every worker builds the same Maglev tables as the primary (and every node).
 */
export interface WireInput {
  revision: number;
  now: number;
  services: SnapshotInput["services"];
  backends: SnapshotInput["backends"];
  verdicts: ReadonlyMap<string, VerdictView>;
  /** `${service}/${id}` → mod revision of the backend record (orders duplicate addresses). */
  backendRevisions: ReadonlyMap<string, number>;
  /** Host name → the resolver's answer, for the names the backends use. */
  resolved: ReadonlyMap<string, ResolvedName>;
}

/** [service, client ip, backend id, last used (ms epoch)] */
export type WireEntry = [string, string, string, number];

/** Numbers of one ServiceCounters or BackendCounters (nested records of numbers flattened as `a.b`). */
export type WireCounters = Record<string, number>;

export interface WireListener {
  service: string;
  protocol: "tcp" | "udp";
  error: string | null;
  boundPort: number;
}

export interface WireStats {
  services: Map<string, WireCounters>;
  backends: Map<string, WireCounters>;
  rssBytes: number;
  cpuSeconds: number;
  /** Connect latencies since the last report: [service, backend, seconds] (at most MAX_LATENCIES). */
  connects: Array<[string, string, number]>;
}

/** Connect latencies a worker keeps between two reports; beyond it, the rest of the second is not observed. */
export const MAX_LATENCIES = 8192;

export type ToWorker =
  | { type: "init"; slot: number; workers: number; config: NodeConfig }
  | { type: "snapshot"; input: WireInput }
  /** A reload applied these: log.level, accessLog (not its path), health.eject* (node/reload.ts). */
  | { type: "reconfigure"; config: NodeConfig }
  | { type: "affinity"; entries: WireEntry[] }
  | { type: "avoid"; service: string; backend: string; untilMs: number }
  | { type: "stats?"; id: number }
  | { type: "drain"; timeoutMs: number }
  | { type: "drain-cancel" }
  | { type: "resume" };

export type FromWorker =
  /** The worker listens for messages now: anything sent before its module loaded was dropped. */
  | { type: "hello" }
  | { type: "applied"; revision: number; listeners: WireListener[] }
  | { type: "learned"; entries: WireEntry[] }
  | { type: "stats"; id: number; stats: WireStats }
  | { type: "ejected"; service: string; backend: string; untilMs: number }
  | { type: "drained"; remaining: number };

/**
 * The worker slot that binds a UDP service. Node 20 has no SO_REUSEPORT for dgram, and a cluster-shared
 * UDP socket hands any datagram to any worker, which would split a flow: so exactly one worker binds
 * each UDP listener (exclusive), chosen by the service name alone. A replaced worker takes its slot,
 * and with it the same services.
 */
export function udpOwner(service: string, workers: number): number {
  return hashString(service) % workers;
}
