// What riding out etcd outages cost this node (issue 19), as metrics: leases lost, revokes owed and
// made late, stale election keys cleared, re-lists, and the node's own registrations. The scale bench
// and operators read recovery from these rather than from logs.
import type client from "prom-client";
import { collectedCounter, collectedGauge, collectedTotal, collectedValue } from "../collect.js";
import type { EndpointState } from "./etcd-endpoints.js";
import type { StoreRecoveryStats } from "./etcd-store.js";

/** The node's registrations of its record on a new lease: one at start, then one per lost lease. */
export interface RegistrationStats {
  registrations: number;
}

export function registerRecoveryMetrics(
  registry: client.Registry,
  s: StoreRecoveryStats,
  node: RegistrationStats,
  endpoints: () => EndpointState[] = () => [],
): void {
  collectedGauge<"endpoint">({
    name: "ballast_etcd_endpoint_up",
    help: "1 while calls may use this etcd endpoint; 0 while it is avoided (it failed its health probe while another endpoint answered).",
    labelNames: ["endpoint"],
    registry,
    read: (emit) => {
      for (const e of endpoints()) emit({ endpoint: e.endpoint }, e.up ? 1 : 0);
    },
  });
  collectedCounter<"endpoint">({
    name: "ballast_etcd_endpoint_avoidances_total",
    help: "Times this etcd endpoint became avoided: its calls and streams were moved to the other endpoints.",
    labelNames: ["endpoint"],
    registry,
    read: (emit) => {
      for (const e of endpoints()) emit({ endpoint: e.endpoint }, e.avoidances);
    },
  });
  collectedTotal({
    name: "ballast_etcd_leases_lost_total",
    help: "Kept-alive leases (registration, election, observer) lost: etcd said expired, or no keepalive answer for 2 × TTL.",
    registry,
    value: () => s.leasesLost,
  });
  collectedTotal({
    name: "ballast_etcd_lease_revokes_deferred_total",
    help: "Lease revokes that did not reach etcd (it was unreachable) and were handed to the retry.",
    registry,
    value: () => s.revokesDeferred,
  });
  collectedTotal({
    name: "ballast_etcd_lease_revokes_retried_total",
    help: "Deferred lease revokes that reached etcd once it answered again.",
    registry,
    value: () => s.revokesRetried,
  });
  collectedValue({
    name: "ballast_etcd_lease_revokes_pending",
    help: "Lease revokes waiting for etcd to answer.",
    registry,
    value: () => s.revokesPending,
  });
  collectedTotal({
    name: "ballast_etcd_stale_election_keys_total",
    help: "Election keys of this node's own abandoned campaigns deleted instead of waited for.",
    registry,
    value: () => s.staleElectionKeys,
  });
  collectedTotal({
    name: "ballast_etcd_relists_total",
    help: "Full re-lists of the cluster prefix (the first list not counted): after a compaction passed the watch, a cancel by etcd, or a failed sink.",
    registry,
    value: () => s.relists,
  });
  collectedTotal({
    name: "ballast_etcd_watch_resumes_total",
    help: "Watches of the cluster prefix resumed after a break from the last revision taken, without a re-list.",
    registry,
    value: () => s.resumes,
  });
  collectedTotal({
    name: "ballast_node_registrations_total",
    help: "Registrations of this node's record on a new lease: 1 at start, then one per lost lease.",
    registry,
    value: () => node.registrations,
  });
}
