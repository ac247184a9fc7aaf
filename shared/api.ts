// The admin API's answers, declared once: node/state.ts builds them, the CLI, the status page script
// (node/admin/assets/status.js, through JSDoc) and the chaos harness read them. Adding a field here
// is the whole change; a renamed or removed one fails the type check everywhere it is read.
// No imports: the status page script reads these types in the browser build, without Node types.

/** A node's record under nodes/<id> (written by the node, leased). */
export interface NodeRecord {
  id: string;
  address: string;
  admin: string;
  zone: string;
  version: string;
  ready: boolean;
  draining: boolean;
  revision: number;
  mode: "shared" | "local-fallback" | "standalone";
  /** Addresses clients reach the node's services on (node config `node.publicAddresses`): the DNS answers. Absent in older records. */
  public?: string[];
  /**
   * Services of the snapshot this node cannot carry (listener failed to bind, forwarder could not
   * program them): DNS leaves the node out of their answers. Absent in older records (= serves all).
   */
  unserved?: string[];
  startedAt: number;
  updatedAt: number;
  /** Set while the node obeys its drain key (rollout/drains/<id>); absent when it is not drained. */
  drain?: DrainReport;
}

/**
 * A node's word on its operator drain (`ballast node drain`): withdrawn from anycast and DNS at
 * once, listeners closed after `withdrawDelay`, open connections given `drainTimeout` to finish.
 */
export interface DrainReport {
  state: "draining" | "drained";
  /** When this process saw the drain key. */
  since: number;
  /** When it reached `drained` (0 while draining). */
  drainedAt: number;
  /** Connections and flows open when the drain began. */
  openAtStart: number;
  /** Still open (while draining); cut by drainTimeout (once drained). */
  open: number;
}

/** One node's figures in a rollout (rollout/state, `ballast rollout status`). */
export interface RolloutStepView {
  node: string;
  /** drain key written → node reports drained. */
  drainMs: number;
  /** restart hook run → new process registered, drained, converged. */
  restartMs: number;
  /** undrain → ready and serving. */
  readyMs: number;
  /** Connections open when the drain began, and cut by drainTimeout. */
  openAtStart: number;
  cut: number;
}

/** The rollout record (rollout/state): what `ballast rollout restart` did and is doing. */
export interface RolloutView {
  id: string;
  status: "running" | "done" | "failed" | "aborted";
  startedAt: number;
  updatedAt: number;
  maxUnavailable: number;
  /** The restart hook (a command template with {node}); null: each node restarts itself under its supervisor. */
  restartCmd: string | null;
  nodes: string[];
  done: string[];
  /** The node being rolled and its phase; null between nodes and at the end. */
  current: {
    node: string;
    phase: "draining" | "restarting" | "waiting" | "undraining";
    since: number;
    /** The etcd revision the restarted node must have applied (read once the node was drained). */
    revision: number;
    /** The node process's startedAt before the restart: a larger one is the new process. */
    startedAtBefore: number;
    /** When each phase began, for the step's figures; and the drain's figures once seen. */
    marks: { drain: number; restart: number; undrain: number; openAtStart: number; cut: number };
  } | null;
  /** Why it stopped (failed, aborted). */
  error: string | null;
  steps: RolloutStepView[];
}

export type VerdictState = "up" | "down";

/**
 * One observer's vote on a backend (observer quorum): its own state after rise/fall (`pass`/`fail`),
 * `none` (no observation from it yet), `local` (it ran short of local resources: no vote).
 */
export type ObserverVote = "pass" | "fail" | "none" | "local";

export interface Verdict {
  state: VerdictState;
  since: number;
  reason: string;
  /** Consecutive results agreeing with the state at the time of writing (the leader's own probes). */
  count: number;
  checker: string;
  /** Observer quorum: up, but failing from a minority of the observers (named in `reason`). Absent: not partial. */
  partial?: boolean;
  /**
   * Observer quorum: `ok` when a majority of the observers decided, `degraded` when fewer observers
   * voted than a majority (the leader alone decided). Absent when the leader judged alone: the service
   * has one observer, or no other node was ready when this verdict was written.
   */
  quorum?: "ok" | "degraded";
  /** Observer quorum: the observers of this decision, the leader first, and each one's vote. */
  votes?: Record<string, ObserverVote>;
}

