// The etcd store through outages (issue 19), against a real etcd process killed and restarted on the
// same data dir: a kept-alive lease survives an outage shorter than its TTL, a revoke that failed
// while etcd was down is made once it is back, and a candidate's own abandoned election key does not
// make it wait for that key's TTL.
import { afterEach, describe, expect, it } from "vitest";
import { EtcdStore } from "../../node/control/etcd-store.js";
import { type EtcdProcess, startEtcd } from "../helpers/etcd.js";
import { waitFor } from "../helpers/wait.js";

const cleanups: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

async function etcdFor(): Promise<EtcdProcess> {
  const etcd = await startEtcd();
  cleanups.push(() => etcd.stop());
  return etcd;
}

function storeFor(etcd: EtcdProcess): EtcdStore {
  const store = new EtcdStore({ endpoints: [etcd.endpoint], backoff: { initialMs: 50, maxMs: 1_000 } });
  cleanups.push(() => store.close());
  return store;
}

/** Lets etcd be gone for `ms` (the fault's duration, not a wait for readiness), then starts it again. */
async function outage(etcd: EtcdProcess, ms: number): Promise<void> {
  await etcd.kill("SIGKILL");
  await new Promise((r) => setTimeout(r, ms));
  await etcd.restart();
}

describe("EtcdStore recovery", () => {
  it("a kept-alive lease outlives an etcd outage shorter than its TTL: not lost, its key kept", async () => {
    const etcd = await etcdFor();
    const store = storeFor(etcd);
    const lease = await store.grantLease(5, true);
    const granted = Date.now();
    const lost: string[] = [];
    lease.onLost((reason) => lost.push(reason));
    await store.put("/calm/lease", "v", { lease: lease.id });
    // Keepalives go out at the grant and every TTL/3 (1.67 s) after it: etcd goes away just before the
    // second one, so the last answer is ~1.4 s old. 3.5 s down (0.7 TTL) plus the restart then makes
    // a gap of more than one TTL between answers, which used to count as lost.
    await waitFor(() => Date.now() - granted >= 1_400, { intervalMs: 10 });
    await outage(etcd, 3_500);
    const back = Date.now();
    // Two keepalive rounds after etcd is back (one every TTL/3): an unanswered lease would be lost by then.
    await waitFor(() => Date.now() - back > 4_000 || lost.length > 0, { intervalMs: 100 });
    expect(lost).toEqual([]);
    expect(await etcd.get("/calm/lease")).toBe("v");
    expect(store.recovery.leasesLost).toBe(0);
  }, 30_000);

  it("a revoke that failed while etcd was down is made once etcd is back, not left to the TTL", async () => {
    const etcd = await etcdFor();
    const store = storeFor(etcd);
    // 60 s: etcd extends every lease by its TTL when it restarts, so only a revoke removes the key
    // within this test's waits.
    const lease = await store.grantLease(60, true);
    await store.put("/calm/revoked", "v", { lease: lease.id });
    await etcd.kill("SIGKILL");
    await expect(lease.revoke()).rejects.toMatchObject({ code: "STORE_UNAVAILABLE" });
    expect(store.recovery.revokesPending).toBe(1);
    await etcd.restart();
    await waitFor(async () => (await etcd.get("/calm/revoked")) === null, { timeoutMs: 15_000, message: "the key of the revoked lease gone" });
    expect(store.recovery).toMatchObject({ revokesDeferred: 1, revokesRetried: 1, revokesPending: 0 });
    expect(await etcd.etcdctl("lease", "list")).not.toContain(BigInt(lease.id).toString(16));
  }, 30_000);

  it("a candidate's own abandoned election key (same candidate, a lease it does not hold) is deleted, not waited for", async () => {
    const etcd = await etcdFor();
    const prefix = "/calm-election/";
    // What a crashed earlier process of node n1 leaves behind: its key on a lease nobody keeps alive
    // (60 s, far beyond this test's waits). Another candidate's key is left alone.
    const grant = async () => /lease ([0-9a-f]+) granted/.exec(await etcd.etcdctl("lease", "grant", "60"))![1];
    const staleLease = await grant();
    await etcd.etcdctl("put", `--lease=${staleLease}`, `${prefix}${staleLease}`, "n1");
    const store = storeFor(etcd);
    const leadership = await store.campaign(prefix, "n1", 5);
    expect(await etcd.get(`${prefix}${staleLease}`)).toBeNull();
    expect(store.recovery.staleElectionKeys).toBe(1);
    expect(await leadership.fencedPut("/calm-election-data/v", "n1")).toBe(true);
    await leadership.resign();

    // Someone else's key ahead: n1 waits for it (here it is deleted by hand, as its owner would).
    const otherLease = await grant();
    await etcd.etcdctl("put", `--lease=${otherLease}`, `${prefix}${otherLease}`, "n2");
    let won = false;
    const campaign = store.campaign(prefix, "n1", 5).then((l) => {
      won = true;
      return l;
    });
    await waitFor(async () => (await etcd.etcdctl("get", "--prefix", "--keys-only", prefix)).trim().split("\n").filter((l) => l !== "").length === 2, { message: "n1 in line behind n2" });
    expect(won).toBe(false);
    expect(await etcd.get(`${prefix}${otherLease}`)).toBe("n2");
    await etcd.del(`${prefix}${otherLease}`);
    await (await campaign).resign();
    expect(store.recovery.staleElectionKeys).toBe(1);
  }, 30_000);
});
