// Membership records (members/<node>, docs/keys.md): the node writes its own at each process start;
// the drain guard and `ballast rollout` read them to count dead nodes as down; `ballast node forget`
// removes the record of a node that was decommissioned (refused while that node is live).
import type { NodeRecord } from "../../shared/api.js";
import type { KeySchema } from "../../shared/keys.js";
import { encodeMember, type MemberRecord, parseMember } from "../../shared/members.js";
import type { Store } from "../control/store.js";

/**
 * Writes this node's member record (unleased). `firstSeen` is kept from the record already there, so
 * it says when the id first joined; a record that does not parse is replaced (it was listed invalid).
 */
export async function writeMember(store: Store, keys: KeySchema, r: NodeRecord): Promise<void> {
  const key = keys.member(r.id);
  const prev = await store.get(key);
  let firstSeen = r.startedAt;
  if (prev !== null) {
    try {
      firstSeen = Math.min(firstSeen, parseMember(r.id, prev.value).firstSeen);
    } catch {
      // a bad record is overwritten with a good one
    }
  }
  await store.put(key, encodeMember({ id: r.id, address: r.address, admin: r.admin, zone: r.zone, version: r.version, firstSeen, startedAt: r.startedAt }));
}

/** Members whose record parses; a bad one is skipped (nodes list it as invalid with its reason). */
export async function readMembers(store: Pick<Store, "list">, keys: KeySchema): Promise<{ members: MemberRecord[]; invalid: Array<{ key: string; reason: string }> }> {
  const { kvs } = await store.list(keys.members);
  const members: MemberRecord[] = [];
  const invalid: Array<{ key: string; reason: string }> = [];
  for (const kv of kvs) {
    const k = keys.parse(kv.key);
    try {
      if (k?.kind !== "member") throw new Error(keys.reason(kv.key) ?? "not a member key");
      members.push(parseMember(k.node!, kv.value));
    } catch (err) {
      invalid.push({ key: kv.key, reason: `member record: ${(err as Error).message}` });
    }
  }
  return { members, invalid };
}

/** `ballast node forget` refused: the node is live (or nothing is known of it). */
export class ForgetRefused extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ForgetRefused";
  }
}

/**
 * Removes a decommissioned node: its member record and its drain key, in one transaction that
 * requires its node record to be absent (a node starting at that moment wins: the forget is refused)
 * and rewrites rollout/guard, so a drain deciding at the same time decides again. Returns what was removed.
 */
export async function forgetNode(store: Store, keys: KeySchema, node: string, by: string): Promise<{ member: boolean; drain: boolean }> {
  for (let attempt = 0; attempt < 5; attempt++) {
    const [live, member, drain] = await Promise.all([store.get(keys.node(node)), store.get(keys.member(node)), store.get(keys.drain(node))]);
    if (live !== null) {
      throw new ForgetRefused(`node ${node} is live (its node record nodes/${node} exists): forget removes only a node that is gone; stop it first (its record goes within the lease TTL), or drain it with ballast node drain ${node}`);
    }
    if (member === null && drain === null) throw new ForgetRefused(`node ${node} is not a member (no members/${node}) and has no drain key: nothing to forget`);
    const r = await store.txn(
      [
        { key: keys.node(node), modRevision: 0 },
        { key: keys.member(node), modRevision: member?.modRevision ?? 0 },
        { key: keys.drain(node), modRevision: drain?.modRevision ?? 0 },
      ],
      [{ delete: keys.member(node) }, { delete: keys.drain(node) }, { put: keys.drainGuard, value: JSON.stringify({ node, op: "forget", by, at: Date.now() }) }],
    );
    if (r.succeeded) return { member: member !== null, drain: drain !== null };
    // The node registered, or someone rewrote its member or drain key in between: look again.
  }
  throw new ForgetRefused(`node ${node}'s keys kept changing while forgetting it (is it starting?): try again`);
}
