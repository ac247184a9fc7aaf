// The drain guard: a node is drained (rollout/drains/<node> written) only while fewer than
// maxUnavailable other nodes are drained or down (not ready, or a member with no live node record,
// shared/members.ts). The decision is read, then written in one etcd
// transaction that compares rollout/guard's mod revision, and every drain or undrain rewrites that
// key in the same transaction: of two concurrent drains one commits, the other's compare fails and it
// decides again on what the first one wrote (so it is refused, or waits). Never read-then-write.
import type { NodeRecord } from "../../shared/api.js";
import { parseNodeRecord } from "../../shared/codec.js";
import type { KeySchema } from "../../shared/keys.js";
import { nodesOut } from "../../shared/rollout.js";
import type { Store } from "../control/store.js";
import { readMembers } from "./members.js";

export interface DrainOptions {
  maxUnavailable: number;
  /** How long to wait for the guard to admit the drain; 0: refuse at once. */
  waitMs: number;
  by: string;
  reason?: string;
  /** The rollout writing the key, if any. */
  rollout?: string | null;
  /** Ask a node started before this time to restart itself once drained (a rollout without restart hook). */
  restartAt?: number | null;
  /** Called while waiting, with the nodes that are out (at most once per change). */
  onWait?: (out: Array<{ node: string; why: string }>) => void;
}

/** The guard said no: `out` names the nodes already drained or down. */
export class DrainRefused extends Error {
  constructor(
    readonly node: string,
    readonly out: Array<{ node: string; why: string }>,
    readonly maxUnavailable: number,
  ) {
    super(
      `drain of ${node} refused: ${out.length} node${out.length === 1 ? " is" : "s are"} already out (${out.map((o) => `${o.node}: ${o.why}`).join(", ")}) and at most ${maxUnavailable} may be drained or down at once (--max-unavailable N, or --wait)`,
    );
    this.name = "DrainRefused";
  }
}

const POLL_MS = 250;

/** Registered nodes whose record parses (a bad record is not a node to count or contact). */
export async function readNodeRecords(store: Store, keys: KeySchema): Promise<NodeRecord[]> {
  const { kvs } = await store.list(keys.nodes);
  const out: NodeRecord[] = [];
  for (const kv of kvs) {
    const k = keys.parse(kv.key);
    if (k?.kind !== "node") continue;
    try {
      out.push(parseNodeRecord(k.node!, kv.value));
    } catch {
      // listed as invalid by `ballast status` and the nodes; not counted here
    }
  }
  return out;
}

/** The nodes that have a drain key. */
export async function readDrains(store: Pick<Store, "list">, keys: KeySchema): Promise<string[]> {
  const { kvs } = await store.list(keys.drains);
  const out: string[] = [];
  for (const kv of kvs) {
    const k = keys.parse(kv.key);
    if (k?.kind === "drain") out.push(k.node!);
  }
  return out.sort();
}

/**
 * Writes the node's drain key once the guard admits it. Resolves with `already: true` when the key
 * existed (its value is rewritten when a rollout asks for a restart). Throws DrainRefused.
 */
export async function drainNode(store: Store, keys: KeySchema, node: string, opts: DrainOptions): Promise<{ already: boolean; revision: number }> {
  const deadline = Date.now() + Math.max(0, opts.waitMs);
  let shown = "";
  for (;;) {
    // The guard first: a drain committed after this read changes it, and our compare fails.
    const guard = await store.get(keys.drainGuard);
    const [drained, records, { members }] = await Promise.all([readDrains(store, keys), readNodeRecords(store, keys), readMembers(store, keys)]);
    const already = drained.includes(node);
    const value = JSON.stringify({ by: opts.by, at: Date.now(), reason: opts.reason ?? "", rollout: opts.rollout ?? null, restartAt: opts.restartAt ?? null });
    if (already && opts.rollout == null) return { already: true, revision: guard?.modRevision ?? 0 };
    const out = nodesOut(records, drained, node, members);
    if (!already && out.length >= opts.maxUnavailable) {
      if (Date.now() >= deadline) throw new DrainRefused(node, out, opts.maxUnavailable);
      const sig = JSON.stringify(out);
      if (sig !== shown) opts.onWait?.(out);
      shown = sig;
      await new Promise((r) => setTimeout(r, POLL_MS));
      continue;
    }
    const r = await store.txn(
      [{ key: keys.drainGuard, modRevision: guard?.modRevision ?? 0 }],
      [
        { put: keys.drain(node), value },
        { put: keys.drainGuard, value: JSON.stringify({ node, op: "drain", by: opts.by, at: Date.now() }) },
      ],
    );
    if (r.succeeded) return { already, revision: r.revision };
    // Another drain or undrain committed between our read and our write: decide again on fresh state.
  }
}

/** Deletes the node's drain key (and rewrites the guard, so a waiting drain decides again). False if there was none. */
export async function undrainNode(store: Store, keys: KeySchema, node: string, by: string): Promise<boolean> {
  const had = (await store.get(keys.drain(node))) !== null;
  await store.txn([], [{ delete: keys.drain(node) }, { put: keys.drainGuard, value: JSON.stringify({ node, op: "undrain", by, at: Date.now() }) }]);
  return had;
}
