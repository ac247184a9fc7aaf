// The affinity batch: the value of one etcd put at affinity/<service>/<node>/<seq>, holding the new
// and refreshed entries of one service that one node queued during one batch interval.
//
//   { v: 1, node: "<writer>", base: <newest lastUsed, ms since epoch>,
//     backends: ["<id>", …], nodes: ["<creator id>", …],
//     entries: [[ip, backendIndex, base − lastUsed, base − created, generation, creatorIndex], …] }
//
// Times are deltas from `base` so they pack as small integers; ids are indexes into per-batch lists.
// Readers ignore extra map fields and extra trailing tuple elements (newer writers may add some).
import { isIP } from "node:net";
import { decodeValue, encodeValue } from "../../shared/codec.js";
import { BACKEND_ID, NODE_ID } from "../../shared/keys.js";

/** Values stay far below etcd's 1.5 MiB request limit; a larger batch is split. */
export const MAX_BATCH_BYTES = 512 * 1024;

export interface BatchEntry {
  ip: string;
  backend: string;
  lastUsed: number;
  created: number;
  gen: number;
  creator: string;
}

export function encodeBatch(writer: string, entries: readonly BatchEntry[]): Buffer {
  let base = -Infinity;
  for (const e of entries) if (e.lastUsed > base) base = e.lastUsed;
  if (entries.length === 0) base = 0;
  const backends: string[] = [];
  const backendIdx = new Map<string, number>();
  const nodes: string[] = [];
  const nodeIdx = new Map<string, number>();
  const rows: unknown[][] = [];
  for (const e of entries) {
    let b = backendIdx.get(e.backend);
    if (b === undefined) {
      b = backends.push(e.backend) - 1;
      backendIdx.set(e.backend, b);
    }
    let c = nodeIdx.get(e.creator);
    if (c === undefined) {
      c = nodes.push(e.creator) - 1;
      nodeIdx.set(e.creator, c);
    }
    rows.push([e.ip, b, base - e.lastUsed, base - e.created, e.gen, c]);
  }
  return encodeValue({ node: writer, base, backends, nodes, entries: rows });
}

/** Encodes, splitting until every value is under `maxBytes`. */
export function encodeBatches(writer: string, entries: readonly BatchEntry[], maxBytes = MAX_BATCH_BYTES): Buffer[] {
  const value = encodeBatch(writer, entries);
  if (value.length <= maxBytes || entries.length <= 1) return [value];
  const half = entries.length >>> 1;
  return [...encodeBatches(writer, entries.slice(0, half), maxBytes), ...encodeBatches(writer, entries.slice(half), maxBytes)];
}

export interface DecodedBatch {
  node: string;
  /** Newest lastUsed in the batch. */
  base: number;
  entries: BatchEntry[];
  /** Tuples that were malformed and skipped. */
  skipped: number;
}

const isInt = (x: unknown): x is number => typeof x === "number" && Number.isInteger(x);

/**
 * Generations are stored as int32 and a re-pick adds one: anything above this would wrap (a re-pick
 * losing to the binding it replaces on every node), so such a tuple is malformed.
 */
export const MAX_GEN = 0x7fff_fffe;
/** A client address as sockets report it: IPv4 or IPv6 text, 45 characters at most. */
const isClient = (ip: unknown): ip is string => typeof ip === "string" && ip.length <= 45 && isIP(ip) !== 0;

/** Decodes a batch value; throws when the value as a whole is not a batch, skips malformed tuples. */
export function decodeBatch(bytes: Uint8Array): DecodedBatch {
  const v = decodeValue(bytes);
  const { node, base, backends, nodes, entries } = v as { node?: unknown; base?: unknown; backends?: unknown; nodes?: unknown; entries?: unknown };
  if (typeof node !== "string" || !NODE_ID.test(node)) throw new Error("affinity batch: missing or malformed node");
  if (typeof base !== "number" || !Number.isFinite(base)) throw new Error("affinity batch: missing base");
  if (!Array.isArray(backends) || !Array.isArray(nodes) || !Array.isArray(entries)) throw new Error("affinity batch: missing backends, nodes or entries");
  const out: BatchEntry[] = [];
  let skipped = 0;
  for (const row of entries as unknown[]) {
    if (!Array.isArray(row) || row.length < 6) {
      skipped++;
      continue;
    }
    const [ip, b, du, dc, gen, c] = row as unknown[];
    const backend = isInt(b) ? backends[b] : undefined;
    const creator = isInt(c) ? nodes[c] : undefined;
    // Each field as the writer would have written it: a client address, names by the key rules, integer
    // deltas, a generation that fits. Anything else is a rogue or broken writer's, skipped.
    if (!isClient(ip) || typeof backend !== "string" || !BACKEND_ID.test(backend) || typeof creator !== "string" || !NODE_ID.test(creator) || !isInt(du) || !isInt(dc) || !isInt(gen) || gen < 0 || gen > MAX_GEN) {
      skipped++;
      continue;
    }
    out.push({ ip, backend, lastUsed: base - du, created: base - dc, gen, creator });
  }
  return { node, base, entries: out, skipped };
}
