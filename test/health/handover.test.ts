// Observer quorum across a leader handover (chaos scenario 2's same-state rewrites, issue 17): three
// node processes (dist/: `npm run build` first) and one etcd. The health leader is SIGKILLed (1) while
// one survivor has just restarted and has no vote yet (its observer's first rise is still running), as
// after chaos scenario 1; (2) while the other survivor is down, so the new leader judges alone until
// it comes back. In both, the new leader decides with fewer votes than before for a while; that must
// not rewrite a verdict whose state it keeps. An independent etcd client records every write under
// health/verdicts/ by mod revision.
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { EtcdStore } from "../../node/control/etcd-store.js";
import type { KeyValue, StoreEvent, SyncHandle, SyncSink } from "../../node/control/store.js";
import { decodeValue, parseNodeRecord } from "../../shared/codec.js";
import { KeySchema } from "../../shared/keys.js";
import { closeAllBackends, startTcpEcho } from "../helpers/backends.js";
import { type EtcdProcess, startEtcd } from "../helpers/etcd.js";
import { type NodeProcess, spawnNode } from "../helpers/node.js";
import { waitFor } from "../helpers/wait.js";

const LEASE_TTL = 1;
/** rise 10 at 200 ms: a restarted observer votes ~2 s after its first probe, after the election (≈ lease TTL). */
const HEALTH = { type: "tcp", interval: "200ms", timeout: "150ms", rise: 10, fall: 2, jitter: 0.5 };
/** After the last awaited condition, writes still in flight land within this (an etcd round trip). */
const LATE_WRITE_WINDOW_MS = 1_000;

let etcd: EtcdProcess;
let store: EtcdStore;
const procs: NodeProcess[] = [];
let watch: SyncHandle | null = null;

beforeAll(async () => {
  etcd = await startEtcd();
  store = new EtcdStore({ endpoints: [etcd.endpoint] });
});
afterAll(async () => {
  await store?.close();
  await etcd?.stop();
});
afterEach(async () => {
  for (const p of procs.splice(0)) {
    p.kill("SIGKILL");
    await p.exited;
  }
  await watch?.stop();
  watch = null;
  await closeAllBackends();
});

interface Write {
  rev: number;
  type: "put" | "delete";
  key: string;
  value: Record<string, unknown> | null;
}

/**
 * Service `web` with backends a and b, a watch that records every verdict write, and nodes h1, h2, h3
 * started one after the other (h1 campaigns first and leads; of h2 and h3, the one that campaigned
 * earlier succeeds it); resolves once both verdicts are up, decided by three observers.
 */
async function startCluster(cluster: string) {
  const keys = KeySchema.forCluster(cluster);
  const [a, b] = await Promise.all([startTcpEcho("a"), startTcpEcho("b")]);
  await etcd.put(keys.service("web"), JSON.stringify({ listen: "127.0.0.1:0", health: HEALTH }));
  await etcd.put(keys.backend("web", "a"), `127.0.0.1:${a.port}`);
  await etcd.put(keys.backend("web", "b"), `127.0.0.1:${b.port}`);
  const writes: Write[] = [];
  const sink: SyncSink = {
    reset: (kvs: KeyValue[]) => {
      for (const kv of kvs) writes.push({ rev: kv.modRevision, type: "put", key: kv.key, value: decodeValue(kv.value) });
    },
    events: (events: StoreEvent[]) => {
      for (const e of events) writes.push({ rev: e.modRevision, type: e.type, key: e.key, value: e.type === "put" ? decodeValue(e.value) : null });
    },
    status: () => {},
  };
  watch = store.sync(keys.verdicts, sink);
  const config = (id: string) => ({ node: { id }, cluster, etcd: { endpoints: [etcd.endpoint], leaseTtl: LEASE_TTL }, health: { staleAfter: "2s" }, accessLog: { enabled: false } });
  const ids = ["h1", "h2", "h3"];
  const byId = new Map<string, NodeProcess>();
  const spawn = async (id: string) => {
    const p = await spawnNode(config(id));
    procs.push(p);
    byId.set(id, p);
    return p;
  };
  for (const id of ids) await spawn(id);
  const current = () => {
    const out = new Map<string, Record<string, unknown>>();
    for (const w of writes) if (w.value) out.set(w.key.slice(w.key.lastIndexOf("/") + 1), w.value);
    return out;
  };
  const voted = (v: Record<string, unknown> | undefined) => {
    const votes = Object.values((v?.votes as Record<string, string> | undefined) ?? {});
    return v?.state === "up" && v.quorum === "ok" && votes.length === 3 && votes.every((x) => x === "pass");
  };
  await waitFor(() => voted(current().get("a")) && voted(current().get("b")), { timeoutMs: 60_000, message: "verdicts up, decided by three observers" });
  const heartbeat = async () => decodeValue((await store.get(keys.heartbeat))!.value) as { leader: string; settled: boolean };
  const leader = (await heartbeat()).leader;
  const others = ids.filter((id) => id !== leader);
  /** The ids of the observation's `pass` list (none: no record yet). */
  const passing = async (id: string) => {
    const o = await store.get(keys.observation("web", id));
    return o === null ? [] : ((decodeValue(o.value).pass as string[] | undefined) ?? []);
  };
  const ready = async (id: string) => {
    const kv = await store.get(keys.node(id));
    return kv !== null && parseNodeRecord(id, kv.value).ready;
  };
  /** Every verdict write from `fromRev` on, one line each. */
  const since = (fromRev: number) =>
    writes.filter((w) => w.rev >= fromRev).map((w) => `${w.key.slice(keys.verdicts.length)} ${w.type} ${String(w.value?.state)} quorum ${String(w.value?.quorum)} votes ${JSON.stringify(w.value?.votes ?? null)}`);
  return { keys, config, byId, spawn, current, heartbeat, leader, others, passing, ready, since, backends: { a, b } };
}

