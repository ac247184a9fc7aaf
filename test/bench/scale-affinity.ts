// Affinity at scale (issue 19): etcd egress per new client and affinity entries per node, with N
// in-process participants (the real AffinityTable, Replicator, merge and shard syncs; no listeners)
// against one real etcd. Reusable: `npm run bench -- --scale N` calls scaleAffinity(); a test runs it
// at small N. By hand:
//   npm run build && node dist/test/bench/scale-affinity.js [N …]   (default 3 30 100, both modes)
//
// Egress is measured twice: what etcd says it sent (its etcd_network_client_grpc_sent_bytes_total,
// all gRPC traffic: watch events, put and lease answers), and the key + value bytes of the watch
// events the participants received. Every participant sees `clientsPerNode` new clients, each on the
// table's pick (clients that never changed backend); entries per node are counted once every
// participant holds what the mode promises it (mesh: every entry; exception: the clients it saw and
// its shards' records).
import { fileURLToPath } from "node:url";
import { AffinityTable } from "../../node/affinity/table.js";
import { ownedShards, recordsPrefix, shardOf } from "../../node/affinity/shards.js";
import { EtcdStore } from "../../node/control/etcd-store.js";
import type { KeyValue, Store, StoreEvent, SyncSink } from "../../node/control/store.js";
import { Router } from "../../node/data/router.js";
import { createLogger } from "../../node/log.js";
import type { ServiceState, Snapshot } from "../../node/model/snapshot.js";
import { BallastNode } from "../../node/node.js";
import { KeySchema } from "../../shared/keys.js";
import { nodeConfigSchema } from "../../shared/schema.js";
import client from "prom-client";

export type Replication = "mesh" | "exception";

export interface ScaleAffinityOptions {
  /** etcd client URL (http://127.0.0.1:port); its /metrics is read for the sent bytes. */
  endpoint: string;
  nodes: number;
  replication: Replication;
  /** New clients seen by each participant (default 200). */
  clientsPerNode?: number;
  backends?: number;
  /** Give up waiting for the participants to converge after this long (default 120 s). */
  timeoutMs?: number;
}

export interface ScaleAffinityResult {
  nodes: number;
  replication: Replication;
  clients: number;
  /** etcd's gRPC bytes sent (to every participant) per new client. */
  etcdSentBytesPerClient: number;
  /** Watch event bytes (key + value) delivered to the participants per new client. */
  deliveredBytesPerClient: number;
  /** Bytes the participants put per new client (etcd ingress). */
  writtenBytesPerClient: number;
  entriesPerNode: { mean: number; max: number; min: number };
  /** Until every participant held what its mode promises. */
  convergeMs: number;
}

/** The snapshot every participant routes by: one service, `backends` backends, affinity on, proxied. */
async function snapshotOf(backends: number): Promise<{ snap: Snapshot; close: () => Promise<void> }> {
  const config = nodeConfigSchema.parse({
    admin: { listen: "127.0.0.1:0" },
    accessLog: { enabled: false },
    services: [
      {
        name: "web",
        listen: "127.0.0.1:0",
        affinity: { mode: "source-ip", ttl: "10m" },
        health: { type: "none" },
        backends: Array.from({ length: backends }, (_, i) => ({ id: `b${i}`, address: "127.0.0.1", port: 20000 + i })),
      },
    ],
  });
  const node = new BallastNode({ config, log: createLogger("silent") });
  await node.start();
  return { snap: node.reconciler.snapshot!, close: () => node.close() };
}

async function etcdSentBytes(endpoint: string): Promise<number> {
  const text = await (await fetch(`${endpoint}/metrics`)).text();
  let sum = 0;
  for (const line of text.split("\n")) if (line.startsWith("etcd_network_client_grpc_sent_bytes_total")) sum += Number(line.split(" ").pop());
  return sum;
}

/** A store whose syncs count the bytes delivered, and whose puts count the bytes written. */
function counting(inner: Store, tally: { delivered: number; written: number }): Store {
  const size = (kvs: Array<KeyValue | StoreEvent>) => {
    let n = 0;
    for (const kv of kvs) n += kv.key.length + kv.value.length;
    return n;
  };
  return new Proxy(inner, {
    get(target, prop, receiver) {
      if (prop === "sync")
        return (prefix: string, sink: SyncSink) =>
          target.sync(prefix, {
            reset: (kvs, rev) => {
              tally.delivered += size(kvs);
              sink.reset(kvs, rev);
            },
            events: (evs, rev) => {
              tally.delivered += size(evs);
              sink.events(evs, rev);
            },
            status: (c, e) => sink.status(c, e),
          });
      if (prop === "put")
        return (key: string, value: Buffer | string, opts?: never) => {
          tally.written += key.length + value.length;
          return target.put(key, value, opts);
        };
      const v = Reflect.get(target, prop, receiver);
      return typeof v === "function" ? v.bind(target) : v;
    },
  });
}

const ipOf = (i: number) => `10.${(i >> 16) & 255}.${(i >> 8) & 255}.${(i & 255) + 0}`;

