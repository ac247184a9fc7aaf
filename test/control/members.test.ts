// Membership records (members/<node>) through an injected store: the key and value rules, the guard
// counting a member with no live node record as down (once, never the target), `node forget` (refused
// while the node is live, then the drain proceeds), a rollout refusing to start while a member is down,
// and a node writing its own record (firstSeen kept across restarts) and listing a malformed one with
// its key and reason while the valid ones are shown down in /api/state.
import { afterEach, describe, expect, it } from "vitest";
import type { StateView } from "../../shared/api.js";
import { encodeValue } from "../../shared/codec.js";
import { KeySchema } from "../../shared/keys.js";
import { encodeMember, type MemberRecord, parseMember } from "../../shared/members.js";
import { nodesOut } from "../../shared/rollout.js";
import { nodeConfigSchema } from "../../shared/schema.js";
import { MemoryStore } from "../../node/control/memory-store.js";
import { createLogger } from "../../node/log.js";
import { BallastNode } from "../../node/node.js";
import { DrainRefused, drainNode } from "../../node/rollout/guard.js";
import { ForgetRefused, forgetNode, readMembers } from "../../node/rollout/members.js";
import { RolloutStopped, rolloutRestart } from "../../node/rollout/runner.js";
import { waitFor } from "../helpers/wait.js";

const keys = KeySchema.forCluster("m");
const running: BallastNode[] = [];
afterEach(async () => {
  await Promise.all(running.splice(0).map((n) => n.close()));
});

const record = (id: string, ready = true) => ({ id, address: "127.0.0.1:1", admin: "127.0.0.1:1", zone: "", version: "1", ready, draining: false, revision: 1, mode: "shared" as const, startedAt: 1, updatedAt: 1 });
const member = (id: string, startedAt = Date.UTC(2026, 11, 1)): MemberRecord => ({ id, address: "127.0.0.1:1", admin: "127.0.0.1:1", zone: "", version: "1.2.3", firstSeen: startedAt - 1000, startedAt });

/** Three members, n1 and n2 live (records), n3 dead (member only). */
async function clusterWithDeadN3(): Promise<MemoryStore> {
  const store = new MemoryStore();
  for (const id of ["n1", "n2", "n3"]) await store.put(keys.member(id), encodeMember(member(id)));
  for (const id of ["n1", "n2"]) await store.put(keys.node(id), encodeValue(record(id)));
  return store;
}

