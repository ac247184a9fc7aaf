// Replication "exception" (issue 19): client records sharded by client hash to a few owner nodes.
//
// Every node writes the clients it saw as compact records to one of SHARDS shard prefixes, chosen by
// the client's hash; only the shard's owners watch it: the SHARD_REPLICAS ready nodes ranked first
// by rendezvous hash (every node computes the same owners from the same node records). Owners write
// an exception to the broadcast prefix (affinity/…, which every node watches) for each client whose
// recorded backend differs from the current table's pick. A record is leased to the affinity TTL,
// not to its writer: it outlives the node that saw the client, and a new owner lists the shard.
//
// The shard prefixes sit beside the cluster prefix, not under it: the reconciler watches the whole
// cluster prefix, and records under it would reach every node again.
import type { KeySchema } from "../../shared/keys.js";
import { NODE_ID, SERVICE_NAME } from "../../shared/keys.js";
import { hashString } from "../lb/hash.js";

/** Shards per cluster: part of the key layout (a different count puts records under other keys). */
export const SHARDS = 128;
/** Owners per shard: a shard loses its watchers only when both die before a new owner has listed it. */
export const SHARD_REPLICAS = 2;
const SHARD_SEED = 0x5eed_a11;

/** The shard of a client: its own hash (not the table's source hash, so shards do not follow backends). */
export function shardOf(ip: string): number {
  return (hashString(ip, SHARD_SEED) >>> 0) % SHARDS;
}

/** `/ballast/<cluster>.clients/`: beside the cluster prefix, so the cluster watch does not carry records. */
export function recordsPrefix(keys: KeySchema): string {
  const p = keys.prefix.endsWith("/") ? keys.prefix.slice(0, -1) : keys.prefix;
  return `${p}.clients/`;
}

export function shardPrefix(keys: KeySchema, shard: number): string {
  return `${recordsPrefix(keys)}${shard}/`;
}

/** `<cluster>.clients/<shard>/<service>/<node>/<seq>`: one node's batch of records for one shard of one service. */
export function recordKey(keys: KeySchema, shard: number, service: string, node: string, seq: number): string {
  return `${shardPrefix(keys, shard)}${service}/${node}/${seq}`;
}

export type RecordKey = { shard: number; service: string; node: string };

/** Parses a record key under `shardPrefix(keys, shard)`; a string is the reason it is not one. */
export function parseRecordKey(keys: KeySchema, key: string): RecordKey | string {
  const base = recordsPrefix(keys);
  if (!key.startsWith(base)) return "not under the records prefix";
  const parts = key.slice(base.length).split("/");
  if (parts.length !== 4) return "expected <shard>/<service>/<node>/<seq>";
  const shard = Number(parts[0]);
  if (!/^\d{1,3}$/.test(parts[0]) || shard >= SHARDS) return `shard ${JSON.stringify(parts[0].slice(0, 20))} is not 0-${SHARDS - 1}`;
  if (!SERVICE_NAME.test(parts[1])) return `malformed service ${JSON.stringify(parts[1].slice(0, 40))}`;
  if (!NODE_ID.test(parts[2])) return `malformed node ${JSON.stringify(parts[2].slice(0, 40))}`;
  if (!/^\d{1,20}$/.test(parts[3])) return "malformed sequence";
  return { shard, service: parts[1], node: parts[2] };
}

/** The shards `self` owns among `nodes` (ready node ids): rendezvous, top SHARD_REPLICAS per shard. */
export function ownedShards(self: string, nodes: readonly string[], replicas = SHARD_REPLICAS): Set<number> {
  const out = new Set<number>();
  const scored = nodes.map((id) => ({ id, seed: hashString(id, SHARD_SEED) }));
  for (let shard = 0; shard < SHARDS; shard++) {
    const ranked = scored.map((n) => ({ id: n.id, score: hashString(`${shard}`, n.seed) >>> 0 })).sort((a, b) => b.score - a.score || (a.id < b.id ? -1 : 1));
    for (let i = 0; i < Math.min(replicas, ranked.length); i++) if (ranked[i].id === self) out.add(shard);
  }
  return out;
}
