// The leader's term logic against a scripted store and probe: it continues from the verdicts it reads
// (writes only real changes), ends its term on a refused or failed fenced write (stops checking,
// campaigns again), and deletes verdicts of gone backends only once its records are as new as its read.
import { afterEach, describe, expect, it } from "vitest";
import { RecordTable } from "../../node/control/records.js";
import type { KeyValue, Leadership, Store } from "../../node/control/store.js";
import type { CheckTarget } from "../../node/health/checker.js";
import type { Probe, ProbeOutcome } from "../../node/health/checks.js";
import { HealthLeader } from "../../node/health/leader.js";
import { HealthMetrics } from "../../node/health/metrics.js";
import { createLogger } from "../../node/log.js";
import { decodeValue, encodeValue } from "../../shared/codec.js";
import { KeySchema } from "../../shared/keys.js";
import { parseHealth } from "../helpers/health.js";
import client from "prom-client";
import { waitFor } from "../helpers/wait.js";

const keys = KeySchema.forCluster("unit");
const settings = parseHealth({ type: "tcp", interval: 20, timeout: 10, rise: 2, fall: 2, jitter: 0 });

type WriteMode = "ok" | "refuse" | "throw";

class ScriptedLeadership implements Leadership {
  readonly key = `${keys.election}1`;
  readonly writes: Array<{ key: string; value: Record<string, unknown> | null }> = [];
  mode: WriteMode = "ok";
  resigned = false;
  private lost: Array<(reason: string) => void> = [];

  constructor(readonly term: string) {}

  async fencedPut(key: string, value: Buffer | string): Promise<boolean> {
    return this.write(key, decodeValue(Buffer.from(value)));
  }

  async fencedDelete(key: string): Promise<boolean> {
    return this.write(key, null);
  }

  onLost(cb: (reason: string) => void): void {
    this.lost.push(cb);
  }

  async resign(): Promise<void> {
    this.resigned = true;
  }

  private write(key: string, value: Record<string, unknown> | null): boolean {
    if (this.mode === "throw") throw new Error("etcd unavailable");
    if (this.mode === "refuse") {
      for (const cb of this.lost.splice(0)) cb("fenced write refused");
      return false;
    }
    this.writes.push({ key, value });
    return true;
  }
}

/** Only what the leader uses: campaign (one scripted leadership per call, then never) and list. */
class ScriptedStore {
  campaigns = 0;
  readonly terms: ScriptedLeadership[] = [];
  constructor(
    private readonly verdicts: KeyValue[],
    private readonly revision: number,
  ) {}

  campaign(): Promise<Leadership> {
    this.campaigns++;
    if (this.campaigns > 1) return new Promise(() => {}); // someone else leads from now on
    const l = new ScriptedLeadership(String(this.campaigns));
    this.terms.push(l);
    return Promise.resolve(l);
  }

  async list(): Promise<{ kvs: KeyValue[]; revision: number }> {
    return { kvs: this.verdicts, revision: this.revision };
  }
}

function verdictKv(id: string, state: "up" | "down", checker = "old"): KeyValue {
  return { key: keys.verdict("web", id), value: encodeValue({ state, since: 1, reason: state === "up" ? "connected" : "connect ECONNREFUSED", count: 2, checker }), modRevision: 1, lease: "0" };
}

function target(id: string): CheckTarget {
  return { key: `web/${id}`, service: "web", id, host: "127.0.0.1", port: 1, kind: "tcp", settings };
}

function recordsAt(revision: number, backendIds: string[], verdicts: KeyValue[] = []): RecordTable {
  const t = new RecordTable(keys);
  const kvs: KeyValue[] = [{ key: keys.service("web"), value: Buffer.from(JSON.stringify({ listen: "127.0.0.1:0" })), modRevision: 1, lease: "0" }];
  for (const id of backendIds) kvs.push({ key: keys.backend("web", id), value: Buffer.from(`127.0.0.1:${1000 + id.length}`), modRevision: 1, lease: "0" });
  t.reset([...kvs, ...verdicts], revision);
  return t;
}

const leaders: HealthLeader[] = [];
afterEach(async () => {
  for (const l of leaders.splice(0)) await l.stop();
});

