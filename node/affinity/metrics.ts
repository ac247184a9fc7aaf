// Prometheus metrics of the affinity table. Counters are plain numbers on the table, read at scrape
// time, so lookups and merges cost no label lookups; only the replication lag is a histogram (per batch).
import client from "prom-client";
import { collectedCounter, collectedGauge, type Emit } from "../collect.js";
import type { AffinityTable } from "./table.js";

export class AffinityMetrics {
  readonly replicationLag: client.Histogram;

  constructor(registry: client.Registry, table: AffinityTable) {
    const r = registry;
    const e = table.entries;
    type Table = (typeof e.tables)[number];
    // A service that is gone has no series once its entries are swept (its table is kept, empty).
    const listed = (t: Table) => t.size > 0 || table.hasService(t.name);
    const perService = (read: (t: Table) => number) => (emit: Emit<"service">) => {
      for (const t of e.tables) if (listed(t)) emit({ service: t.name }, read(t));
    };
    const counter = (name: string, help: string, read: (t: Table) => number) =>
      collectedCounter({ name, help, labelNames: ["service"], registry: r, read: perService(read) });
    const gauge = (name: string, help: string, read: (t: Table) => number) =>
      collectedGauge({ name, help, labelNames: ["service"], registry: r, read: perService(read) });
    counter("ballast_affinity_hits_total", "Connections and UDP flows routed by a live affinity entry.", (t) => t.hits);
    counter("ballast_affinity_misses_total", "Lookups with no entry for the client.", (t) => t.misses);
    counter("ballast_affinity_expired_total", "Lookups that found an entry past its TTL (a new pick followed).", (t) => t.expired);
    counter("ballast_affinity_moved_total", "Lookups that found an entry whose backend is down, disabled or removed (a new pick followed).", (t) => t.moved);
    gauge("ballast_affinity_entries", "Affinity entries in this node's table.", (t) => t.size);
    const scalar = (name: string, help: string, read: () => number) =>
      collectedCounter({ name, help, registry: r, read: (emit) => emit({}, read()) });
    scalar("ballast_affinity_evictions_total", "Entries evicted (least recently used) because the table was at affinity.maxEntries.", () => e.evictions);
    collectedGauge({
      name: "ballast_affinity_overflow",
      help: "1 while the table is at affinity.maxEntries and evicting live entries before their TTL (an overflow episode), else 0.",
      registry: r,
      read: (emit) => emit({}, table.overflowSince === 0 ? 0 : 1),
    });
    scalar("ballast_affinity_batches_written_total", "Affinity batches written to etcd by this node.", () => table.replicator?.batches ?? 0);
    scalar("ballast_affinity_bytes_written_total", "Bytes of affinity batches written to etcd by this node.", () => table.replicator?.bytes ?? 0);
    scalar("ballast_affinity_entries_written_total", "Entries written to etcd by this node (new and refreshed).", () => table.replicator?.entriesWritten ?? 0);
    scalar("ballast_affinity_exceptions_written_total", "Replication exception: entries written for every node (backend differs from the table's pick).", () => table.replicator?.exceptionsWritten ?? 0);
    scalar("ballast_affinity_records_written_total", "Replication exception: client records written to their shard's owners.", () => table.replicator?.recordsWritten ?? 0);
    scalar("ballast_affinity_held_total", "Replication exception: clients without an entry routed by the previous table during the hold after a table change.", () => table.held);
    collectedGauge({
      name: "ballast_affinity_owned_shards",
      help: "Replication exception: client record shards this node owns (watches and writes exceptions for).",
      registry: r,
      read: (emit) => emit({}, table.ownedShards.length),
    });
    scalar("ballast_affinity_write_failures_total", "Affinity batch writes that failed (retried).", () => table.replicator?.failures ?? 0);
    scalar("ballast_affinity_lease_grants_total", "Leases granted for affinity batches.", () => table.replicator?.leaseGrants ?? 0);
    collectedGauge({
      name: "ballast_affinity_queued_entries",
      help: "Entries waiting to be written to etcd.",
      registry: r,
      read: (emit) => emit({}, table.replicator?.queued ?? 0),
    });
    scalar("ballast_affinity_batches_received_total", "Affinity batches from other nodes merged into this node's table.", () => table.batchesReceived);
    scalar("ballast_affinity_invalid_batches_total", "Affinity values that could not be decoded (skipped).", () => table.invalidBatches);
    scalar("ballast_affinity_invalid_entries_total", "Affinity entries skipped: malformed, or naming a backend the service does not have.", () => table.invalidEntries);
    scalar("ballast_affinity_clamped_entries_total", "Affinity entries whose times were later than now + clock skew allowance (clamped).", () => table.clampedEntries);
    collectedCounter({
      name: "ballast_affinity_merges_total",
      help: "Entries from other nodes by merge result: new, same (refresh), won (replaced a different local entry), lost (local entry kept), stale (past TTL), superseded (a shard owner's entry for a lost backend replaced by the client's later move: replication exception).",
      labelNames: ["result"],
      registry: r,
      read: (emit) => {
        const m = table.merges;
        emit({ result: "new" }, m.new);
        emit({ result: "same" }, m.same);
        emit({ result: "won" }, m.won);
        emit({ result: "lost" }, m.lost);
        emit({ result: "stale" }, m.stale);
        emit({ result: "superseded" }, m.superseded);
      },
    });
    this.replicationLag = new client.Histogram({
      name: "ballast_affinity_replication_lag_seconds",
      help: "When a batch from another node is merged: now minus the newest last use in it.",
      buckets: [0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10],
      registers: [r],
    });
  }
}
