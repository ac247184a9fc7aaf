// Observer quorum (issue 17): who judges a service's backends, and how their votes become a verdict.
// Pure functions, so every node computes the same observers from the same node records and the
// decision can be tested table by table.
import type { Observation, ObserverVote, Verdict } from "../../shared/codec.js";
import { hashString } from "../lb/hash.js";

/**
 * The observers of `service`: the leader first, then K−1 of the other candidate nodes chosen by
 * rendezvous hashing on (service, node), so every node picks the same ones from the same node list,
 * a node joining or leaving moves only the services it wins or held, and services spread their
 * probe load over the nodes. All candidates when fewer than K.
 */
export function observersFor(service: string, leader: string, candidates: Iterable<string>, k: number): string[] {
  const others: Array<{ id: string; score: number }> = [];
  for (const id of candidates) if (id !== leader) others.push({ id, score: hashString(`${service}\u0000${id}`) });
  // Ties (a hash collision) are broken by id, so the order never depends on the input order.
  others.sort((a, b) => b.score - a.score || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
  const out = [leader];
  for (let i = 0; i < others.length && out.length < k; i++) out.push(others[i].id);
  return out;
}

/** `pass` lists as sets, made once per record read: the leader looks up every backend of a service per change. */
const passSets = new WeakMap<Observation, Set<string>>();

/** The vote of one non-leader observer on one backend, from its observation record (if any). */
export function voteOf(obs: Observation | undefined, backend: string): { vote: ObserverVote; reason: string } {
  if (obs === undefined) return { vote: "none", reason: "" };
  if (obs.local !== undefined) return { vote: "local", reason: obs.local };
  const failing = Object.hasOwn(obs.fail, backend) ? obs.fail[backend] : undefined;
  if (failing !== undefined) return { vote: "fail", reason: failing };
  let pass = passSets.get(obs);
  if (pass === undefined) {
    pass = new Set(obs.pass);
    passSets.set(obs, pass);
  }
  return pass.has(backend) ? { vote: "pass", reason: "" } : { vote: "none", reason: "" };
}

export interface DecisionInput {
  /** The observers, the leader first (observersFor). */
  observers: readonly string[];
  /** Each observer's vote and, for `fail`, the probe's reason. */
  votes: ReadonlyMap<string, { vote: ObserverVote; reason: string }>;
  /** The verdict in etcd now (null: none yet). */
  previous: Verdict | null;
  /** The leader's own verdict from its checker (null: unknown yet). */
  own: Verdict | null;
  checker: string;
  now: number;
}

/**
 * The verdict to write, or null for none (no verdict yet, and nothing decided one).
 * - `down` when a majority of the observers fail the backend; `up` when a majority pass it. An up
 *   backend that fails from some observers is `partial` (it stays in rotation; those nodes avoid it).
 * - With fewer voters than a majority (observers without an observation yet, or short of local
 *   resources), the leader alone decides: `quorum: degraded`.
 * - Enough voters but no majority either way (an even split): the previous state stays.
 * One observer (K = 1, a cluster of one node, or a leader with no other ready node for now) is the
 * leader alone: its own verdict, without quorum or votes, as it always wrote (verdictChanged says
 * when a leader that is alone for now writes it).
 */
export function decide(input: DecisionInput): Verdict | null {
  const { observers, votes, previous, own, now } = input;
  if (observers.length <= 1) return own;
  const need = Math.floor(observers.length / 2) + 1;
  const passing: string[] = [];
  const failing: string[] = [];
  let failReason = "";
  // No prototype: a node may be named "__proto__" (the id rules allow it).
  const shown: Record<string, ObserverVote> = Object.create(null);
  for (const id of observers) {
    const v = votes.get(id) ?? { vote: "none" as const, reason: "" };
    shown[id] = v.vote;
    if (v.vote === "pass") passing.push(id);
    else if (v.vote === "fail") {
      failing.push(id);
      if (failReason === "") failReason = v.reason;
    }
  }
  let state: "up" | "down";
  let quorum: "ok" | "degraded" = "ok";
  let reason: string;
  if (failing.length >= need) {
    state = "down";
    // Not the count or the names: a further observer that agrees adds its vote (a rewrite), but a
    // down verdict's reason stays what operators, alerts and the status page first read.
    reason = `${failReason} (a majority of ${observers.length} observers fail)`;
  } else if (passing.length >= need) {
    state = "up";
    reason = failing.length > 0 ? `partial: fails only from ${failing.join(", ")} (${failReason}); ${passing.length} of ${observers.length} observers pass` : `${passing.length} of ${observers.length} observers pass`;
  } else if (passing.length + failing.length < need) {
    quorum = "degraded";
    const alone = own?.state ?? previous?.state;
    if (alone === undefined) return null;
    state = alone;
    reason = `${own?.reason || previous?.reason || ""} (quorum degraded: ${passing.length + failing.length} of ${observers.length} observers voted, ${need} needed; the leader decides)`;
  } else {
    // An even split: no majority either way. Keep what was decided; with nothing decided yet, the
    // backend stays without a verdict (unknownRoutes says whether it takes traffic).
    const kept = previous?.state;
    if (kept === undefined) return null;
    state = kept;
    reason = state === "up" ? `partial: fails from ${failing.join(", ")} (${failReason}); ${passing.length} of ${observers.length} pass, no majority` : `${previous?.reason ?? ""}`;
  }
  const partial = state === "up" && failing.length > 0;
  const verdict: Verdict = {
    state,
    since: previous !== null && previous.state === state ? previous.since : now,
    reason,
    // Like `since`, the count belongs to the transition: a rewrite that only records votes (a partial
    // that came and went) keeps it, so no written verdict looks undamped (count < rise/fall).
    count:
      previous !== null && previous.state === state
        ? previous.count
        : own !== null && own.state === state
          ? own.count
          : state === "down"
            ? failing.length
            : passing.length,
    checker: input.checker,
    quorum,
    votes: shown,
  };
  if (partial) verdict.partial = true;
  return verdict;
}

/**
 * The leader's own vote. Until its checker has settled in this term (`own` null: a fresh leader's
 * first rise/fall probes), it is the vote the written verdict records for this node — what it voted
 * as an observer before it won. Otherwise a failover would count the new leader as `none`, drop to a
 * degraded quorum once the dead node leaves the observers, and rewrite every verdict twice.
 */
export function leaderVote(own: Verdict | null, previous: Verdict | null, id: string): { vote: ObserverVote; reason: string } {
  if (own !== null) return { vote: own.state === "up" ? "pass" : "fail", reason: own.reason };
  const recorded = previous?.votes?.[id];
  if (recorded === "pass") return { vote: "pass", reason: "" };
  if (recorded === "fail") return { vote: "fail", reason: previous?.reason ?? "" };
  return { vote: "none", reason: "" };
}

/**
 * An observer's vote, where it has none yet, is the vote the written verdict records for it — if
 * that agrees with the leader's own vote. A node that has just (re)started publishes no observation,
 * or none for this backend, until its checker settles (rise/fall probes). Counted as `none`, it
 * dropped a majority of two to a degraded quorum: a rewrite of every verdict on a leader handover,
 * and another once it voted (chaos 2 saw 6–9 such writes; test/health/handover.test.ts). Only where
 * it agrees with the leader: a recorded vote is old, and it must never outvote what the leader sees
 * now (after an etcd outage the leader's fresh `fail` against a recorded `pass` would be an even
 * split that keeps a stale `up`; test/health/cluster.test.ts "etcd unreachable"). `local` (the
 * observer is short of resources) stays as it is.
 */
export function observerVote(v: { vote: ObserverVote; reason: string }, previous: Verdict | null, id: string, leader: ObserverVote): { vote: ObserverVote; reason: string } {
  if (v.vote !== "none" || previous?.votes === undefined || !Object.hasOwn(previous.votes, id)) return v;
  const recorded = previous.votes[id];
  if (recorded !== leader) return v;
  if (recorded === "pass") return { vote: "pass", reason: "" };
  if (recorded === "fail") return { vote: "fail", reason: previous.reason };
  return v;
}

/**
 * Whether a newly decided verdict is worth a write: its state, partial flag or quorum differ, or an
 * observer has a vote it did not have in the written one (a vote arrived or changed). A vote that
 * only went away (an observer died, or a failover made the old leader's vote `none`) is not: a new
 * leader must not rewrite every verdict (no write storm, no flap), so `votes` may still show a past
 * observer's vote until the next change that matters.
 *
 * `alone`: the service asks for more than one observer (K > 1) but the leader has no other ready
 * node to ask, so `b` is its own verdict, without quorum or votes (decide). What `quorum` (and
 * `votes`) in a written verdict then mean: the decision that wrote it, not who is watching now.
 * - Absent: the leader judged alone when it wrote it (K = 1, a cluster of one node, or a leader
 *   temporarily alone), as it always did. Such a verdict is rewritten, with votes, once observers
 *   appear and vote (the quorum field arrives).
 * - `ok`/`degraded` with votes: observers decided it. A leader that is alone for a while (a
 *   handover: the dead leader's record gone, the other survivor restarting and not ready yet) and
 *   sees the same state and partial flag writes nothing: the state those votes decided still holds,
 *   and a write would only erase the votes the returning observers are counted with until they vote
 *   again (observerVote) — a rewrite to `degraded`, then to `ok`: chaos scenario 2's 9 same-state
 *   writes for 3 backends (test/health/handover.test.ts "judges alone": 6 for 2 backends).
 * A state or partial change the lone leader sees is written at once, as its own verdict.
 */
export function verdictChanged(a: Verdict | undefined | null, b: Verdict, alone = false): boolean {
  if (a == null) return true;
  if (a.state !== b.state || (a.partial ?? false) !== (b.partial ?? false)) return true;
  // Alone, `b` has no quorum or votes: nothing in it is news but its state and partial flag.
  if (alone) return false;
  // A verdict without a quorum field was written by a leader judging alone (see above): it is
  // rewritten, with votes, when observers decide.
  if (a.quorum !== b.quorum) return true;
  const before = a.votes ?? {};
  for (const [id, vote] of Object.entries(b.votes ?? {})) if (vote !== "none" && before[id] !== vote) return true;
  return false;
}
