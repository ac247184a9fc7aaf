// The chaos harness's polling helpers (test/chaos/cluster/observe.ts), without containers: the
// scenarios' timing figures rest on "the first time each node sees X" being stamped no earlier than
// the node showed it, and on a node that never shows it being reported as missing.
import { describe, expect, it } from "vitest";
import type { StateView } from "../../shared/api.js";
import { everyNodeSees, firstSeen, sampleEvery, type StateSource } from "../chaos/cluster/observe.js";

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