/** A node's observations of one service's backends (health/observations/<service>/<node>). */
export interface Observation {
  node: string;
  at: number;
  /** Backends this observer sees pass (after `rise`). */
  pass: string[];
  /** Backends this observer sees fail (after `fall`), with the probe's reason. */
  fail: Record<string, string>;
  /** Set while the observer is short of local resources (EMFILE…): none of its observations count. */
  local?: string;
}

export type VerdictSource = "shared" | "local";

export interface BackendStateView {
  id: string;
  address: string;
  port: number;
  weight: number;
  /** The weight new connections are spread by: below `weight` during slow start, 0 when not routable. */
  effectiveWeight: number;
  zone: string;
  state: "active" | "drain" | "disabled";
  verdict: (Verdict & { source: VerdictSource }) | null;
  /** Takes new connections. */
  routable: boolean;
  /**
   * Why not routable ("drain", "disabled", "down: <reason>", "weight 0", "unknown", "resolving NAME",
   * "resolve NAME: NXDOMAIN"); empty when routable.
   */
  why: string;
  /** Where new connections go: `address` itself, or the addresses its host name resolved to. */
  addresses: readonly string[];
  /** For a host-name address: this node's resolver's last answer (null: an IP literal, or no answer yet). */
  resolution: { name: string; addresses: readonly string[]; error: string | null; since: number; ttlMs: number | null } | null;
  /** Passively ejected after connect failures (this node only). */
  ejected: boolean;
  active: number;
  connections: number;
  bytesIn: number;
  bytesOut: number;
  connectFailures: Record<"refused" | "timeout" | "reset" | "unreachable" | "other", number>;
  /** forwarding dsr: packets and bytes this node's kernel forwarded to the backend (client → backend; replies bypass the node). */
  dsr?: { packets: number; bytes: number };
}

/** Which forwarder carries a service on this node, and its word on it. */
export interface ForwardingStateView {
  mode: "proxy" | "nat" | "dsr";
  /** Null when no forwarder on this node handles the mode. */
  forwarder: string | null;
  programmed: boolean;
  reason: string | null;
  revision: number;
}

export interface ServiceStateView {
  name: string;
  listen: string;
  boundPort: number;
  listenerError: string | null;
  protocol: "tcp" | "udp";
  algorithm: string;
  proxyProtocol: "none" | "v1" | "v2";
  /** Zone-aware routing (`locality: prefer-zone`): the node's zone's backends first. */
  locality: "none" | "prefer-zone";
  forwarding: ForwardingStateView;
  affinity: { mode: "none" | "source-ip"; ttlMs: number; entries: number };
  health: { type: string; intervalMs: number; rise: number; fall: number };
  active: number;
  accepted: number;
  bytesIn: number;
  bytesOut: number;
  retries: number;
  refused: Record<"max-connections" | "denied" | "rate-limited" | "no-backend" | "draining" | "max-flows" | "proxy-header", number>;
  udp?: { flows: number; datagramsIn: number; datagramsOut: number; dropped: number };
  backends: BackendStateView[];
}

export interface InvalidRecordView {
  key: string;
  reason: string;
  keptLastGood?: boolean;
}

export type NodeMode = NodeRecord["mode"];

export interface HealthStateView {
  /** The node whose heartbeat is fresh (this node while it leads); null when there is none. */
  leader: string | null;
  isLeader: boolean;
  mode: NodeMode;
  term: string | null;
  checking: number;
  modeReason: string;
  modeSince: number;
  heartbeatAt: number | null;
  heartbeatAgeMs: number | null;
}

