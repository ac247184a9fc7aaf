// Versioned msgpack values for what machines write at volume (node records, verdicts, heartbeats,
// affinity batches). Every value is a map with `v`; readers accept newer versions and ignore extra fields.
import { Packr } from "msgpackr";

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
  startedAt: number;
  updatedAt: number;
}

export type VerdictState = "up" | "down";

export interface Verdict {
  state: VerdictState;
  since: number;
  reason: string;
  /** Consecutive results agreeing with the state at the time of writing. */
  count: number;
  checker: string;
}

export interface HealthHeartbeat {
  leader: string;
  at: number;
  term: string;
}