describe("member records", () => {
  it("classifies members/<node> and checks its segment", () => {
    expect(keys.parse(keys.member("n1"))).toEqual({ kind: "member", node: "n1" });
    expect(keys.reason(`${keys.prefix}members/bad id`)).toMatch(/node id "bad id" is not/);
    expect(keys.reason(`${keys.prefix}members/n1/x`)).toMatch(/expected members\/<node>/);
  });

  it("parses a member value and names what is wrong with a bad one", () => {
    expect(parseMember("n1", Buffer.from(encodeMember(member("n1"))))).toEqual(member("n1"));
    // Fields a newer node adds are ignored.
    expect(parseMember("n1", Buffer.from(JSON.stringify({ v: 2, ...member("n1"), extra: 1 })))).toEqual(member("n1"));
    expect(() => parseMember("n1", Buffer.from("{"))).toThrow(/^not JSON/);
    expect(() => parseMember("n2", Buffer.from(encodeMember(member("n1"))))).toThrow(/id n1 does not match the key's n2/);
    expect(() => parseMember("n1", Buffer.from(JSON.stringify({ ...member("n1"), v: 1, startedAt: -1 })))).toThrow(/^startedAt: /);
    expect(() => parseMember("n1", Buffer.from(JSON.stringify({ ...member("n1"), v: 1, admin: "http://x/" })))).toThrow(/^admin: expected "host:port"/);
    expect(() => parseMember("n1", Buffer.from(JSON.stringify({ ...member("n1"), v: 1, version: "a\u202Eb" })))).toThrow(/^version: control or bidi/);
  });

  it("the guard counts a member with no live record as down, once, and never the target", () => {
    const recs = [record("n1"), record("n2")];
    const members = [member("n1"), member("n2"), member("n3"), member("n4")];
    const out = nodesOut(recs, ["n4"], "n1", members);
    expect(out.map((o) => o.node)).toEqual(["n3", "n4"]);
    expect(out[0].why).toMatch(/^down: a member with no live node record \(last started 2026-12-01T00:00:00.000Z, version 1.2.3\); .*ballast node forget n3$/);
    // A rollout's node restarting (drain key, no record) is out as drained, not a second time as down.
    expect(out[1]).toEqual({ node: "n4", why: "drained" });
    expect(nodesOut(recs, [], "n3", members).map((o) => o.node)).toEqual(["n4"]);
  });
});

describe("the guard and node forget", () => {
  it("a dead member makes a second drain refuse naming it; forget is refused for a live node, then removes it and the drain proceeds", async () => {
    const store = await clusterWithDeadN3();
    const err = await drainNode(store, keys, "n1", { maxUnavailable: 1, waitMs: 0, by: "t" }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(DrainRefused);
    expect((err as Error).message).toMatch(/^drain of n1 refused: 1 node is already out \(n3: down: a member with no live node record .*ballast node forget n3\)/);
    expect(await store.get(keys.drain("n1"))).toBeNull();

    const live = await forgetNode(store, keys, "n2", "t").catch((e: unknown) => e);
    expect(live).toBeInstanceOf(ForgetRefused);
    expect((live as Error).message).toMatch(/^node n2 is live \(its node record nodes\/n2 exists\)/);
    expect(await store.get(keys.member("n2"))).not.toBeNull();
    const unknown = await forgetNode(store, keys, "n9", "t").catch((e: unknown) => e);
    expect((unknown as Error).message).toMatch(/^node n9 is not a member/);

    // Forget takes the drain key too (a node drained, then stopped for good).
    await store.put(keys.drain("n3"), "");
    const guardBefore = (await store.get(keys.drainGuard))?.modRevision ?? 0;
    expect(await forgetNode(store, keys, "n3", "t")).toEqual({ member: true, drain: true });
    expect(await store.get(keys.member("n3"))).toBeNull();
    expect(await store.get(keys.drain("n3"))).toBeNull();
    // The guard key is rewritten, so a drain deciding at that moment decides again.
    expect((await store.get(keys.drainGuard))!.modRevision).toBeGreaterThan(guardBefore);
    expect((await drainNode(store, keys, "n1", { maxUnavailable: 1, waitMs: 0, by: "t" })).already).toBe(false);
  });

  it("a drain with --wait waits for a dead member to come back", async () => {
    const store = await clusterWithDeadN3();
    const waits: string[][] = [];
    const drain = drainNode(store, keys, "n1", { maxUnavailable: 1, waitMs: 20_000, by: "t", onWait: (out) => waits.push(out.map((o) => o.node)) });
    await waitFor(() => waits.length > 0, { message: "the drain waiting" });
    expect(waits[0]).toEqual(["n3"]);
    await store.put(keys.node("n3"), encodeValue(record("n3")));
    expect((await drain).already).toBe(false);
  });

  it("a rollout refuses to start while a member is down, naming it", async () => {
    const store = await clusterWithDeadN3();
    const err = await rolloutRestart(store, keys, { maxUnavailable: 1, restartCmd: null, timeoutMs: 1000, lockWaitMs: 0, by: "t", say: () => {}, admin: async () => ({ status: 503, body: "" }) }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(RolloutStopped);
    expect((err as Error).message).toMatch(/^n3 is down \(a member with no live node record, members\/\): .*ballast node forget <id>/);
    expect(await store.get(keys.drain("n1"))).toBeNull();
  });
});

describe("a node's member record", () => {
  async function start(store: MemoryStore): Promise<BallastNode> {
    const config = nodeConfigSchema.parse({ node: { id: "n1" }, cluster: "m", admin: { listen: "127.0.0.1:0" }, accessLog: { enabled: false } });
    const n = new BallastNode({ config, store, log: createLogger("silent", { node: "n1" }) });
    running.push(n);
    await n.start();
    return n;
  }

  async function state(n: BallastNode): Promise<StateView> {
    return (await (await fetch(`http://${n.admin.address}/api/state`)).json()) as StateView;
  }

  it("is written at start after the node record, keeps firstSeen; a malformed one is listed with its key while valid members show down", async () => {
    const store = new MemoryStore();
    await store.put(keys.member("n1"), encodeMember({ ...member("n1"), firstSeen: 1000 }));
    await store.put(keys.member("old"), encodeMember(member("old")));
    await store.put(keys.member("bad"), JSON.stringify({ v: 1, id: "bad", admin: 5 }));
    const n = await start(store);
    await waitFor(async () => (await readMembers(store, keys)).members.find((m) => m.id === "n1")?.startedAt === n.startedAt, { message: "n1's member record rewritten" });
    const { members, invalid } = await readMembers(store, keys);
    expect(members.find((m) => m.id === "n1")).toMatchObject({ firstSeen: 1000, startedAt: n.startedAt, admin: n.admin.address });
    expect(invalid).toEqual([{ key: keys.member("bad"), reason: expect.stringMatching(/^member record: address: /) }]);
    expect(await store.get(keys.node("n1"))).not.toBeNull();

    await waitFor(async () => (await state(n)).members?.down.length === 1, { message: "/api/state lists the down member" });
    const st = await state(n);
    expect(st.members).toEqual({ count: 2, down: [{ id: "old", admin: "127.0.0.1:1", version: "1.2.3", firstSeen: member("old").firstSeen, startedAt: member("old").startedAt, drained: false }] });
    expect(st.invalid).toContainEqual(expect.objectContaining({ key: keys.member("bad"), reason: expect.stringMatching(/^member record: /) }));

    // The old member is forgotten: gone from the view; the bad record fixed: no longer listed.
    await forgetNode(store, keys, "old", "t");
    await store.put(keys.member("bad"), encodeMember(member("bad")));
    await waitFor(async () => {
      const s = await state(n);
      return s.members?.down.map((m) => m.id).join(",") === "bad" && !s.invalid.some((r) => r.key === keys.member("bad"));
    }, { message: "old forgotten, bad now valid (and down)" });
  });
});