/** A member (members/<node>) whose node has no live record: dead, or stopped and not forgotten. */
export interface MemberDownView {
  id: string;
  admin: string;
  version: string;
  firstSeen: number;
  /** When its last process started (it died or stopped some time after). */
  startedAt: number;
  /** It has a drain key too (drained before it stopped, or a rollout's node restarting). */
  drained: boolean;
}

/** GET /api/state. */
export interface StateView {
  node: { id: string; zone: string; version: string; ready: boolean; draining: boolean; mode: NodeMode; startedAt: number; admin: string; drain?: DrainReport | null };
  /** Nodes with a drain key (rollout/drains/), and the rollout record, as this node read them. */
  rollout?: { drains: string[]; state: RolloutView | null };
  /** Members (members/<node>) as this node read them: how many, and those with no live node record. Absent from older nodes. */
  members?: { count: number; down: MemberDownView[] };
  cluster: string;
  store: {
    kind: "memory" | "etcd";
    connected: boolean;
    lastError: string | null;
    staleSeconds: number;
    /** Where the routing records come from: "disk" while serving the last known good file (etcd not reached since start). */
    snapshotSource: "memory" | "none" | "etcd" | "disk";
    /** With `stateDir`: the last known good file, its revision and when it was written. */
    lastKnownGood: { file: string; revision: number; savedAt: number | null; writeError: string | null } | null;
  };
  /** Highest etcd revision this node has processed. */
  revision: number;
  /** Revision of the snapshot that routes now. */
  snapshotRevision: number;
  services: ServiceStateView[];
  invalid: readonly InvalidRecordView[];
  /** Conditions on this node the operator should act on (affinity table overflow, …). Absent from older nodes. */
  warnings?: WarningView[];
  /** `trusted`: the status page may send the token to this node's admin address (admin.trustedPeers, or itself). */
  nodes: Array<NodeRecord & { trusted: boolean }>;
  health: HealthStateView;
  /** The node's DNS responder (node config `dns.listen`); null when it runs none. */
  dns: DnsStateView | null;
  /** The nftables table of `forwarding: nat` services on this node (node/kernel/). */
  kernel?: KernelStateView;
  /** The netdev table of `forwarding: dsr` services on this node (node/kernel/dsr.ts). */
  dsr?: DsrStateView;
  /** With `workers: N` (N > 1): each data-plane worker; the node's totals above are their sums. */
  workers?: WorkerStateView[];
}

export interface WorkerStateView {
  /** The worker's slot (0…N-1): a replacement takes the slot, and the UDP services, of the one it replaces. */
  worker: number;
  /** 0 while no process runs in the slot. */
  pid: number;
  running: boolean;
  startedAt: number;
  restarts: number;
  /** Open connections and flows, and those accepted by the current process (from its last report, ≤ 1 s old). */
  active: number;
  accepted: number;
  /** UDP services this worker binds (one worker per UDP service). */
  udpServices: string[];
  rssBytes: number;
  cpuSeconds: number;
}

/** A condition on a node the operator should act on, while it lasts. */
export interface WarningView {
  /** Stable, for scripts and alerts: "affinity-overflow". */
  kind: string;
  message: string;
  /** When it began (ms since epoch). */
  since: number;
}

/** One address in a DNS answer: a live node's public address. */
export interface DnsAddressView {
  node: string;
  zone: string;
  address: string;
}

/** The DNS view of a node: the zone, each name it answers for, and the live nodes in the answers. */
export interface DnsStateView {
  listen: string;
  /** The responder's own error (could not bind), or null. */
  error: string | null;
  /** Why the latest `dns` record was rejected (the last good one stays in use), or null. */
  recordError: string | null;
  /** Null while there is no (valid) `dns` record: every query is REFUSED. */
  zone: string | null;
  serial: number;
  ttl: number;
  nameservers: readonly string[];
  names: Array<{ name: string; service: string; ttl: number; answers: number; locality: "none" | "prefer-zone"; addresses: DnsAddressView[] }>;
  /** `unserved`: services the node cannot carry, so it is left out of their names' answers. */
  nodes: ReadonlyArray<{ id: string; zone: string; addresses: readonly string[]; live: boolean; why: string; unserved: readonly string[] }>;
  problems: readonly string[];
  queries: Record<string, number>;
  rrl: { sources: number; dropped: number; slipped: number };
}

