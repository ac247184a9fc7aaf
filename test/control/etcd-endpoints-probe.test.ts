// When EtcdEndpoints asks which endpoint: every round while up, every AVOIDED_PROBE_EVERY rounds
// while avoided (a dead member's name lookup can hang and hold one of libuv's shared threads, so it
// is not asked every second), and never avoided when no endpoint answers. Probe clients are
// stand-ins; rounds are driven by hand. The real cluster behaviour is in etcd-endpoints.test.ts.
import { describe, expect, it } from "vitest";
import { AVOIDED_PROBE_EVERY, EtcdEndpoints } from "../../node/control/etcd-endpoints.js";

/** An etcd3 client, named without importing etcd3 (only node/control/ may). */
type Etcd3 = ReturnType<ConstructorParameters<typeof EtcdEndpoints>[1]>;

function fakeCluster(endpoints: string[]) {
  const asked = new Map<string, number>(endpoints.map((e) => [e, 0]));
  const dead = new Set<string>();
  const factory = (endpoint: string) =>
    ({
      maintenance: {
        status: async () => {
          asked.set(endpoint, (asked.get(endpoint) ?? 0) + 1);
          if (dead.has(endpoint)) throw new Error("14 UNAVAILABLE: connect ECONNREFUSED");
          return { leader: "42" };
        },
      },
      close: () => {},
    }) as unknown as Etcd3;
  return { asked, dead, factory };
}

describe("EtcdEndpoints probing", () => {
  const EPS = ["http://a:2379", "http://b:2379", "http://c:2379"];

  it("an endpoint that fails while others answer is avoided, asked only every few rounds, and used again after one answer", async () => {
    const { asked, dead, factory } = fakeCluster(EPS);
    const changes: string[] = [];
    const eps = new EtcdEndpoints(EPS, factory, (s) => changes.push(`${s.endpoint} ${s.up ? "up" : "avoided"}`));
    dead.add(EPS[1]);
    await eps.round();
    expect(eps.states().map((s) => s.up)).toEqual([true, false, true]);
    expect(changes).toEqual(["http://b:2379 avoided"]);
    for (let r = 0; r < 3 * AVOIDED_PROBE_EVERY; r++) await eps.round();
    // a and c every round; b once per AVOIDED_PROBE_EVERY rounds after the one that avoided it.
    expect(asked.get(EPS[0])).toBe(1 + 3 * AVOIDED_PROBE_EVERY);
    expect(asked.get(EPS[1])).toBe(1 + 3);
    dead.delete(EPS[1]);
    for (let r = 0; r < AVOIDED_PROBE_EVERY; r++) await eps.round();
    expect(eps.states()[1]).toMatchObject({ up: true, reason: null, avoidances: 1 });
    expect(changes).toEqual(["http://b:2379 avoided", "http://b:2379 up"]);
    eps.close();
  });

  it("an endpoint answering without a raft leader is avoided but asked every round (reachable; elections end)", async () => {
    const { asked, factory } = fakeCluster(EPS);
    let leader = "0";
    const eps = new EtcdEndpoints(EPS, (endpoint) => {
      const c = factory(endpoint) as unknown as { maintenance: { status: () => Promise<{ leader: string }> } };
      if (endpoint !== EPS[2]) return c as unknown as Etcd3;
      const status = c.maintenance.status;
      return { ...c, maintenance: { status: async () => ({ ...(await status()), leader }) } } as unknown as Etcd3;
    });
    await eps.round();
    expect(eps.states()[2]).toMatchObject({ up: false, reason: "it has no raft leader" });
    await eps.round();
    await eps.round();
    expect(asked.get(EPS[2])).toBe(3);
    leader = "7";
    await eps.round();
    expect(eps.states()[2].up).toBe(true);
    eps.close();
  });

  it("no endpoint answering is an outage, not an endpoint's fault: nothing is avoided", async () => {
    const { dead, factory } = fakeCluster(EPS);
    const eps = new EtcdEndpoints(EPS, factory);
    for (const e of EPS) dead.add(e);
    for (let r = 0; r < 3; r++) await eps.round();
    expect(eps.states().every((s) => s.up)).toBe(true);
    eps.close();
  });

  it("an avoided endpoint's calls are refused by its fault policy only while another endpoint is up", async () => {
    const { dead, factory } = fakeCluster(EPS);
    const eps = new EtcdEndpoints(EPS, factory);
    dead.add(EPS[1]);
    await eps.round();
    const policy = eps.hostPolicy(EPS[1]) as unknown as { execute<T>(fn: () => T): Promise<T> };
    await expect(policy.execute(() => "called")).rejects.toThrow(/etcd endpoint b:2379 avoided/);
    expect(await (eps.hostPolicy(EPS[0]) as unknown as { execute<T>(fn: () => T): Promise<T> }).execute(() => "called")).toBe("called");
    eps.close();
  });
});
