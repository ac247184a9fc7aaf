// The chaos harness's public names, in one place: scenario files import from here. The harness
// itself lives in test/chaos/cluster/, one file per concept:
//   docker.ts         images, labels, the container builder, removal of a run and of dead runs
//   member.ts         one container and its faults (kill, stop, pause, network cut), exec, logs
//   etcd-member.ts    an etcd member: health, raft leader, JSON gateway
//   node-member.ts    a Ballast node: admin API (typed by shared/api.ts), metrics, JSON log, announcer
//   client.ts         the load client and its results (per-connection node and backend)
//   etcd-history.ts   etcd reads without etcd3: ranges, verdict records, a prefix's history
//   observe.ts        sampling while a fault runs, and "the first time each node sees X"
//   chaos-cluster.ts  ChaosCluster: start, records, leaders, restore to the baseline, destroy

export {
  ChaosCluster,
  type ClusterOptions,
  DEFAULT_SERVICE,
  DSR_SERVICE,
  WITHDRAW_DELAY_MS,
} from "./cluster/chaos-cluster.js";
export { byNode, Client, type ConnectionRecord, type LoadOptions, type LoadResult, nodeOf, percentile, pinMismatches } from "./cluster/client.js";
export { docker, IMAGES, OWNER_LABEL, RUN_LABEL, removeLabelled, sweepOrphans } from "./cluster/docker.js";
export type { EtcdEvent, VerdictRecord } from "./cluster/etcd-history.js";
export { EtcdMember } from "./cluster/etcd-member.js";
export { type ExecResult, Member, type NetKey, type NetworkInfo } from "./cluster/member.js";
export { type LogEvent, NodeMember } from "./cluster/node-member.js";
export {
  everyNodeSees,
  type FirstSeenOptions,
  firstSeen,
  notAnnouncedSamples,
  notReadySamples,
  parseRouteEvents,
  type ReadinessSample,
  type RouteEvent,
  type StateSource,
  sampleEvery,
  sleep,
  unknownSamples,
  watchConntrack,
  watchReadiness,
  watchRouteEvents,
  watchRoutes,
} from "./cluster/observe.js";

import type { StateView } from "../../shared/api.js";
import { NodeMember } from "./cluster/node-member.js";

/** The old name of NodeMember (kept for scenario files written against it). */
export const BallastNode = NodeMember;
export type BallastNode = NodeMember;
/** /api/state: use StateView from shared/api.ts; kept for scenario files written against it. */
export type NodeState = StateView;
