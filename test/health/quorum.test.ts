// Observer quorum (issue 17), the pure parts: who observes a service, and how votes become a verdict.
import { describe, expect, it } from "vitest";
import { decide, leaderVote, observerVote, observersFor, verdictChanged, voteOf } from "../../node/health/quorum.js";
import { encodeValue, parseObservation, parseVerdictValue, type ObserverVote, type Verdict } from "../../shared/codec.js";
import { KeySchema } from "../../shared/keys.js";
import { Reconciler } from "../../node/control/reconciler.js";
import { createLogger } from "../../node/log.js";
import { StatsRegistry } from "../../node/model/stats.js";

const up = (reason = "connected"): Verdict => ({ state: "up", since: 1, reason, count: 2, checker: "n1" });
const down = (reason = "timeout 1s"): Verdict => ({ state: "down", since: 1, reason, count: 3, checker: "n1" });

function votes(spec: Record<string, ObserverVote>): Map<string, { vote: ObserverVote; reason: string }> {
  return new Map(Object.entries(spec).map(([id, vote]) => [id, { vote, reason: vote === "fail" ? `${id} timeout 1s` : "" }]));
}

describe("observersFor", () => {
  const nodes = ["n1", "n2", "n3", "n4", "n5"];

  it("puts the leader first and picks K−1 others, the same whatever the input order", () => {
    const a = observersFor("web", "n1", nodes, 3);
    expect(a[0]).toBe("n1");
    expect(a).toHaveLength(3);
    expect(new Set(a).size).toBe(3);
    expect(observersFor("web", "n1", [...nodes].reverse(), 3)).toEqual(a);
  });

  it("takes every node when fewer than K, and the leader alone for K = 1", () => {
    expect(observersFor("web", "n2", ["n1", "n2"], 3).sort()).toEqual(["n1", "n2"]);
    expect(observersFor("web", "n2", ["n2"], 3)).toEqual(["n2"]);
    expect(observersFor("web", "n2", nodes, 1)).toEqual(["n2"]);
    // The leader observes even when its own record is not among the candidates yet.
    expect(observersFor("web", "n9", ["n1"], 3)).toEqual(["n9", "n1"]);
  });

  it("rotates: a chosen observer that leaves is replaced, the others stay", () => {
    const before = observersFor("web", "n1", nodes, 3);
    const gone = before[1];
    const after = observersFor("web", "n1", nodes.filter((n) => n !== gone), 3);
    expect(after).toContain(before[2]);
    expect(after).not.toContain(gone);
    expect(after).toHaveLength(3);
  });

  it("spreads services over the nodes (not the same K−1 for every service)", () => {
    const chosen = new Set<string>();
    for (let i = 0; i < 50; i++) for (const n of observersFor(`svc${i}`, "n1", nodes, 3).slice(1)) chosen.add(n);
    expect(chosen.size).toBe(4);
  });
});

