// Versioned msgpack values for what machines write at volume (node records, verdicts, heartbeats,
// affinity batches). Every value is a map with `v`; readers accept newer versions and ignore extra fields.

import { Packr } from "msgpackr";
import { z } from "zod";
import { parseHostPort } from "./address.js";
import type { NodeRecord, Observation, Verdict } from "./api.js";
import { BACKEND_ID, NODE_ID, SERVICE_NAME } from "./keys.js";

export type { NodeRecord, Observation, ObserverVote, Verdict, VerdictState } from "./api.js";

// Plain maps (no record extension) so any msgpack reader, in any language, can decode our values.
// 64-bit integers decode as numbers: a BigInt anywhere in a value makes JSON.stringify throw, so one
// record written by another msgpack library (or a rogue writer) would fail /api/state on every node.
const packr = new Packr({ useRecords: false, mapsAsObjects: true, int64AsType: "number" });

export const CODEC_VERSION = 1;

export function encodeValue(value: Record<string, unknown>): Buffer {
  return packr.pack({ v: CODEC_VERSION, ...value });
}

/** Decodes a versioned value; throws with a reason an operator can read (callers turn it into an invalid record). */
export function decodeValue(bytes: Uint8Array): Record<string, unknown> {
  let out: unknown;
  try {
    out = packr.unpack(bytes);
  } catch (err) {
    throw new Error(`not msgpack: ${(err as Error).message}`);
  }
  if (out === null || typeof out !== "object" || Array.isArray(out)) throw new Error("not a msgpack map");
  const v = (out as { v?: unknown }).v;
  if (typeof v !== "number" || v < 1) throw new Error("missing version field v");
  return out as Record<string, unknown>;
}

export interface HealthHeartbeat {
  leader: string;
  at: number;
  term: string;
  settled?: boolean;
  checking?: number;
}

/** Free text a node publishes about itself: short, and no control or bidi characters (they reach terminals and pages). */
const label = (max: number) => z.string().max(max).regex(/^[^\p{Cc}\u202A-\u202E\u2066-\u2069]*$/u, "control or bidi-override characters");
const epochMs = z.number().finite().min(0);

/**
 * An admin address a browser or the CLI may be sent to: "host:port" with an IP literal or a DNS name
 * as host (no userinfo, path, scheme or spaces: it is put after "http://").
 */
export const adminAddress = z
  .string()
  .max(300)
  .refine((s) => {
    const hp = parseHostPort(s);
    if (!hp || hp.port === 0 || s.trim() !== s) return false;
    return /^[a-zA-Z0-9.-]{1,253}$/.test(hp.host) || (s.startsWith("[") && /^[0-9a-fA-F:.]{2,45}$/.test(hp.host));
  }, 'expected "host:port" with an IP address or DNS name as host');

/** Most services one node record lists as unserved; a node that cannot carry more lists the first ones (sorted). */
export const MAX_UNSERVED = 4096;

/** A node record as read from nodes/<id>: written by nodes, but checked like any record (a rogue writer can put anything). */
export const nodeRecordSchema = z.object({
  id: z.string().regex(NODE_ID, "expected a node id"),
  address: adminAddress,
  admin: adminAddress,
  zone: label(128),
  version: label(64),
  ready: z.boolean(),
  draining: z.boolean(),
  revision: z.number().int().min(0),
  mode: z.enum(["shared", "local-fallback", "standalone"]),
  /** The node's public addresses (what DNS answers); absent from older nodes. The DNS view keeps only IPs. */
  public: z.array(label(64)).max(64).optional(),
  /** Services the node cannot carry (DNS leaves it out of their answers); absent from older nodes. */
  unserved: z.array(z.string().regex(SERVICE_NAME, "expected a service name")).max(MAX_UNSERVED).optional(),
  startedAt: epochMs,
  updatedAt: epochMs,
  /** The node's operator drain (rollout/drains/<id>); absent from older nodes and when not drained. */
  drain: z
    .object({
      state: z.enum(["draining", "drained"]),
      since: epochMs,
      drainedAt: epochMs,
      openAtStart: z.number().int().min(0),
      open: z.number().int().min(0),
    })
    .optional(),
});

