// Versioned msgpack values for what machines write at volume (node records, verdicts, heartbeats,
// affinity batches). Every value is a map with `v`; readers accept newer versions and ignore extra fields.

import { Packr } from "msgpackr";
import type { Verdict } from "./api.js";

// Plain maps (no record extension) so any msgpack reader, in any language, can decode our values.
export type { NodeRecord, Verdict, VerdictState } from "./api.js";

const packr = new Packr({ useRecords: false, mapsAsObjects: true });

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
}

/** A verdict record's value; throws naming what is wrong (the record is then skipped with that reason). */
export function parseVerdictValue(raw: Buffer): Verdict {
  const v = decodeValue(raw);
  if (v.state !== "up" && v.state !== "down") throw new Error(`verdict state must be up or down, got ${String(v.state)}`);
  return {
    state: v.state,
    since: typeof v.since === "number" ? v.since : 0,
    reason: typeof v.reason === "string" ? v.reason : "",
    count: typeof v.count === "number" ? v.count : 0,
    checker: typeof v.checker === "string" ? v.checker : "",
  };
}
