// Leadership with nodes as child processes (compiled dist/, so `npm run build` first): SIGKILL the
// leader → another leads within lease TTL + 1 s and keeps the verdicts; SIGSTOP the leader until
// another is elected → after SIGCONT none of its writes lands. A recorder watching etcd sees every write.
import { execFile } from "node:child_process";
import { promisify } from "node:util";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { EtcdStore } from "../../node/control/etcd-store.js";
import type { KeyValue, StoreEvent, SyncHandle, SyncSink } from "../../node/control/store.js";
import { decodeValue } from "../../shared/codec.js";
import { KeySchema } from "../../shared/keys.js";
import { closeAllBackends, deadPort, startTcpEcho } from "../helpers/backends.js";
import { type EtcdProcess, startEtcd } from "../helpers/etcd.js";
import { CLI, getJson, type NodeProcess, spawnNode } from "../helpers/node.js";
import { waitFor } from "../helpers/wait.js";
import { metricValue } from "./metrics-text.js";

const LEASE_TTL = 1;
const fastHealth = { type: "tcp", interval: "200ms", timeout: "150ms", rise: 2, fall: 2, jitter: 0.5 };

let etcd: EtcdProcess;
let cluster = 0;
const procs: NodeProcess[] = [];
const recorders: Recorder[] = [];

beforeAll(async () => {
  etcd = await startEtcd();
});
afterAll(async () => {
  await etcd?.stop();
});
afterEach(async () => {
  for (const p of procs.splice(0)) {
    p.kill("SIGCONT");
    p.kill("SIGKILL");
    await p.exited;
  }
  for (const r of recorders.splice(0)) await r.stop();
  await closeAllBackends();
});

interface Write {
  /** Local time the recorder received it. */
  at: number;
  rev: number;
  type: "put" | "delete";
  kind: string;
  key: string;
  value: Record<string, unknown> | null;
}

/** Every write under health/, in revision order, as an independent etcd client sees it. */
class Recorder implements SyncSink {
  readonly writes: Write[] = [];
  private readonly store: EtcdStore;
  private readonly handle: SyncHandle;
  private initial = true;

  constructor(
    endpoint: string,
    private readonly keys: KeySchema,
  ) {
    this.store = new EtcdStore({ endpoints: [endpoint] });
    this.handle = this.store.sync(keys.health, this);
  }

  reset(kvs: KeyValue[]): void {
    if (!this.initial) throw new Error("recorder resynced: writes may have been missed");
    this.initial = false;
    for (const kv of kvs) this.record("put", kv.key, kv.value, kv.modRevision);
  }

  events(events: StoreEvent[]): void {
    for (const e of events) this.record(e.type, e.key, e.value, e.modRevision);
  }

  status(): void {}

  heartbeats(): Write[] {
    return this.writes.filter((w) => w.kind === "heartbeat" && w.type === "put");
  }

  verdicts(): Write[] {
    return this.writes.filter((w) => w.kind === "verdict");
  }

  /** The latest verdict value per backend id of `service`. */
  current(service: string): Map<string, Record<string, unknown>> {
    const out = new Map<string, Record<string, unknown>>();
    for (const w of this.verdicts()) {
      const id = w.key.slice(this.keys.verdicts.length + service.length + 1);
      if (!w.key.startsWith(`${this.keys.verdicts}${service}/`)) continue;
      if (w.value) out.set(id, w.value);
      else out.delete(id);
    }
    return out;
  }

  async stop(): Promise<void> {
    await this.handle.stop();
    await this.store.close();
  }

  private record(type: "put" | "delete", key: string, value: Buffer, rev: number): void {
    const kind = this.keys.parse(key)?.kind ?? "other";
    let decoded: Record<string, unknown> | null = null;
    if (type === "put" && kind !== "election") decoded = decodeValue(value);
    this.writes.push({ at: Date.now(), rev, type, kind, key, value: decoded });
  }
}

async function setup(ids: string[], backends: Record<string, number>) {
  const name = `f${++cluster}`;
  const keys = KeySchema.forCluster(name);
  await etcd.put(keys.service("web"), JSON.stringify({ listen: "127.0.0.1:0", health: fastHealth }));
  for (const [id, port] of Object.entries(backends)) await etcd.put(keys.backend("web", id), `127.0.0.1:${port}`);
  const rec = new Recorder(etcd.endpoint, keys);
  recorders.push(rec);
  const nodes = await Promise.all(
    ids.map((id) => spawnNode({ node: { id }, cluster: name, etcd: { endpoints: [etcd.endpoint], leaseTtl: LEASE_TTL }, health: { staleAfter: "2s" } })),
  );
  procs.push(...nodes);
  const byId = new Map(ids.map((id, i) => [id, nodes[i]]));
  return { name, keys, rec, byId };
}

interface StateJson {
  health: { leader: string | null; isLeader: boolean; mode: string };
  services: Array<{ name: string; backends: Array<{ id: string; routable: boolean; verdict: { state: string; checker: string; source: string } | null }> }>;
}

