// Membership (issue 17: "at most maxUnavailable nodes drained or down") against real etcd and three
// real node processes (dist/: `npm run build` first): a SIGKILLed node, once its leased record is
// gone, is still a member; a second drain is refused naming it and saying how to forget it, `ballast
// status` and /api/state list it down (and a malformed member record with its key and reason), `node forget` is refused for a live node and then removes the
// dead one, and the drain proceeds. A rollout refuses to start while a member is down, and once it is
// back restarts every node (no hook: each exits 75 for its supervisor, this test) with at most one out.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { StateView } from "../../shared/api.js";
import { parseMember } from "../../shared/members.js";
import { nodesOut } from "../../shared/rollout.js";
import { EtcdStore } from "../../node/control/etcd-store.js";
import { type Backend, startTcpEcho } from "../helpers/backends.js";
import { type EtcdProcess, startEtcd } from "../helpers/etcd.js";
import { getJson } from "../helpers/node.js";
import { NodeCluster } from "../helpers/node-cluster.js";
import { waitFor as waitForBase } from "../helpers/wait.js";

/** The machine is shared and may be loaded: conditions get 30 s unless a test says otherwise (no speed is asserted). */
const waitFor: typeof waitForBase = (cond, opts = {}) => waitForBase(cond, { timeoutMs: 30_000, ...opts });
let etcd: EtcdProcess;
let store: EtcdStore;
let backend: Backend;

beforeAll(async () => {
  etcd = await startEtcd();
  store = new EtcdStore({ endpoints: [etcd.endpoint] });
  backend = await startTcpEcho("b");
});
afterAll(async () => {
  await store?.close();
  await backend?.close();
  await etcd?.stop();
});

/** Three node processes of one cluster; a node that exits RESTART_EXIT_CODE is started again (its supervisor). */
class Cluster extends NodeCluster {
  constructor(name: string) {
    super(name, {
      etcdEndpoint: etcd.endpoint,
      store,
      supervise: true,
      config: (id) => ({ node: { id }, cluster: name, etcd: { endpoints: [etcd.endpoint], leaseTtl: 1 }, withdrawDelay: "200ms", drainTimeout: "3s", accessLog: { enabled: false } }),
    });
  }

  async start(): Promise<void> {
    await etcd.put(this.keys.service("web"), JSON.stringify({ listen: "127.0.0.1:0", health: { type: "none" } }));
    await etcd.put(this.keys.backend("web", "b"), `127.0.0.1:${backend.port}`);
    await Promise.all(["n1", "n2", "n3"].map((id) => this.spawn(id)));
    let seen = "";
    await waitFor(
      async () => {
        const recs = await this.records();
        seen = recs.map((r) => `${r.id}: ready ${r.ready}`).join(", ");
        return recs.filter((r) => r.ready).length === 3;
      },
      { timeoutMs: 60_000, message: "three ready nodes" },
    ).catch((err: Error) => {
      throw new Error(`${err.message} (records: ${seen}; logs: ${this.history(5)})`);
    });
    await waitFor(async () => (await this.members()).length === 3, { message: "three members" });
  }
}

