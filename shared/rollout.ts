// Coordinated drain and rolling restart: the values under rollout/ (docs/keys.md), read by nodes, the
// CLI and tests, and the drain guard's rule (at most maxUnavailable nodes drained or down at once).
import { z } from "zod";
import type { NodeRecord, RolloutView } from "./api.js";
import { downReason, type MemberRecord } from "./members.js";

/** rollout/drains/<node>: written by `ballast node drain` and `ballast rollout`; the node drains while it exists. */
export interface DrainRequest {
  /** Who asked ("user@host", "rollout r-…"). */
  by: string;
  at: number;
  reason: string;
  /** The rollout that wrote it, if any. */
  rollout: string | null;
  /**
   * Set by a rollout without a restart hook: a node whose process started before this time exits
   * with RESTART_EXIT_CODE once drained, so its supervisor starts it again (it comes back drained).
   */
  restartAt: number | null;
}

/** The exit code of a node that restarts itself for a rollout (systemd: RestartForceExitStatus=75). */
export const RESTART_EXIT_CODE = 75;

const text = (max: number) => z.string().max(max).regex(/^[^\p{Cc}\u202A-\u202E\u2066-\u2069]*$/u, "control or bidi-override characters");
const ms = z.number().finite().min(0);

const drainSchema = z.object({
  by: text(200).default(""),
  at: ms.default(0),
  reason: text(500).default(""),
  rollout: text(100).nullable().default(null),
  restartAt: ms.nullable().default(null),
});

/**
 * Parses a drain key's value. An empty value is a plain drain (`etcdctl put …/rollout/drains/n1 ""`);
 * anything else must be a JSON object. Throws with the reason; the key's presence drains the node
 * whatever its value (the operator asked for it), the reason is listed under invalid records.
 */
export function parseDrainValue(raw: Buffer): DrainRequest {
  if (raw.length === 0) return { by: "", at: 0, reason: "", rollout: null, restartAt: null };
  let doc: unknown;
  try {
    doc = JSON.parse(raw.toString("utf8"));
  } catch (err) {
    throw new Error(`not JSON: ${(err as Error).message}`);
  }
  const r = drainSchema.safeParse(doc);
  if (!r.success) throw new Error(r.error.issues.map((i) => `${i.path.join(".") || "(root)"}: ${i.message}`).join("; "));
  return r.data;
}

const stepSchema = z.object({
  node: z.string().max(63),
  drainMs: ms,
  restartMs: ms,
  readyMs: ms,
  openAtStart: ms,
  cut: ms,
});

const rolloutSchema = z.object({
  id: text(100),
  status: z.enum(["running", "done", "failed", "aborted"]),
  startedAt: ms,
  updatedAt: ms,
  maxUnavailable: z.number().int().min(1),
  restartCmd: z.string().max(4096).nullable(),
  nodes: z.array(z.string().max(63)).max(1000),
  done: z.array(z.string().max(63)).max(1000),
  current: z
    .object({
      node: z.string().max(63),
      phase: z.enum(["draining", "restarting", "waiting", "undraining"]),
      since: ms,
      revision: ms,
      startedAtBefore: ms,
      marks: z.object({ drain: ms, restart: ms, undrain: ms, openAtStart: ms, cut: ms }),
    })
    .nullable(),
  error: z.string().max(2000).nullable(),
  steps: z.array(stepSchema).max(1000),
});

/** Parses rollout/state; throws with the reason. */
export function parseRolloutValue(raw: Buffer): RolloutView {
  let doc: unknown;
  try {
    doc = JSON.parse(raw.toString("utf8"));
  } catch (err) {
    throw new Error(`not JSON: ${(err as Error).message}`);
  }
  const r = rolloutSchema.safeParse(doc);
  if (!r.success) throw new Error(r.error.issues.map((i) => `${i.path.join(".") || "(root)"}: ${i.message}`).join("; "));
  return r.data;
}

/**
 * The nodes out of service other than `target`: those with a drain key (whether or not their process
 * runs), registered ones that are not ready (starting, SIGTERM-draining, stuck), and members with no
 * live node record (dead, or stopped and not forgotten: `ballast node forget`). Sorted, with why.
 * A node is counted once: a rollout's node restarting has its drain key and no record, and is out as
 * `drained`, the one being rolled, not as an extra one down.
 */
export function nodesOut(records: readonly NodeRecord[], drained: readonly string[], target: string, members: readonly MemberRecord[] = []): Array<{ node: string; why: string }> {
  const out = new Map<string, string>();
  for (const n of drained) if (n !== target) out.set(n, "drained");
  for (const r of records) {
    if (r.id === target || out.has(r.id)) continue;
    if (!r.ready) out.set(r.id, r.draining ? "draining (not ready)" : "not ready");
  }
  const live = new Set(records.map((r) => r.id));
  for (const m of members) if (m.id !== target && !out.has(m.id) && !live.has(m.id)) out.set(m.id, downReason(m));
  return [...out].sort((a, b) => (a[0] < b[0] ? -1 : 1)).map(([node, why]) => ({ node, why }));
}
