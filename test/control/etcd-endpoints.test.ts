// One member of a three-member etcd cluster stops answering while the other two keep quorum (issue
// 19, chaos 6): the node's store must move to the others before its leases run out. The member is
// SIGSTOPped: its sockets stay open and silent, like a killed container whose connections nobody
// closes or a partition, the case gRPC's own keepalive notices only after 15 s. Every member is
// stopped in turn, so whichever one carries the store's keepalive stream and watch is among them.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { EtcdStore } from "../../node/control/etcd-store.js";
import type { EndpointState } from "../../node/control/etcd-endpoints.js";
import type { StoreEvent, SyncHandle } from "../../node/control/store.js";
import { type EtcdProcess, startEtcdCluster } from "../helpers/etcd.js";
import { waitFor } from "../helpers/wait.js";

const TTL_S = 3;
/** How long a member stays stopped: past 2 × TTL, when a lease with no keepalive answer counts as lost. */
const STOPPED_MS = 2 * TTL_S * 1_000 + 1_000;
/** A watch event or a write while a member is stopped: detection (≤ 2 probe rounds) plus a round trip, with room. */
const MOVE_BOUND_MS = 4_000;

describe("EtcdStore with one of three etcd members stopped", { timeout: 180_000 }, () => {
  let members: EtcdProcess[];
  let store: EtcdStore;
  let sync: SyncHandle;
  const events: StoreEvent[] = [];
  const changes: EndpointState[] = [];
  let listed = false;

  beforeAll(async () => {
    members = await startEtcdCluster(3);
    store = new EtcdStore({
      endpoints: members.map((m) => m.endpoint),
      backoff: { initialMs: 50, maxMs: 500 },
      onEndpointChange: (s) => changes.push({ ...s }),
    });
    sync = store.sync("/t/", {
      reset: () => {
        listed = true;
      },
      events: (evs) => {
        events.push(...evs);
      },
      status: () => {},
    });
  });

  afterAll(async () => {
    await sync?.stop();
    await store?.close();
    for (const m of members ?? []) m.resume();
    await Promise.all((members ?? []).map((m) => m.stop()));
  });

  it("whichever member stops: the watch and writes carry on through the other two, a lease is kept while a follower is stopped, the member is avoided and then used again", async () => {
    let followersStopped = 0;
    // The sync is live once it has listed and a put made by another client arrives (a put before
    // the first list would come in the list, not as an event).
    await waitFor(() => listed, { timeoutMs: 10_000, message: "the first list" });
    await members[0].put("/t/ready", "1");
    await waitFor(() => events.some((e) => e.key === "/t/ready"), { timeoutMs: 10_000, message: "the first watch event" });

    // `etcdctl endpoint status -w simple`: endpoint, id, version, db size, is leader, …
    const leads = async (m: EtcdProcess) => (await m.etcdctl("endpoint", "status", "-w", "simple")).split(",")[4]?.trim() === "true";
    // Followers first, the raft leader last: stopping a follower usually leaves the leader where it
    // is (leadership otherwise tends to move on to the next member in line, and a run stopped only
    // leaders once).
    const remaining = members.map((_, i) => i);
    while (remaining.length > 0) {
      let pick = 0;
      for (let r = 0; r < remaining.length; r++) {
        if (!(await leads(members[remaining[r]]))) {
          pick = r;
          break;
        }
      }
      const i = remaining.splice(pick, 1)[0];
      const member = members[i];
      const other = members[(i + 1) % members.length];
      const wasLeader = await leads(member);
      const lease = await store.grantLease(TTL_S, true);
      const lost: string[] = [];
      lease.onLost((reason) => lost.push(reason));
      member.pause();
      const stoppedAt = Date.now();
      try {
        // A change made through a live member reaches the store's watch. A put in flight while the
        // stopped member was the raft leader waits out etcd's own request timeout (5 s): the other
        // client tries until the two elect a leader (about 1-2 s).
        const key = `/t/while-m${i + 1}-stopped`;
        await waitFor(() => other.put(key, "1").then(() => true, () => false), { timeoutMs: 20_000, message: "a raft leader among the other two" });
        await waitFor(() => events.some((e) => e.key === key), { timeoutMs: MOVE_BOUND_MS, message: `a watch event with m${i + 1} stopped` });
        // The store's own writes land, each within the bound (none waits out its deadline on the stopped member).
        for (let w = 0; w < 5; w++) {
          const t0 = Date.now();
          await store.put(`/t/write-m${i + 1}-${w}`, "1");
          expect(Date.now() - t0, `write ${w} with m${i + 1} stopped`).toBeLessThan(MOVE_BOUND_MS);
        }
        // Avoided within a probe round or two of the stop (the event and writes above can finish
        // sooner, through the live members, when the stopped one carried neither).
        await waitFor(() => !store.endpointStates()[i].up, { timeoutMs: MOVE_BOUND_MS, message: `m${i + 1} avoided` });
        expect(store.endpointStates()[i]).toMatchObject({ endpoint: member.endpoint, up: false });
        // Past 2 × TTL: with a follower stopped, the kept-alive lease is still alive in etcd and here.
        // A stopped raft *leader* can still cost it: a member holds renewals it forwarded to the
        // stopped leader past etcd's grace after the new leader (docs/architecture.md, issue 19).
        const left = STOPPED_MS - (Date.now() - stoppedAt);
        if (left > 0) await new Promise((r) => setTimeout(r, left)); // the fault's duration, not a readiness wait
        if (!wasLeader) {
          followersStopped++;
          expect(lost, `lease lost with follower m${i + 1} stopped`).toEqual([]);
          const ttl = JSON.parse(await other.etcdctl("lease", "timetolive", BigInt(lease.id).toString(16), "-w", "json")) as { ttl: number };
          expect(ttl.ttl, "lease TTL left in etcd").toBeGreaterThan(0);
        }
      } finally {
        member.resume();
      }
      await lease.revoke().catch(() => undefined); // lost already, when the leader was stopped
      // Back: the member answers its probe and calls may use it again.
      await waitFor(() => store.endpointStates()[i].up, { timeoutMs: 15_000, message: `m${i + 1} used again` });
    }
    // The first member stopped is always a follower; a resumed follower can still start an election, so not always two.
    expect(followersStopped, "followers stopped").toBeGreaterThanOrEqual(1);
    // Each member was avoided and used again, and said so (a loaded machine may add a flap).
    for (const [i, member] of members.entries()) {
      const seen = changes.filter((c) => c.endpoint === member.endpoint).map((c) => c.up);
      expect(seen[0], `first change of m${i + 1}`).toBe(false);
      expect(seen.at(-1), `last change of m${i + 1}`).toBe(true);
    }
  });
});