describe("decide", () => {
  const observers = ["n1", "n2", "n3"];
  const base = { observers, checker: "n1", now: 1000 };
  const cases: Array<{ description: string; votes: Record<string, ObserverVote>; previous: Verdict | null; own: Verdict | null; expected: Partial<Verdict> | null }> = [
    { description: "all pass: up", votes: { n1: "pass", n2: "pass", n3: "pass" }, previous: null, own: up(), expected: { state: "up", quorum: "ok" } },
    { description: "the leader alone fails: up, partial", votes: { n1: "fail", n2: "pass", n3: "pass" }, previous: up(), own: down(), expected: { state: "up", partial: true, quorum: "ok" } },
    { description: "one observer alone fails: up, partial", votes: { n1: "pass", n2: "pass", n3: "fail" }, previous: up(), own: up(), expected: { state: "up", partial: true } },
    { description: "a majority fails: down", votes: { n1: "pass", n2: "fail", n3: "fail" }, previous: up(), own: up(), expected: { state: "down", quorum: "ok" } },
    { description: "a majority passes again: up", votes: { n1: "pass", n2: "pass", n3: "fail" }, previous: down(), own: up(), expected: { state: "up", partial: true } },
    { description: "one voter of three (the others have no observation): degraded, the leader decides down", votes: { n1: "fail", n2: "none", n3: "local" }, previous: up(), own: down(), expected: { state: "down", quorum: "degraded" } },
    { description: "degraded with the leader passing: up", votes: { n1: "pass", n2: "none", n3: "none" }, previous: null, own: up(), expected: { state: "up", quorum: "degraded" } },
    { description: "two voters split: the previous state stays (up, partial)", votes: { n1: "fail", n2: "pass", n3: "none" }, previous: up(), own: down(), expected: { state: "up", partial: true } },
    { description: "two voters split after a down: stays down", votes: { n1: "pass", n2: "fail", n3: "none" }, previous: down(), own: up(), expected: { state: "down" } },
    { description: "nothing known and no majority: no verdict", votes: { n1: "none", n2: "none", n3: "none" }, previous: null, own: null, expected: null },
  ];
  for (const c of cases) {
    it(c.description, () => {
      const v = decide({ ...base, votes: votes(c.votes), previous: c.previous, own: c.own });
      if (c.expected === null) {
        expect(v).toBeNull();
        return;
      }
      expect(v).toMatchObject(c.expected);
      expect(v!.partial ?? false).toBe(c.expected.partial ?? false);
      expect(v!.votes).toEqual(c.votes);
    });
  }

  it("names the failing observers in a partial verdict's reason; a down one keeps its reason as votes arrive", () => {
    const p = decide({ ...base, votes: votes({ n1: "fail", n2: "pass", n3: "pass" }), previous: up(), own: down() })!;
    expect(p.reason).toContain("fails only from n1");
    const d = decide({ ...base, votes: votes({ n1: "fail", n2: "fail", n3: "pass" }), previous: up(), own: down() })!;
    expect(d.reason).toBe("n1 timeout 1s (a majority of 3 observers fail)");
    // A third agreeing observer adds its vote; the reason stays.
    expect(decide({ ...base, votes: votes({ n1: "fail", n2: "fail", n3: "fail" }), previous: d, own: down() })!.reason).toBe(d.reason);
  });

  it("keeps `since` while the state holds, and moves it on a change", () => {
    const held = decide({ ...base, votes: votes({ n1: "pass", n2: "pass", n3: "fail" }), previous: { ...up(), since: 5 }, own: up() })!;
    expect(held.since).toBe(5);
    const moved = decide({ ...base, votes: votes({ n1: "fail", n2: "fail", n3: "fail" }), previous: { ...up(), since: 5 }, own: down() })!;
    expect(moved.since).toBe(1000);
  });

  it("keeps the transition's count while the state holds: a partial that comes and goes writes no undamped-looking verdict", () => {
    // Chaos scenario 7 (a flapping backend) found it: the leader's streak was 1 when a partial cleared.
    const upAt2 = { ...up(), count: 2 };
    const partial = decide({ ...base, votes: votes({ n1: "pass", n2: "pass", n3: "fail" }), previous: upAt2, own: { ...up(), count: 1 } })!;
    expect(partial.count).toBe(2);
    const cleared = decide({ ...base, votes: votes({ n1: "pass", n2: "pass", n3: "pass" }), previous: partial, own: { ...up(), count: 1 } })!;
    expect(cleared.count).toBe(2);
    // A change of state takes the count that made it.
    expect(decide({ ...base, votes: votes({ n1: "fail", n2: "fail", n3: "pass" }), previous: upAt2, own: { ...down(), count: 3 } })!.count).toBe(3);
  });

  it("a new leader whose checker has not settled votes what the written verdict records for it: a failover rewrites nothing", () => {
    // Chaos scenario 2 (the health leader killed) found it: the new leader counted as `none`, the
    // quorum went degraded once the dead node left the observers, and every verdict was rewritten.
    const written = decide({ ...base, votes: votes({ n1: "pass", n2: "pass", n3: "pass" }), previous: null, own: up() })!;
    expect(leaderVote(null, written, "n2")).toEqual({ vote: "pass", reason: "" });
    expect(leaderVote(null, null, "n2")).toEqual({ vote: "none", reason: "" });
    expect(leaderVote(down(), written, "n2").vote).toBe("fail");
    // n1 (the old leader) is gone: n2 leads, n3 observes; n2 has no settled state yet.
    const after = decide({ observers: ["n2", "n3"], checker: "n2", now: 2000, votes: votes({ n2: leaderVote(null, written, "n2").vote, n3: "pass" }), previous: written, own: null })!;
    expect(after.quorum).toBe("ok");
    expect(verdictChanged(written, after)).toBe(false);
  });

  it("an observer without a vote yet (just restarted) counts with the vote the written verdict records for it: a handover rewrites nothing", () => {
    // Chaos scenario 2 again: the surviving observer had just restarted (after scenario 1) and had no
    // vote when the new leader decided, so every verdict went degraded, then ok once it voted.
    const written = decide({ ...base, votes: votes({ n1: "pass", n2: "pass", n3: "pass" }), previous: null, own: up() })!;
    expect(observerVote({ vote: "none", reason: "" }, written, "n3", "pass")).toEqual({ vote: "pass", reason: "" });
    // Its own vote, once it has one, wins; resource shortage (`local`) is not replaced; nothing recorded: none.
    expect(observerVote({ vote: "fail", reason: "timeout" }, written, "n3", "pass")).toEqual({ vote: "fail", reason: "timeout" });
    expect(observerVote({ vote: "local", reason: "fds" }, written, "n3", "pass").vote).toBe("local");
    expect(observerVote({ vote: "none", reason: "" }, written, "n4", "pass").vote).toBe("none");
    expect(observerVote({ vote: "none", reason: "" }, null, "n3", "pass").vote).toBe("none");
    // A recorded vote never outvotes what the leader sees now: against a fresh `fail` it stays `none`,
    // so the leader decides alone (degraded) instead of an even split keeping a stale `up`.
    expect(observerVote({ vote: "none", reason: "" }, written, "n3", "fail").vote).toBe("none");
    const stale = decide({ observers: ["n2", "n3"], checker: "n2", now: 2000, votes: votes({ n2: "fail", n3: observerVote({ vote: "none", reason: "" }, written, "n3", "fail").vote }), previous: written, own: down() })!;
    expect(stale.state).toBe("down");
    const n3 = observerVote(voteOf(undefined, "b1"), written, "n3", "pass").vote;
    const after = decide({ observers: ["n2", "n3"], checker: "n2", now: 2000, votes: votes({ n2: leaderVote(up(), written, "n2").vote, n3 }), previous: written, own: up() })!;
    expect(after.quorum).toBe("ok");
    expect(verdictChanged(written, after)).toBe(false);
    // Without it the same moment is a degraded quorum: a write.
    const counted = decide({ observers: ["n2", "n3"], checker: "n2", now: 2000, votes: votes({ n2: "pass", n3: "none" }), previous: written, own: up() })!;
    expect(counted.quorum).toBe("degraded");
    expect(verdictChanged(written, counted)).toBe(true);
  });

  it("a leader alone for a while (K > 1, no other ready node) rewrites no verdict observers decided, unless its state or partial flag changes", () => {
    // Chaos scenario 2's second path: n1 died, n3 was restarting (not ready), so n2 led alone and its
    // own verdict (no quorum, no votes) replaced each three-vote one; n3 then came back without a vote
    // and without the recorded one (erased): degraded, then ok. Three same-state writes per backend.
    const written = decide({ ...base, votes: votes({ n1: "pass", n2: "pass", n3: "pass" }), previous: null, own: up() })!;
    const lone = decide({ observers: ["n2"], checker: "n2", now: 2000, votes: votes({ n2: "pass" }), previous: written, own: up() })!;
    expect(lone.quorum).toBeUndefined();
    expect(verdictChanged(written, lone, true)).toBe(false);
    // The same verdict for a service that asks for one observer (K lowered to 1): rewritten without votes.
    expect(verdictChanged(written, lone, false)).toBe(true);
    // A degraded verdict is not rewritten either; a state change the lone leader sees is, at once.
    const degraded = decide({ ...base, votes: votes({ n1: "pass", n2: "none", n3: "none" }), previous: null, own: up() })!;
    expect(verdictChanged(degraded, lone, true)).toBe(false);
    const died = decide({ observers: ["n2"], checker: "n2", now: 2000, votes: votes({ n2: "fail" }), previous: written, own: down() })!;
    expect(verdictChanged(written, died, true)).toBe(true);
    // A partial verdict whose failing observer is gone: the lone leader's own `up` clears the flag.
    const partial = decide({ ...base, votes: votes({ n1: "pass", n2: "pass", n3: "fail" }), previous: written, own: up() })!;
    expect(verdictChanged(partial, lone, true)).toBe(true);
    // Nothing written yet: the lone leader's verdict is written.
    expect(verdictChanged(null, lone, true)).toBe(true);
    // Kept, the written votes count for n3 when it returns without a vote of its own: still nothing to write.
    const back = decide({ observers: ["n2", "n3"], checker: "n2", now: 3000, votes: votes({ n2: "pass", n3: observerVote({ vote: "none", reason: "" }, written, "n3", "pass").vote }), previous: written, own: up() })!;
    expect(back.quorum).toBe("ok");
    expect(verdictChanged(written, back)).toBe(false);
    // What a lone leader wrote (a change, or a one-node start) is rewritten with votes once observers decide.
    const afterChange = decide({ observers: ["n2", "n3"], checker: "n2", now: 3000, votes: votes({ n2: "fail", n3: "fail" }), previous: died, own: down() })!;
    expect(afterChange).toMatchObject({ state: "down", quorum: "ok" });
    expect(verdictChanged(died, afterChange)).toBe(true);
  });

  it("with one observer is the leader's own verdict, unchanged (K = 1, or a one-node cluster)", () => {
    const own = down();
    expect(decide({ observers: ["n1"], checker: "n1", now: 1, votes: votes({ n1: "fail" }), previous: up(), own })).toBe(own);
  });

  it("verdictChanged sees state, partial, quorum and votes that arrive or change; not votes that went away (no rewrite on failover)", () => {
    const a = decide({ ...base, votes: votes({ n1: "pass", n2: "pass", n3: "pass" }), previous: null, own: up() })!;
    expect(verdictChanged(a, { ...a, since: 99 })).toBe(false);
    // The old leader n1 died: its vote is gone, the others' stand.
    expect(verdictChanged(a, { ...a, votes: { n2: "pass", n3: "pass", n1: "none" } })).toBe(false);
    expect(verdictChanged(a, { ...a, votes: { n2: "pass", n3: "pass" } })).toBe(false);
    // A new observer's vote arrives; a vote changes.
    expect(verdictChanged(a, { ...a, votes: { n2: "pass", n3: "pass", n4: "pass" } })).toBe(true);
    expect(verdictChanged(a, { ...a, votes: { ...a.votes, n3: "fail" } })).toBe(true);
    expect(verdictChanged(a, { ...a, partial: true })).toBe(true);
    expect(verdictChanged(a, { ...a, quorum: "degraded" })).toBe(true);
    expect(verdictChanged(a, { ...a, state: "down" })).toBe(true);
    expect(verdictChanged(undefined, a)).toBe(true);
    // Written by a leader that judged alone: rewritten once observers decide.
    expect(verdictChanged(up(), a)).toBe(true);
  });
});