export const heartbeatSchema = z.object({
  leader: z.string().regex(NODE_ID, "expected a node id"),
  at: epochMs,
  term: label(128),
  /** Written by leaders since the settled-verdicts change; absent from older ones. */
  settled: z.boolean().optional(),
  checking: z.number().int().min(0).optional(),
});

function issues(error: z.ZodError): string {
  return error.issues.map((i) => `${i.path.join(".") || "(root)"}: ${i.message}`).join("; ");
}

/** Decodes and validates a node record; throws with the reason. The key's id must match the value's. */
export function parseNodeRecord(id: string, bytes: Uint8Array): NodeRecord {
  const r = nodeRecordSchema.safeParse(decodeValue(bytes));
  if (!r.success) throw new Error(issues(r.error));
  if (r.data.id !== id) throw new Error(`id ${r.data.id} does not match the key's ${id}`);
  return r.data;
}

export function parseHeartbeat(bytes: Uint8Array): HealthHeartbeat {
  const r = heartbeatSchema.safeParse(decodeValue(bytes));
  if (!r.success) throw new Error(issues(r.error));
  return r.data;
}

/** Observers of one decision: more than this is not a quorum anyone configured (the schema caps K at 15). */
const MAX_VOTES = 64;
const votesSchema = z
  .record(z.string().regex(NODE_ID, "expected a node id"), z.enum(["pass", "fail", "none", "local"]))
  .refine((r) => Object.keys(r).length <= MAX_VOTES, `at most ${MAX_VOTES} observers`);

/** A verdict record's value; throws naming what is wrong (the record is then skipped with that reason). */
export function parseVerdictValue(raw: Buffer): Verdict {
  const v = decodeValue(raw);
  if (v.state !== "up" && v.state !== "down") throw new Error(`verdict state must be up or down, got ${String(v.state)}`);
  const out: Verdict = {
    state: v.state,
    since: typeof v.since === "number" ? v.since : 0,
    reason: typeof v.reason === "string" ? v.reason : "",
    count: typeof v.count === "number" ? v.count : 0,
    checker: typeof v.checker === "string" ? v.checker : "",
  };
  // Quorum fields reach the status page and metric labels: a rogue writer's must not.
  if (v.partial !== undefined) {
    if (typeof v.partial !== "boolean") throw new Error("verdict partial must be a boolean");
    if (v.partial) out.partial = true;
  }
  if (v.quorum !== undefined) {
    if (v.quorum !== "ok" && v.quorum !== "degraded") throw new Error(`verdict quorum must be ok or degraded, got ${String(v.quorum).slice(0, 40)}`);
    out.quorum = v.quorum;
  }
  if (v.votes !== undefined) {
    const r = votesSchema.safeParse(v.votes);
    if (!r.success) throw new Error(`verdict votes: ${issues(r.error)}`);
    out.votes = r.data;
  }
  return out;
}

/** Backends in one observation record: far above any service's backend count that one node checks. */
const MAX_OBSERVED = 100_000;
const backendId = z.string().regex(BACKEND_ID, "expected a backend id");

export const observationSchema = z.object({
  node: z.string().regex(NODE_ID, "expected a node id"),
  at: epochMs,
  pass: z.array(backendId).max(MAX_OBSERVED).default([]),
  fail: z
    .record(backendId, label(256))
    .refine((r) => Object.keys(r).length <= MAX_OBSERVED, `at most ${MAX_OBSERVED} backends`)
    .default({}),
  local: label(256).optional(),
});

/** Decodes and validates an observation; throws with the reason. The key's node must match the value's. */
export function parseObservation(node: string, bytes: Uint8Array): Observation {
  const r = observationSchema.safeParse(decodeValue(bytes));
  if (!r.success) throw new Error(issues(r.error));
  if (r.data.node !== node) throw new Error(`node ${r.data.node} does not match the key's ${node}`);
  return r.data;
}
