// Reading etcd from the harness without a client library (only node/control/ imports etcd3): the
// JSON gateway's base64 ranges, verdict records decoded, and the history of a prefix — every put and
// delete since a revision, with the previous value — read by `etcdctl watch --rev` inside a member.

import type { Verdict } from "../../../shared/api.js";
import { decodeValue } from "../../../shared/codec.js";
import type { EtcdMember } from "./etcd-member.js";

/** A verdict record as stored under health/verdicts/<service>/<backend>, with its etcd revisions. */
export interface VerdictRecord extends Verdict {
  modRevision: number;
  version: number;
}

export interface EtcdEvent {
  type: "put" | "delete";
  key: string;
  revision: number;
  /** Decoded msgpack value (null for deletes or values that are not msgpack). */
  value: Record<string, unknown> | null;
  raw: Buffer;
  prev: Buffer | null;
}

/** A key/value as etcd's JSON gateway returns it (key and value base64). */
export interface GatewayKv {
  key: string;
  value: string;
  mod_revision: string;
  version: string;
}

export function b64(s: string): string {
  return Buffer.from(s).toString("base64");
}

/** etcd's range end for "every key with this prefix": the prefix with its last byte incremented. */
export function prefixEnd(prefix: string): string {
  const buf = Buffer.from(prefix);
  buf[buf.length - 1]++;
  return buf.toString();
}

/** The gateway's range request for every key under a prefix. */
export function prefixRange(prefix: string): { key: string; range_end: string } {
  return { key: b64(prefix), range_end: b64(prefixEnd(prefix)) };
}

/** Verdict records of one range answer under `prefix`, by backend id. */
export function decodeVerdicts(prefix: string, kvs: GatewayKv[]): Map<string, VerdictRecord> {
  const out = new Map<string, VerdictRecord>();
  for (const kv of kvs) {
    const id = Buffer.from(kv.key, "base64").toString().slice(prefix.length);
    const v = decodeValue(Buffer.from(kv.value, "base64")) as unknown as Verdict;
    out.set(id, { ...v, modRevision: Number(kv.mod_revision), version: Number(kv.version) });
  }
  return out;
}

interface RawWatchEvent {
  type?: number | string;
  kv: { key: string; value?: string; mod_revision: number };
  prev_kv?: { value?: string };
}

function parseWatchEvent(e: RawWatchEvent): EtcdEvent {
  const raw = Buffer.from(e.kv.value ?? "", "base64");
  const isDelete = e.type === 1 || e.type === "DELETE";
  let value: Record<string, unknown> | null = null;
  if (!isDelete) {
    try {
      value = decodeValue(raw);
    } catch {
      value = null;
    }
  }
  return {
    type: isDelete ? "delete" : "put",
    key: Buffer.from(e.kv.key, "base64").toString(),
    revision: Number(e.kv.mod_revision),
    value,
    raw,
    prev: e.prev_kv?.value ? Buffer.from(e.prev_kv.value, "base64") : null,
  };
}

/** Every change under `key` (a full key prefix) since `fromRevision`, from the first running member that answers. */
export async function readHistory(members: readonly EtcdMember[], key: string, fromRevision: number): Promise<EtcdEvent[]> {
  let lastErr: unknown;
  for (const m of members) {
    if (!(await m.running().catch(() => false))) continue;
    // The watch never ends by itself: `timeout` stops it once the past events are printed.
    const r = await m.exec(["timeout", "2", "etcdctl", "--endpoints=http://127.0.0.1:2379", "watch", `--rev=${fromRevision}`, "--prefix", "--prev-kv", "-w", "json", key]);
    if (r.exitCode !== 0 && r.exitCode !== 124 && r.exitCode !== 143) {
      lastErr = new Error(`${m.name}: etcdctl watch exited ${r.exitCode}: ${r.stderr}`);
      continue;
    }
    const events: EtcdEvent[] = [];
    for (const line of r.stdout.split("\n")) {
      if (!line.startsWith("{")) continue;
      const doc = JSON.parse(line) as { Events?: RawWatchEvent[] };
      for (const e of doc.Events ?? []) events.push(parseWatchEvent(e));
    }
    return events.sort((a, b) => a.revision - b.revision);
  }
  throw lastErr ?? new Error("no etcd member running");
}