describe("health leadership across processes", () => {
  it("leader killed (SIGKILL) → a new leader within lease TTL + 1 s, continuing from the verdicts in etcd without rewriting them", async () => {
    const a = await startTcpEcho("a");
    const { name, rec, byId } = await setup(["k1", "k2", "k3"], { a: a.port, b: await deadPort() });
    await waitFor(() => rec.current("web").get("a")?.state === "up" && rec.current("web").get("b")?.state === "down", { message: "verdicts a up, b down" });
    await waitFor(() => rec.heartbeats().at(-1)?.value?.settled === true, { message: "leader settled" });
    // Observer quorum: the verdicts carry all three nodes' votes (a leader that judged alone before the
    // others registered rewrites them once, with votes, when they do).
    const voted = (v: Record<string, unknown> | undefined) => {
      const votes = Object.values((v?.votes as Record<string, string> | undefined) ?? {});
      return v?.quorum === "ok" && votes.length === 3 && !votes.includes("none");
    };
    await waitFor(() => voted(rec.current("web").get("a")) && voted(rec.current("web").get("b")), { message: "verdicts decided by three observers" });
    const oldLeader = String(rec.heartbeats().at(-1)!.value!.leader);
    const verdictWrites = rec.verdicts().length;

    const t0 = Date.now();
    byId.get(oldLeader)!.kill("SIGKILL");
    await waitFor(() => rec.heartbeats().some((h) => h.at >= t0 && h.value!.leader !== oldLeader), { intervalMs: 5, message: "a new leader's heartbeat" });
    const first = rec.heartbeats().find((h) => h.at >= t0 && h.value!.leader !== oldLeader)!;
    const failover = first.at - t0;
    const newLeader = String(first.value!.leader);
    console.log(`[health] failover: leader ${oldLeader} SIGKILLed → ${newLeader} writes its first heartbeat after ${failover} ms (lease TTL ${LEASE_TTL} s)`);
    expect(failover).toBeLessThan(LEASE_TTL * 1000 + 1000);

    // The new leader checks until its own observations back the verdicts; none is rewritten, none reset.
    await waitFor(() => rec.heartbeats().some((h) => h.value!.leader === newLeader && h.value!.settled === true), { message: "new leader settled" });
    expect(rec.verdicts().length).toBe(verdictWrites);
    for (const [id, p] of byId) {
      if (id === oldLeader) continue;
      const st = await getJson<StateJson>(p.admin, "/api/state");
      expect(st.health).toMatchObject({ leader: newLeader, isLeader: id === newLeader, mode: "shared" });
      const bs = st.services.find((s) => s.name === "web")!.backends;
      expect(bs.find((x) => x.id === "a")).toMatchObject({ routable: true, verdict: { state: "up", checker: oldLeader, source: "shared" } });
      expect(bs.find((x) => x.id === "b")).toMatchObject({ routable: false, verdict: { state: "down", checker: oldLeader, source: "shared" } });
      expect(metricValue(await (await fetch(`http://${p.admin}/metrics`)).text(), "ballast_health_leader")).toBe(id === newLeader ? 1 : 0);
    }

    // `ballast status` names the leader.
    const out = await promisify(execFile)(process.execPath, [CLI, "--etcd", etcd.endpoint, "--cluster", name, "-o", "json", "status"]);
    const status = JSON.parse(out.stdout) as { nodes: Array<{ node: string; leader: string }> };
    expect(status.nodes.filter((n) => n.leader === "yes").map((n) => n.node)).toEqual([newLeader]);
  }, 60_000);

  it("leader paused (SIGSTOP) while another is elected → after SIGCONT none of its writes lands, and it steps down", async () => {
    const a = await startTcpEcho("a");
    const b = await startTcpEcho("b");
    const { rec, byId } = await setup(["s1", "s2"], { a: a.port, b: b.port });
    await waitFor(() => rec.current("web").get("a")?.state === "up" && rec.current("web").get("b")?.state === "up", { message: "verdicts up" });
    const oldLeader = String(rec.heartbeats().at(-1)!.value!.leader);
    const newLeader = [...byId.keys()].find((id) => id !== oldLeader)!;
    const paused = byId.get(oldLeader)!;

    paused.kill("SIGSTOP");
    await waitFor(() => rec.heartbeats().some((h) => h.value!.leader === newLeader), { message: "the other node is elected and writes" });
    const firstNewRev = rec.writes.find((w) => w.kind === "heartbeat" && w.value!.leader === newLeader)!.rev;
    // b dies while the old leader sleeps: the new leader writes it down.
    await b.close();
    await waitFor(() => rec.current("web").get("b")?.state === "down", { message: "b down by the new leader" });
    expect(rec.current("web").get("b")!.checker).toBe(newLeader);

    paused.kill("SIGCONT");
    // The old leader wakes up believing it leads: its timers fire, its writes are refused, it steps down.
    await waitFor(() => paused.logs.some((l) => l.includes("health-check leader stepped down")), { message: "old leader steps down" });
    await waitFor(
      async () => {
        const st = await getJson<StateJson>(paused.admin, "/api/state");
        const b2 = st.services.find((s) => s.name === "web")?.backends.find((x) => x.id === "b");
        return !st.health.isLeader && st.health.leader === newLeader && b2?.verdict?.state === "down";
      },
      { message: "old leader follows the new one" },
    );
    const stepDown = JSON.parse(paused.logs.find((l) => l.includes("health-check leader stepped down"))!) as { reason: string };
    console.log(`[health] deposed leader ${oldLeader} after SIGCONT: stepped down (${stepDown.reason})`);
    // Which comes first after SIGCONT is up to the event loop: a write refused by the fence, the lease
    // timer, or the watch on the election key. Each ends the term; none lets a write through.
    const metrics = await (await fetch(`http://${paused.admin}/metrics`)).text();
    const refused = metricValue(metrics, "ballast_health_fenced_writes_total", { result: "refused" }) ?? 0;
    expect(refused > 0 || /lease lost|election key deleted/.test(stepDown.reason), stepDown.reason).toBe(true);
    expect(metricValue(metrics, "ballast_health_leader")).toBe(0);

    const late = rec.writes.filter((w) => w.rev > firstNewRev && w.type === "put" && (w.value?.leader === oldLeader || w.value?.checker === oldLeader));
    expect(late, "writes of the deposed leader after the new leader's first write").toEqual([]);
    expect(rec.heartbeats().at(-1)!.value!.leader).toBe(newLeader);
  });
});