export async function scaleAffinity(o: ScaleAffinityOptions): Promise<ScaleAffinityResult> {
  const c = o.clientsPerNode ?? 200;
  const cluster = `scaleaff-${o.replication}-${o.nodes}-${process.pid}-${Date.now()}`;
  const keys = KeySchema.forCluster(cluster);
  const { snap, close } = await snapshotOf(o.backends ?? 10);
  const svc = snap.services.get("web") as ServiceState;
  const store = new EtcdStore({ endpoints: [o.endpoint] });
  const tally = { delivered: 0, written: 0 };
  const counted = counting(store, tally);
  const ids = Array.from({ length: o.nodes }, (_, i) => `p${String(i).padStart(3, "0")}`);
  const log = createLogger("silent");
  const config = nodeConfigSchema.parse({ affinity: { replication: o.replication } }).affinity;
  const members = ids.map((id) => ({ id, ready: true }));
  const tables = ids.map(
    (id) =>
      new AffinityTable({ id, config, keys, log, registry: new client.Registry(), store: counted, snapshot: () => snap, nodes: () => members }),
  );
  // The reconciler's part: the broadcast prefix (affinity/…) to every participant.
  const syncs = tables.map((t) => counted.sync(keys.affinity, { reset: (kvs) => t.reset(kvs), events: (evs) => t.events(evs), status: () => {} }));
  const sent0 = await etcdSentBytes(o.endpoint);
  const delivered0 = tally.delivered;
  try {
    for (const t of tables) {
      t.start();
      t.applied(snap);
      t.membershipChanged();
    }
    // Each participant sees its own clients, routed as the hot path routes them.
    const seen = ids.map((_, p) => Array.from({ length: c }, (_, i) => ipOf(p * c + i + 1)));
    const started = Date.now();
    for (let p = 0; p < tables.length; p++) {
      const router = new Router(tables[p]);
      const now = Date.now();
      for (const ip of seen[p]) router.route(svc, ip, 40000, null, now);
    }
    const all = seen.flat();
    const want = tables.map((_, p) => {
      if (o.replication === "mesh") return all.length;
      const owned = ownedShards(ids[p], ids);
      return new Set([...seen[p], ...all.filter((ip) => owned.has(shardOf(ip)))]).size;
    });
    const deadline = Date.now() + (o.timeoutMs ?? 120_000);
    for (;;) {
      if (tables.every((t, p) => (t.entries.table("web")?.size ?? 0) >= want[p] && t.replicator!.queued === 0 && !t.pending)) break;
      if (Date.now() > deadline) throw new Error(`scaleAffinity: participants did not converge in ${o.timeoutMs ?? 120_000} ms`);
      await new Promise((r) => setTimeout(r, 50));
    }
    const convergeMs = Date.now() - started;
    const sent = (await etcdSentBytes(o.endpoint)) - sent0;
    const sizes = tables.map((t) => t.entries.table("web")?.size ?? 0);
    return {
      nodes: o.nodes,
      replication: o.replication,
      clients: all.length,
      etcdSentBytesPerClient: sent / all.length,
      deliveredBytesPerClient: (tally.delivered - delivered0) / all.length,
      writtenBytesPerClient: tally.written / all.length,
      entriesPerNode: { mean: sizes.reduce((a, b) => a + b, 0) / sizes.length, max: Math.max(...sizes), min: Math.min(...sizes) },
      convergeMs,
    };
  } finally {
    await Promise.all(syncs.map((s) => s.stop()));
    await Promise.all(tables.map((t) => t.stop()));
    await store.deletePrefix(keys.prefix).catch(() => 0);
    await store.deletePrefix(recordsPrefix(keys)).catch(() => 0);
    await store.close();
    await close();
  }
}

export function formatScaleAffinity(rows: readonly ScaleAffinityResult[]): string {
  const out = ["| replication | nodes | clients | etcd sent B/client | delivered B/client | written B/client | entries/node mean (min-max) | converged |", "|---|---|---|---|---|---|---|---|"];
  for (const r of rows)
    out.push(
      `| ${r.replication} | ${r.nodes} | ${r.clients} | ${r.etcdSentBytesPerClient.toFixed(0)} | ${r.deliveredBytesPerClient.toFixed(0)} | ${r.writtenBytesPerClient.toFixed(0)} | ${r.entriesPerNode.mean.toFixed(0)} (${r.entriesPerNode.min}-${r.entriesPerNode.max}) | ${(r.convergeMs / 1000).toFixed(1)} s |`,
    );
  return out.join("\n");
}

async function main(): Promise<void> {
  const { startEtcd } = await import("../helpers/etcd.js");
  const ns = process.argv.slice(2).map(Number).filter((n) => n > 0);
  const etcd = await startEtcd();
  const rows: ScaleAffinityResult[] = [];
  try {
    for (const nodes of ns.length > 0 ? ns : [3, 30, 100]) {
      for (const replication of ["mesh", "exception"] as const) {
        const r = await scaleAffinity({ endpoint: etcd.endpoint, nodes, replication, clientsPerNode: Number(process.env.CLIENTS ?? 200) });
        rows.push(r);
        process.stdout.write(`${formatScaleAffinity([r]).split("\n")[2]}\n`);
      }
    }
  } finally {
    await etcd.stop();
  }
  process.stdout.write(`\n${formatScaleAffinity(rows)}\n`);
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  main().then(
    () => process.exit(0),
    (err) => {
      process.stderr.write(`${(err as Error).stack}\n`);
      process.exit(1);
    },
  );
}