function startLeader(store: ScriptedStore, opts: { targets: CheckTarget[]; records: () => RecordTable; results: Map<string, ProbeOutcome> }) {
  const probed: string[] = [];
  // The checker hands its CheckTarget to the probe.
  const probe: Probe = async (t) => {
    const key = (t as CheckTarget).key;
    probed.push(key);
    return opts.results.get(key) ?? OK;
  };
  const metrics = new HealthMetrics(new client.Registry());
  const leader = new HealthLeader({
    id: "me",
    store: store as unknown as Store,
    keys,
    leaseTtl: 1,
    heartbeatMs: 20,
    log: createLogger("silent"),
    metrics,
    probe,
    targets: () => opts.targets,
    records: opts.records,
  });
  leaders.push(leader);
  leader.start();
  return { leader, probed, metrics };
}

const OK: ProbeOutcome = { ok: true, result: "ok", reason: "connected" };
const REFUSED: ProbeOutcome = { ok: false, result: "refused", reason: "connect ECONNREFUSED" };

describe("health leader term", () => {
  it("continues from the verdicts in etcd: confirmed states are not rewritten, a real change is", async () => {
    const seeds = [verdictKv("a", "up"), verdictKv("b", "down")];
    const store = new ScriptedStore(seeds, 10);
    const results = new Map([["web/a", OK], ["web/b", REFUSED]]);
    const { leader } = startLeader(store, { targets: [target("a"), target("b")], records: () => recordsAt(10, ["a", "b"], seeds), results });
    await waitFor(() => leader.leading && store.terms[0].writes.some((w) => w.value?.settled === true), { message: "settled heartbeat" });
    const t = store.terms[0];
    expect(t.writes.filter((w) => w.key !== keys.heartbeat)).toEqual([]);
    expect(t.writes[0]).toMatchObject({ key: keys.heartbeat, value: { leader: "me", term: "1", settled: false } });

    results.set("web/a", REFUSED);
    await waitFor(() => t.writes.some((w) => w.key === keys.verdict("web", "a")), { message: "a down written" });
    expect(t.writes.filter((w) => w.key !== keys.heartbeat)).toEqual([
      { key: keys.verdict("web", "a"), value: expect.objectContaining({ state: "down", reason: "connect ECONNREFUSED", count: 2, checker: "me" }) },
    ]);
  });

  it("a refused fenced write ends the term at once: checks stop, nothing more is written, it campaigns again", async () => {
    const store = new ScriptedStore([], 10);
    const results = new Map([["web/a", OK]]);
    const { leader, probed, metrics } = startLeader(store, { targets: [target("a")], records: () => recordsAt(10, ["a"]), results });
    await waitFor(() => store.terms[0]?.writes.some((w) => w.key === keys.verdict("web", "a")) ?? false, { message: "a up written" });
    const t = store.terms[0];
    t.mode = "refuse";
    await waitFor(() => !leader.leading, { message: "stepped down" });
    const probes = probed.length;
    const writes = t.writes.length;
    await waitFor(() => store.campaigns === 2, { message: "campaigns again" });
    // Several intervals later: no probe and no write of the ended term.
    const until = Date.now() + 100;
    await waitFor(() => Date.now() > until);
    expect(probed.length).toBe(probes);
    expect(t.writes.length).toBe(writes);
    expect((await metrics.fencedWrites.get()).values.find((v) => v.labels.result === "refused")?.value).toBe(1);
    expect(leader.checking).toBe(0);
  });

  it("a write that fails (store unavailable) steps down and resigns, rather than guessing whether it landed", async () => {
    const store = new ScriptedStore([], 10);
    const { leader } = startLeader(store, { targets: [target("a")], records: () => recordsAt(10, ["a"]), results: new Map([["web/a", OK]]) });
    await waitFor(() => leader.leading);
    store.terms[0].mode = "throw";
    await waitFor(() => !leader.leading && store.terms[0].resigned, { message: "resigned" });
    await waitFor(() => store.campaigns === 2);
  });

  it("deletes verdicts of backends that are gone, only once its records are as new as the verdicts it read", async () => {
    const seeds = [verdictKv("a", "up"), verdictKv("gone", "up")];
    const store = new ScriptedStore(seeds, 10);
    let records = recordsAt(9, ["a"], seeds);
    const { leader } = startLeader(store, { targets: [target("a")], records: () => records, results: new Map([["web/a", OK]]) });
    await waitFor(() => store.terms[0]?.writes.some((w) => w.value?.settled === true) ?? false);
    expect(store.terms[0].writes.filter((w) => w.key !== keys.heartbeat)).toEqual([]);
    records = recordsAt(10, ["a"], seeds);
    leader.refresh();
    await waitFor(() => store.terms[0].writes.some((w) => w.value === null), { message: "delete written" });
    expect(store.terms[0].writes.filter((w) => w.key !== keys.heartbeat)).toEqual([{ key: keys.verdict("web", "gone"), value: null }]);
  });
});