describe("membership and the drain guard", () => {
  it("a killed node is down: a second drain is refused naming it, status lists it, forget is refused while live, then removes it and the drain proceeds", { timeout: 180_000 }, async () => {
    const c = new Cluster("members-dead");
    try {
      await c.start();
      await c.kill("n3");
      await waitFor(async () => !(await c.records()).some((r) => r.id === "n3"), { message: "n3's leased record gone" });
      expect(await c.members()).toEqual(["n1", "n2", "n3"]);
      // A malformed member record is skipped with its key and reason; the valid ones still count.
      await etcd.put(c.keys.member("zz"), "not json");

      const refused = await c.cli("node", "drain", "n1");
      expect(refused.code, refused.stdout).toBe(1);
      expect(refused.stderr).toMatch(/drain of n1 refused: 1 node is already out \(n3: down: a member with no live node record \(last started \S+, version \S+\); start it again, or if it was removed for good: ballast node forget n3\)/);
      expect(await c.drains()).toEqual([]);

      const status = await c.cli("status");
      expect(status.code, status.stderr).toBe(0);
      expect(status.stdout).toMatch(/\nDOWN \(members with no live node record[^\n]*\n[^\n]*\n[^\n]*n3 /);
      expect(status.stdout).toMatch(/INVALID RECORDS[\s\S]*members\/zz\s+member record: not JSON/);
      const json = JSON.parse((await c.cli("-o", "json", "status")).stdout) as { members: { count: number; down: Array<{ id: string }> }; invalid: Array<{ key: string; reason: string }> };
      expect(json.members.count).toBe(3);
      expect(json.members.down.map((m) => m.id)).toEqual(["n3"]);
      expect(json.invalid.filter((r) => r.key === c.keys.member("zz")).map((r) => r.reason)).toEqual([expect.stringMatching(/^member record: not JSON/)]);
      const st = await getJson<StateView>(c.procs.get("n1")!.admin, "/api/state");
      expect(st.members?.down.map((m) => m.id)).toEqual(["n3"]);
      expect(st.invalid).toContainEqual(expect.objectContaining({ key: c.keys.member("zz"), reason: expect.stringMatching(/^member record: not JSON/) }));

      const live = await c.cli("node", "forget", "n2");
      expect(live.code).toBe(1);
      expect(live.stderr).toMatch(/node n2 is live \(its node record nodes\/n2 exists\)/);
      expect(await c.members()).toEqual(["n1", "n2", "n3"]);

      const forgot = await c.cli("node", "forget", "n3");
      expect(forgot.code, forgot.stderr).toBe(0);
      expect(forgot.stdout).toMatch(/node n3 forgotten \(removed its member record members\/n3\)/);
      expect(await c.members()).toEqual(["n1", "n2"]);
      await waitFor(async () => (await getJson<StateView>(c.procs.get("n1")!.admin, "/api/state")).members?.down.length === 0, { message: "n1 no longer lists n3 down" });

      const admitted = await c.cli("node", "drain", "n1");
      expect(admitted.code, admitted.stderr).toBe(0);
      expect(await c.drains()).toEqual(["n1"]);
      expect((await c.cli("node", "undrain", "n1")).code).toBe(0);
    } finally {
      await c.stop();
    }
  });

  it("a rollout refuses to start while a member is down; with it back, it restarts all three with at most one node out", { timeout: 240_000 }, async () => {
    const c = new Cluster("members-rollout");
    try {
      await c.start();
      await c.kill("n2");
      await waitFor(async () => !(await c.records()).some((r) => r.id === "n2"), { message: "n2's leased record gone" });
      const refused = await c.cli("rollout", "restart", "--timeout", "60");
      expect(refused.code).toBe(1);
      expect(refused.stderr).toMatch(/rollout stopped: n2 is down \(a member with no live node record, members\/\): start it again, or if it was removed for good: ballast node forget <id>/);
      expect(await c.drains()).toEqual([]);

      await c.spawn("n2");
      await waitFor(async () => (await c.records()).filter((r) => r.ready).length === 3, { message: "n2 back" });
      const startedBefore = new Map((await c.records()).map((r) => [r.id, r.startedAt]));
      // What the guard sees while the rollout runs: the node being restarted (drain key, no record for
      // a moment) must count once, so at most one node is out in every sample.
      let sampling = true;
      const outs: string[][] = [];
      const sampler = (async () => {
        while (sampling) {
          const [records, drains, members] = await Promise.all([c.records(), c.drains(), store.list(c.keys.members)]);
          const ms = members.kvs.map((kv) => parseMember(kv.key.slice(c.keys.members.length), kv.value));
          outs.push(nodesOut(records, drains, "", ms).map((o) => o.node));
          await new Promise((r) => setTimeout(r, 100));
        }
      })();
      const r = await c.cli("rollout", "restart", "--timeout", "60");
      sampling = false;
      await sampler;
      expect(r.code, `${r.stdout}\n${r.stderr}\n${c.history()}`).toBe(0);
      expect(r.stdout).toMatch(/rollout r-\d+ done: 3 nodes/);
      const after = await c.records();
      for (const rec of after) expect(rec.startedAt, rec.id).toBeGreaterThan(startedBefore.get(rec.id)!);
      expect(outs.length).toBeGreaterThan(10);
      expect(outs.filter((o) => o.length > 1)).toEqual([]);
      // Every node was out at some sample (each one restarted), one at a time.
      expect(new Set(outs.flat())).toEqual(new Set(["n1", "n2", "n3"]));
      expect(await c.members()).toEqual(["n1", "n2", "n3"]);
    } finally {
      await c.stop();
    }
  });
});