/** What both nftables forwarders show about their table: name and seed, whether nft works here, the last transactions. */
export interface NftTableStateView {
  table: string;
  seed: number;
  /** Why the node cannot program nftables (no nft, no CAP_NET_ADMIN), or null. */
  unavailable: string | null;
  applies: number;
  failures: number;
  lastError: string | null;
  lastApplyMs: number;
}

/** The DSR forwarder's table, and the interface it forwards on. */
export interface DsrStateView extends NftTableStateView {
  /** Node config `dsr.interface`, or null when unset (DSR services are then not programmed). */
  device: string | null;
  /** Pins deleted because their backend could no longer carry flows. */
  pinsRemoved: number;
}

/** The kernel (NAT) forwarder's table. */
export interface KernelStateView extends NftTableStateView {
  /** Map slots the last transaction wrote (a delta writes only the changed ones). */
  lastSlotsChanged: number;
  /** Tracked flows removed (backend down, or past its drain timeout). */
  flowsRemoved: number;
}

/** GET /api/route with status 200: which backend a new connection from the client would get, and why. */
export interface RouteAnswer {
  service: string;
  client: string;
  port: number;
  revision: number;
  node: string;
  backend: { id: string; address: string; name?: string } | null;
  /**
   * The router's reason ("affinity (from node …)", the algorithm, "no-backend", "max-connections") or
   * "denied". "no-backend" is followed by why each backend is not routable ("no-backend: b1 resolve …").
   */
  reason: string;
  version?: string;
  /** Set for services the kernel forwards: the answer is the kernel's hash, computed in TypeScript. */
  forwarding?: "nat" | "dsr";
  /** The kernel map slot the flow hashes to (forwarding nat or dsr). */
  slot?: number;
  /** The chosen backend's shared verdict when it is partial or decided by observer quorum: state, votes. */
  verdict?: Pick<Verdict, "state" | "reason" | "partial" | "quorum" | "votes">;
  /** Backends with a partial verdict that this node avoids (its own probes fail them); the flow went elsewhere. */
  avoided?: string[];
}

/** One event (GET /api/events, `ballast events`). */
export interface EventView {
  at: number;
  node: string;
  kind: "verdict" | "backend-state" | "ejection" | "leadership" | "mode" | "drain" | "reload" | "invalid-record" | "started";
  message: string;
  service?: string;
  backend?: string;
}

/** GET /api/events: this node's most recent events, oldest first. */
export interface EventsView {
  node: string;
  events: EventView[];
}

/** Any admin API error body (404, 400, 401, …). */
export interface ApiError {
  error: string;
  revision?: number;
}

/**
 * GET /api/summary: one node's own figures, bounded by its services and backends and independent of the
 * cluster's size (no `nodes[]`, no backend specs or verdict details). What `ballast status` and the
 * status page ask every node for; the full /api/state is asked of one node only (issue 19).
 */
export interface NodeSummaryView {
  node: StateView["node"];
  cluster: string;
  revision: number;
  snapshotRevision: number;
  store: Pick<StateView["store"], "kind" | "connected" | "lastError" | "staleSeconds" | "snapshotSource">;
  health: HealthStateView;
  /** Live counters per service and backend, as in /api/state (the status page sums them over nodes). */
  services: Array<
    Pick<ServiceStateView, "name" | "active" | "accepted" | "bytesIn" | "bytesOut" | "retries" | "refused" | "udp"> & {
      affinityEntries: number;
      backends: Array<Pick<BackendStateView, "id" | "active" | "connections" | "bytesIn" | "bytesOut" | "connectFailures">>;
    }
  >;
  /** How many records this node lists as invalid (their keys and reasons: /api/state). */
  invalid: number;
  /** Whether the node runs a DNS responder (its view: /api/state `dns`). */
  dns: boolean;
}