/**
 * Kills one survivor-to-be (its records gone), then the leader: the other survivor leads with no other
 * node and settles alone. Returns the revision the handover's writes are counted from.
 */
async function leaveSuccessorAlone(c: Awaited<ReturnType<typeof startCluster>>, away: string, successor: string): Promise<number> {
  const gone = c.byId.get(away)!;
  gone.kill("SIGKILL");
  await gone.exited;
  await waitFor(async () => (await store.get(c.keys.node(away))) === null && (await store.get(c.keys.observation("web", away))) === null, { message: `${away}'s records gone` });
  const fromRev = (await store.list(c.keys.verdicts)).revision + 1;
  c.byId.get(c.leader)!.kill("SIGKILL");
  await waitFor(async () => (await c.heartbeat()).leader === successor, { timeoutMs: 20_000, message: `${successor} leads` });
  // Its own probes settle (max(rise, fall) of them per backend) while it is the only node.
  await waitFor(async () => (await c.heartbeat()).settled, { timeoutMs: 30_000, message: `${successor} has settled` });
  const nodes = (await store.list(c.keys.nodes)).kvs.map((kv) => kv.key.slice(c.keys.nodes.length));
  expect(nodes, `${successor} is the only node while it settles`).toEqual([successor]);
  return fromRev;
}

describe("health leader handover with observer quorum", () => {
  it("a new leader that has fewer votes than a majority for a moment rewrites no verdict whose state it keeps", { timeout: 120_000 }, async () => {
    const c = await startCluster("handover");
    // The survivor that restarts campaigns last: the other one succeeds the leader.
    const restarted = c.others[0];
    const successor = c.others[1];
    const old = c.byId.get(restarted)!;
    old.kill("SIGKILL");
    await old.exited;
    await waitFor(async () => (await store.get(c.keys.node(restarted))) === null, { message: `${restarted}'s record gone` });
    await c.spawn(restarted);
    await waitFor(() => c.ready(restarted), { message: `${restarted} back and ready` });
    // The condition under test: the restarted observer has not voted yet when the leader dies.
    expect(await c.passing(restarted), `${restarted} must not have voted yet (rise 10 at 200 ms)`).toEqual([]);

    const fromRev = (await store.list(c.keys.verdicts)).revision + 1;
    c.byId.get(c.leader)!.kill("SIGKILL");
    await waitFor(async () => (await c.heartbeat()).leader === successor, { timeoutMs: 20_000, message: `${successor} leads` });
    // Until the restarted node has voted on both backends, and the new leader settled, then a little more.
    await waitFor(async () => (await c.passing(restarted)).length === 2 && (await c.heartbeat()).settled, {
      timeoutMs: 30_000,
      message: `${restarted} votes pass on both backends and ${successor} has settled`,
    });
    await new Promise((r) => setTimeout(r, LATE_WRITE_WINDOW_MS));

    expect(c.since(fromRev)).toEqual([]);
    for (const id of ["a", "b"]) expect(c.current().get(id)).toMatchObject({ state: "up", quorum: "ok" });
  });

  it("a new leader that judges alone for a while (no other ready node) rewrites no verdict whose state it keeps, nor when the other survivor returns", { timeout: 120_000 }, async () => {
    // Chaos scenario 2's second path: the new leader had no other ready node for a moment (the other
    // survivor had just restarted). Judging alone, it wrote its own verdict without quorum or votes
    // over each three-vote one, then `degraded` when the survivor came back without a vote (the write
    // had erased the vote it recorded), then `ok`: three same-state writes per backend.
    const c = await startCluster("alone");
    const [away, successor] = c.others;
    const fromRev = await leaveSuccessorAlone(c, away, successor);

    // The other survivor returns: ready at once, it votes only after its first rise (10 probes).
    await c.spawn(away);
    await waitFor(async () => (await c.passing(away)).length === 2, { timeoutMs: 30_000, message: `${away} back, voting pass on both backends` });
    await new Promise((r) => setTimeout(r, LATE_WRITE_WINDOW_MS));

    expect(c.since(fromRev)).toEqual([]);
    for (const id of ["a", "b"]) expect(c.current().get(id)).toMatchObject({ state: "up", quorum: "ok" });
  });

  it("a leader alone writes a state change at once, as its own verdict; the returning observer's vote rewrites it with votes", { timeout: 120_000 }, async () => {
    const c = await startCluster("alone-change");
    const [away, successor] = c.others;
    const fromRev = await leaveSuccessorAlone(c, away, successor);
    await c.backends.b.close();
    await waitFor(() => c.current().get("b")?.state === "down", { message: "b down" });
    expect(c.current().get("b")).toMatchObject({ state: "down", checker: successor });
    expect(c.current().get("b")?.quorum, "judged alone: no quorum").toBeUndefined();

    await c.spawn(away);
    await waitFor(
      () => {
        const v = c.current().get("b");
        return v?.quorum === "ok" && (v.votes as Record<string, string> | undefined)?.[away] === "fail";
      },
      { timeoutMs: 30_000, message: `b rewritten with ${away}'s vote` },
    );
    expect(c.current().get("b")).toMatchObject({ state: "down", quorum: "ok", votes: { [successor]: "fail", [away]: "fail" } });
    // a kept its state throughout: not rewritten.
    expect(c.since(fromRev).filter((w) => w.startsWith("web/a "))).toEqual([]);
  });
});
