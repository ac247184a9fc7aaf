// The chaos harness's polling helpers (test/chaos/cluster/observe.ts), without containers: the
// scenarios' timing figures rest on "the first time each node sees X" being stamped no earlier than
// the node showed it, and on a node that never shows it being reported as missing.
import { afterAll, describe, expect, it } from "vitest";
import type { StateView } from "../../shared/api.js";
import { everyNodeSees, firstSeen, parseRouteEvents, sampleEvery, type StateSource } from "../chaos/cluster/observe.js";
import { netnsUnavailable, Topology } from "../helpers/netns.js";
import { waitFor } from "../helpers/wait.js";

/** A node whose /api/state reports `revision` = 1 from `flipAt` on (epoch ms), or never. */
function node(nodeId: string, flipAt: number | null, opts: { throws?: boolean } = {}): StateSource & { calls: number } {
  return {
    nodeId,
    calls: 0,
    async state() {
      this.calls++;
      if (opts.throws) throw new Error(`${nodeId} unreachable`);
      return { revision: flipAt !== null && Date.now() >= flipAt ? 1 : 0 } as unknown as StateView;
    },
  };
}
const flipped = (s: StateView) => s.revision === 1;

describe("firstSeen", () => {
  it("stamps each node when it first shows the condition, never before", async () => {
    const t0 = Date.now();
    const nodes = [node("a", t0 + 50), node("b", t0 + 150), node("c", t0)];
    const seen = await firstSeen(nodes, flipped, { timeoutMs: 5_000, intervalMs: 10 });
    expect([...seen.keys()].sort()).toEqual(["a", "b", "c"]);
    expect(seen.get("a")).toBeGreaterThanOrEqual(t0 + 50);
    expect(seen.get("b")).toBeGreaterThanOrEqual(t0 + 150);
    expect(seen.get("c")).toBeGreaterThanOrEqual(t0);
    // Seen nodes are not asked again: c saw it in the first round.
    expect(nodes[2].calls).toBe(1);
  });

  it("leaves out a node that never shows it or does not answer, at the deadline", async () => {
    const t0 = Date.now();
    const seen = await firstSeen([node("a", t0), node("never", null), node("down", t0, { throws: true })], flipped, { timeoutMs: 200, intervalMs: 20 });
    expect([...seen.keys()]).toEqual(["a"]);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(200);
  });

  it("everyNodeSees names the nodes that never saw it", async () => {
    const t0 = Date.now();
    await expect(everyNodeSees([node("a", t0), node("n2", null)], flipped, { timeoutMs: 100, intervalMs: 20, message: "the flip" })).rejects.toThrow(
      "waiting for the flip: not seen by [n2]",
    );
    const all = await everyNodeSees([node("a", t0), node("b", t0)], flipped, { timeoutMs: 1_000, message: "the flip" });
    expect(all.size).toBe(2);
  });
});

describe("sampleEvery", () => {
  it("keeps every sample but the undefined and failed ones, until stopped", async () => {
    let i = 0;
    const watch = sampleEvery(5, async () => {
      i++;
      if (i % 3 === 0) throw new Error("the watched thing failed");
      return i % 3 === 1 ? i : undefined;
    });
    while (i < 10) await new Promise((r) => setTimeout(r, 5));
    const samples = await watch.stop();
    const calls = i;
    expect(samples.length).toBeGreaterThan(0);
    expect(samples.every((x) => x % 3 === 1)).toBe(true);
    expect(samples).toEqual(Array.from({ length: calls }, (_, k) => k + 1).filter((x) => x % 3 === 1));
    // Stopped means stopped: no call after stop() resolved.
    await new Promise((r) => setTimeout(r, 30));
    expect(i).toBe(calls);
  });
});

// Scenario 8 times the router's withdrawal of a draining node from these events (watchRouteEvents), so
// the parser is checked against what the real `ip -o -ts monitor route` prints, in a namespace of the test's own.
describe.skipIf(netnsUnavailable() !== null)("parseRouteEvents", () => {
  let topo: Topology | undefined;
  afterAll(async () => {
    await topo?.destroy();
  });

  it("follows a VIP's ECMP route through `ip -o -ts monitor route`: next hops per change, the kernel's time, other routes skipped", async () => {
    topo = await Topology.create();
    const router = await topo.namespace("router");
    const peer = await topo.namespace("peer");
    await topo.link(router, "fab0", peer, "fab1", { aAddr: "10.97.0.1/24", bAddr: "10.97.0.9/24" });
    const vip = "10.99.255.10";
    const monitor = router.spawn("ip", ["-o", "-ts", "monitor", "route"]);
    let out = "";
    monitor.stdout?.on("data", (b: Buffer) => {
      out += b.toString();
    });
    // Subscribed once a route change shows (these are not the VIP's: skipped by the parser). A new
    // route each try: replacing a route with an identical one is no change, and the kernel announces
    // nothing — a monitor that subscribed after the first try would never see one (the CI rehearsal
    // timed out on that).
    let tries = 0;
    await waitFor(
      async () => {
        tries++;
        await router.ip("route", "replace", `10.98.0.${tries}/32`, "via", "10.97.0.9");
        return out.includes("10.98.0.");
      },
      { timeoutMs: 5_000, intervalMs: 100, message: "the monitor printing a route change" },
    );
    const t0 = Date.now();
    // As BIRD's kernel protocol does with "merge paths": one route, its next hops replaced as peers come and go.
    await router.ip("route", "replace", `${vip}/32`, "proto", "bird", "metric", "32", "nexthop", "via", "10.97.0.3", "nexthop", "via", "10.97.0.2", "nexthop", "via", "10.97.0.4");
    await router.ip("route", "replace", `${vip}/32`, "proto", "bird", "metric", "32", "nexthop", "via", "10.97.0.2", "nexthop", "via", "10.97.0.4");
    await router.ip("route", "replace", `${vip}/32`, "proto", "bird", "metric", "32", "via", "10.97.0.4");
    await router.ip("route", "add", "unreachable", "10.99.255.0/24");
    await router.ip("route", "del", `${vip}/32`);
    const t1 = Date.now();
    await waitFor(() => parseRouteEvents(out, vip).length >= 4, { timeoutMs: 5_000, intervalMs: 50, message: `four events of ${vip} in:\n${out}` });
    const events = parseRouteEvents(out, vip);
    expect(events.map((e) => e.announced)).toEqual([["10.97.0.2", "10.97.0.3", "10.97.0.4"], ["10.97.0.2", "10.97.0.4"], ["10.97.0.4"], []]);
    // The kernel's time, in the host's clock (the monitor stamps local time; both are UTC here), in order.
    for (const e of events) {
      expect(e.t).toBeGreaterThanOrEqual(t0 - 1_000);
      expect(e.t).toBeLessThanOrEqual(t1 + 1_000);
    }
    expect(events.map((e) => e.t)).toEqual([...events.map((e) => e.t)].sort((a, b) => a - b));
  });
});