describe("observation and verdict records", () => {
  it("voteOf reads pass, fail (with reason), local and absent", () => {
    const obs = parseObservation("n2", encodeValue({ node: "n2", at: 1, pass: ["b1"], fail: { b2: "timeout 1s" } }));
    expect(voteOf(obs, "b1")).toEqual({ vote: "pass", reason: "" });
    expect(voteOf(obs, "b2")).toEqual({ vote: "fail", reason: "timeout 1s" });
    expect(voteOf(obs, "b3").vote).toBe("none");
    expect(voteOf(undefined, "b1").vote).toBe("none");
    const starved = parseObservation("n2", encodeValue({ node: "n2", at: 1, pass: [], fail: { b2: "x" }, local: "local EMFILE" }));
    expect(voteOf(starved, "b2").vote).toBe("local");
  });

  it("rejects a malformed observation with the reason", () => {
    expect(() => parseObservation("n2", encodeValue({ node: "n3", at: 1, pass: [], fail: {} }))).toThrow(/does not match/);
    expect(() => parseObservation("n2", encodeValue({ node: "n2", at: 1, pass: ["bad id\n"], fail: {} }))).toThrow(/pass/);
    expect(() => parseObservation("n2", encodeValue({ node: "n2", at: 1, pass: [], fail: { b1: "\u202Eevil" } }))).toThrow(/fail/);
  });

  it("a verdict round-trips its quorum fields; bad ones are rejected, an older verdict still reads", () => {
    const v: Verdict = { ...up(), partial: true, quorum: "ok", votes: { n1: "fail", n2: "pass", n3: "pass" } };
    expect(parseVerdictValue(encodeValue({ ...v }))).toEqual(v);
    expect(parseVerdictValue(encodeValue({ ...up() }))).toEqual(up());
    expect(() => parseVerdictValue(encodeValue({ ...up(), votes: { n1: "maybe" } }))).toThrow(/votes/);
    expect(() => parseVerdictValue(encodeValue({ ...up(), quorum: "lots" }))).toThrow(/quorum/);
  });

  it("the key schema knows observation keys and rejects bad segments", () => {
    const keys = KeySchema.forCluster("c");
    expect(keys.parse(keys.observation("web", "n1"))).toEqual({ kind: "observation", service: "web", node: "n1" });
    expect(keys.parse("/ballast/c/health/observations/web")).toBeNull();
    expect(keys.reason("/ballast/c/health/observations/web/bad node")).toMatch(/node id/);
  });
});

