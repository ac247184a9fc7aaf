// Cluster membership (issue 17): members/<node>, a record each node writes about itself when it
// starts, without a lease, so a node that died is still known after its leased nodes/<id> record is
// gone. The drain guard counts a member without a live node record as down; `ballast node forget`
// removes a decommissioned one. Read by nodes (/api/state, the status page), the CLI and tests.
import { z } from "zod";
import type { MemberDownView } from "./api.js";
import { adminAddress } from "./codec.js";
import { NODE_ID } from "./keys.js";

/** members/<node>: JSON, written by the node at each process start (the first registration of that process). */
export interface MemberRecord {
  id: string;
  /** The node's advertised and admin addresses at its last start. */
  address: string;
  admin: string;
  zone: string;
  version: string;
  /** When this node id first registered (kept across restarts). */
  firstSeen: number;
  /** When its latest process started (its node record's startedAt). */
  startedAt: number;
}

const label = (max: number) => z.string().max(max).regex(/^[^\p{Cc}\u202A-\u202E\u2066-\u2069]*$/u, "control or bidi-override characters");
const epochMs = z.number().finite().min(0);

const memberSchema = z.object({
  v: z.number().int().min(1),
  id: z.string().regex(NODE_ID, "expected a node id"),
  address: adminAddress,
  admin: adminAddress,
  zone: label(128),
  version: label(64),
  firstSeen: epochMs,
  startedAt: epochMs,
});

/** The member value a node writes; `firstSeen` comes from its previous record when there is one. */
export function encodeMember(m: MemberRecord): string {
  return JSON.stringify({ v: 1, ...m });
}

/** Parses members/<id>; throws with the reason (the record is then skipped, listed with its key). */
export function parseMember(id: string, raw: Buffer): MemberRecord {
  let doc: unknown;
  try {
    doc = JSON.parse(raw.toString("utf8"));
  } catch (err) {
    throw new Error(`not JSON: ${(err as Error).message}`);
  }
  const r = memberSchema.safeParse(doc);
  if (!r.success) throw new Error(r.error.issues.map((i) => `${i.path.join(".") || "(root)"}: ${i.message}`).join("; "));
  if (r.data.id !== id) throw new Error(`id ${r.data.id} does not match the key's ${id}`);
  const { v: _v, ...m } = r.data;
  return m;
}

/** Members without a live node record, sorted by id. */
export function membersDown(members: Iterable<MemberRecord>, live: ReadonlySet<string>, drained: ReadonlySet<string>): MemberDownView[] {
  const out: MemberDownView[] = [];
  for (const m of members) {
    if (live.has(m.id)) continue;
    out.push({ id: m.id, admin: m.admin, version: m.version, firstSeen: m.firstSeen, startedAt: m.startedAt, drained: drained.has(m.id) });
  }
  return out.sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
}

/** Why the guard counts a member as down, with what the operator can do about it. */
export function downReason(m: Pick<MemberRecord, "id" | "startedAt" | "version">): string {
  return `down: a member with no live node record (last started ${new Date(m.startedAt).toISOString()}, version ${m.version}); start it again, or if it was removed for good: ballast node forget ${m.id}`;
}
