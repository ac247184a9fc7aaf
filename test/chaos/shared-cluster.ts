// One cluster for the scenarios that can leave it as they found it (all but 6, which kills etcd):
// started once per test file, put back to the baseline before each scenario (ChaosCluster.restore),
// and removed at the end. Starting a cluster costs ~10 s and removing it ~15 s on a 2-core machine.
import { afterAll, beforeAll } from "vitest";
import { ChaosCluster } from "./cluster.js";
import { recordFigure } from "./figures.js";

/** Health is checked every second, two results flip a verdict: the bounds below are in these terms. */
/**
 * Probes get 800 ms: with 300 ms, probes that a loaded machine answered late made nodes avoid healthy
 * backends locally (a partial verdict: "fails only from n3 (timeout 300ms)"), and clients pinned to
 * them that reached those nodes moved, failing chaos 1's affinity checks in two rehearsals.
 */
export const HEALTH = { intervalMs: 1_000, timeoutMs: 800, rise: 2, fall: 2 } as const;
export const LEASE_TTL_S = 3;

/**
 * Round robin with source-ip affinity: without an entry, nodes would pick different backends for one
 * client, so a client keeping its backend across nodes proves the entries are shared.
 */
export const SHARED_SERVICE = {
  listen: "0.0.0.0:8080",
  protocol: "tcp",
  algorithm: "round-robin",
  affinity: { mode: "source-ip", ttl: "10m" },
  health: { type: "http", interval: `${HEALTH.intervalMs}ms`, timeout: `${HEALTH.timeoutMs}ms`, rise: HEALTH.rise, fall: HEALTH.fall, http: { path: "/" } },
};

/** Registers the shared cluster's start and removal around the file's scenarios; call at top level. */
export function sharedCluster(): () => ChaosCluster {
  let cluster: ChaosCluster | undefined;
  beforeAll(async () => {
    const t = Date.now();
    cluster = await ChaosCluster.start({ etcdMembers: 3, nodes: 3, backends: 3, anycast: true, service: SHARED_SERVICE, leaseTtl: LEASE_TTL_S });
    await cluster.baseline();
    recordFigure({ scenario: "shared cluster", figure: "start to baseline (3 etcd, 3 nodes, 3 backends, router, client)", value: Date.now() - t, unit: "ms" });
  });
  afterAll(async () => {
    await cluster?.destroy();
  });
  return () => {
    if (!cluster) throw new Error("the shared cluster did not start");
    return cluster;
  };
}
