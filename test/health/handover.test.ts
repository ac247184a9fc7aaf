// Observer quorum across a leader handover (chaos scenario 2's same-state rewrites, issue 17): three
// node processes (dist/: `npm run build` first) and one etcd. The health leader is SIGKILLed while
// one survivor has just restarted and has no vote yet (its observer's first rise is still running), as
// after chaos scenario 1. The new leader then counts too few votes for a majority for a moment; that
// must not rewrite a verdict whose state it keeps. An independent etcd client records every write
// under health/verdicts/ by mod revision.
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

describe("health leader handover with observer quorum", () => {
  it("a new leader that has fewer votes than a majority for a moment rewrites no verdict whose state it keeps", { timeout: 120_000 }, async () => {
    const keys = KeySchema.forCluster("handover");
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
    const config = (id: string) => ({ node: { id }, cluster: "handover", etcd: { endpoints: [etcd.endpoint], leaseTtl: LEASE_TTL }, health: { staleAfter: "2s" }, accessLog: { enabled: false } });
    const ids = ["h1", "h2", "h3"];
    const byId = new Map<string, NodeProcess>();
    // One after the other: h1 campaigns first and leads; of h2 and h3, the one that campaigned earlier succeeds it.
    for (const id of ids) {
      const p = await spawnNode(config(id));
      procs.push(p);
      byId.set(id, p);
    }
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

    // The survivor that restarts campaigns last: the other one succeeds the leader.
    const restarted = others[0];
    const successor = others[1];
    const old = byId.get(restarted)!;
    old.kill("SIGKILL");
    await old.exited;
    await waitFor(async () => (await store.get(keys.node(restarted))) === null, { message: `${restarted}'s record gone` });
    const fresh = await spawnNode(config(restarted));
    procs.push(fresh);
    await waitFor(async () => {
      const kv = await store.get(keys.node(restarted));
      return kv !== null && parseNodeRecord(restarted, kv.value).ready;
    }, { message: `${restarted} back and ready` });
    // The condition under test: the restarted observer has not voted yet when the leader dies.
    const obs = await store.get(keys.observation("web", restarted));
    const passing = obs === null ? [] : ((decodeValue(obs.value).pass as string[] | undefined) ?? []);
    expect(passing, `${restarted} must not have voted yet (rise 10 at 200 ms)`).toEqual([]);

    const fromRev = (await store.list(keys.verdicts)).revision + 1;
    byId.get(leader)!.kill("SIGKILL");
    await waitFor(async () => (await heartbeat()).leader === successor, { timeoutMs: 20_000, message: `${successor} leads` });
    // Until the restarted node has voted on both backends, and the new leader settled, then a little more.
    await waitFor(async () => {
      const o = await store.get(keys.observation("web", restarted));
      const pass = o === null ? [] : ((decodeValue(o.value).pass as string[] | undefined) ?? []);
      return pass.length === 2 && (await heartbeat()).settled;
    }, { timeoutMs: 30_000, message: `${restarted} votes pass on both backends and ${successor} has settled` });
    await new Promise((r) => setTimeout(r, 1_000));

    const handover = writes.filter((w) => w.rev >= fromRev);
    const shown = handover.map((w) => `${w.key.slice(keys.verdicts.length)} ${w.type} ${String(w.value?.state)} quorum ${String(w.value?.quorum)} votes ${JSON.stringify(w.value?.votes ?? null)}`);
    expect(shown).toEqual([]);
    for (const id of ["a", "b"]) expect(current().get(id)).toMatchObject({ state: "up", quorum: "ok" });
  });
});