describe("health leader term with observer quorum", () => {
  const quorumSettings = parseHealth({ type: "tcp", interval: 20, timeout: 10, rise: 2, fall: 2, jitter: 0, observers: 3 });
  const quorumTarget: CheckTarget = { key: "web/a", service: "web", id: "a", host: "127.0.0.1", port: 1, kind: "tcp", settings: quorumSettings };

  // The settle guard in decideTarget (`own === null && previous !== null`). A verdict read at the start
  // of the term seeds the checker, so `own` is null only for a backend the term had no verdict for (a
  // new one): the observers' majority writes its first verdict, and until this leader's own probes
  // settle, observers coming and going must not rewrite it.
  it("keeps the verdict it wrote from the observers until its own probes have settled", async () => {
    const store = new ScriptedStore([], 10);
    // Probes wait at the gate: until it opens, this leader has no state of its own.
    let open!: () => void;
    const gate = new Promise<void>((r) => (open = r));
    const probe: Probe = async () => {
      await gate;
      return OK;
    };
    const observations = new Map<string, { node: string; at: number; pass: string[]; fail: Record<string, string> }>([
      ["o2", { node: "o2", at: 1, pass: ["a"], fail: {} }],
      ["o3", { node: "o3", at: 1, pass: ["a"], fail: {} }],
    ]);
    const leader = new HealthLeader({
      id: "me",
      store: store as unknown as Store,
      keys,
      leaseTtl: 1,
      heartbeatMs: 20,
      log: createLogger("silent"),
      metrics: new HealthMetrics(new client.Registry()),
      probe,
      targets: () => [quorumTarget],
      records: () => recordsAt(10, ["a"]),
      observersOf: () => ["me", "o2", "o3"],
      observation: (_service, node) => observations.get(node),
    });
    leaders.push(leader);
    leader.start();
    const verdictWrites = () => store.terms[0]?.writes.filter((w) => w.key === keys.verdict("web", "a")) ?? [];
    // Two of three observers pass: up, decided by the observers while the leader has no vote yet.
    await waitFor(() => verdictWrites().length === 1, { message: "the observers' first verdict" });
    expect(verdictWrites()[0].value).toMatchObject({ state: "up", quorum: "ok", votes: { me: "none", o2: "pass", o3: "pass" } });

    // o3 now fails it (an even split with the leader's vote still missing: up, partial): while the
    // leader has not settled, nothing is rewritten.
    observations.set("o3", { node: "o3", at: 2, pass: [], fail: { a: "timeout 10ms" } });
    leader.reevaluate(new Set(["web"]));
    observations.delete("o2");
    leader.reevaluate(null);
    observations.set("o2", { node: "o2", at: 2, pass: ["a"], fail: {} });
    leader.reevaluate(null);
    expect(verdictWrites()).toHaveLength(1);

    // Its own probes settle (rise = 2 passes): the decision now counts its vote and is written once.
    open();
    await waitFor(() => verdictWrites().length === 2, { message: "the verdict rewritten after settling" });
    expect(verdictWrites()[1].value).toMatchObject({ state: "up", partial: true, quorum: "ok", checker: "me", votes: { me: "pass", o2: "pass", o3: "fail" } });
    expect(leader.leading).toBe(true);
  });
});