describe("observation records through the reconciler", () => {
  it("a bad observation is listed with its key and reason and has no vote; good ones count; changes are reported per service", () => {
    const keys = KeySchema.forCluster("q");
    const changed: string[][] = [];
    const r = new Reconciler(keys, new StatsRegistry(), { onSnapshot: () => {}, onObservations: (s) => changed.push([...s]) }, createLogger("silent", {}));
    const good = encodeValue({ node: "n2", at: 1, pass: ["b1"], fail: {} });
    r.reset([{ key: keys.observation("web", "n2"), value: good, modRevision: 1, lease: "0" }], 1);
    expect(voteOf(r.observations.get("web", "n2"), "b1").vote).toBe("pass");
    expect(changed.at(-1)).toEqual(["web"]);
    // A rogue writer puts another node's name in n3's record, and junk in n2's.
    r.events(
      [
        { type: "put", key: keys.observation("web", "n3"), value: encodeValue({ node: "n1", at: 1, pass: [], fail: { b1: "x" } }), modRevision: 2 },
        { type: "put", key: keys.observation("web", "n2"), value: Buffer.from("not msgpack"), modRevision: 2 },
      ],
      2,
    );
    r.rebuild();
    const invalid = r.snapshot!.invalid;
    expect(invalid.find((x) => x.key === keys.observation("web", "n3"))?.reason).toMatch(/observation: node n1 does not match/);
    expect(invalid.find((x) => x.key === keys.observation("web", "n2"))?.reason).toMatch(/observation: /);
    expect(r.observations.get("web", "n3")).toBeUndefined();
    expect(r.observations.get("web", "n2")).toBeUndefined();
    expect(changed.at(-1)).toEqual(["web"]);
    // Fixed, then deleted (the observer's lease expired): listed no more, no vote.
    r.events([{ type: "put", key: keys.observation("web", "n2"), value: good, modRevision: 3 }], 3);
    expect(voteOf(r.observations.get("web", "n2"), "b1").vote).toBe("pass");
    r.events([{ type: "delete", key: keys.observation("web", "n2"), value: Buffer.alloc(0), modRevision: 4 }], 4);
    r.rebuild();
    expect(r.observations.get("web", "n2")).toBeUndefined();
    expect(r.snapshot!.invalid.some((x) => x.key === keys.observation("web", "n2"))).toBe(false);
    r.stop();
  });
});
