// Slow start: a backend whose verdict turned up less than `slowStart` ago takes a ramped weight, in
// steps derived from the verdict's `since` (so every node ramps alike), then its full weight.
import { afterEach, describe, expect, it } from "vitest";
import { encodeValue } from "../shared/codec.js";
import { KeySchema } from "../shared/keys.js";
import { RecordTable } from "../node/control/records.js";
import { StatsRegistry } from "../node/model/stats.js";
import type { MaglevPicker } from "../node/lb/maglev.js";
import { buildSnapshot, slowStartWeight } from "../node/model/snapshot.js";
import { closeAllBackends, deadPort, startTcpEcho } from "./helpers/backends.js";
import { getJson, startNode, stopAllNodes } from "./helpers/node.js";
import { waitFor } from "./helpers/wait.js";

afterEach(async () => {
  await stopAllNodes();
  await closeAllBackends();
});

describe("slow start", () => {
  const since = 1_700_000_000_000;
  it.each([
    { description: "off", slowStart: 0, at: 0, weight: 10, next: null },
    { description: "no verdict yet: the floor", slowStart: 10_000, at: null, weight: 1, next: null },
    { description: "just up: the floor", slowStart: 10_000, at: 0, weight: 1, next: since + 1000 },
    { description: "half way", slowStart: 10_000, at: 5500, weight: 5, next: since + 6000 },
    { description: "done", slowStart: 10_000, at: 10_000, weight: 10, next: null },
  ])("$description", ({ slowStart, at, weight, next }) => {
    const r = slowStartWeight(10, at === null ? null : since, slowStart, 10, at === null ? since : since + at);
    expect(r.weight).toBeCloseTo(weight, 9);
    expect(r.next).toBe(next);
  });

  it("two nodes building from the same records at the same step build the same Maglev table", () => {
    const keys = KeySchema.forCluster("t");
    const kv = (key: string, value: string | Buffer) => ({ key, value: Buffer.isBuffer(value) ? value : Buffer.from(value), modRevision: 1, lease: "0" });
    const table = new RecordTable(keys);
    table.reset(
      [
        kv(keys.service("web"), JSON.stringify({ listen: "127.0.0.1:8080", algorithm: "maglev", slowStart: "60s" })),
        kv(keys.backend("web", "a"), "10.0.0.1:80"),
        kv(keys.backend("web", "b"), "10.0.0.2:80"),
        kv(keys.verdict("web", "a"), encodeValue({ state: "up", since: since - 3_600_000, reason: "", count: 1, checker: "n1" })),
        kv(keys.verdict("web", "b"), encodeValue({ state: "up", since, reason: "", count: 1, checker: "n1" })),
      ],
      10,
    );
    const input = table.input(new Map([...table.sharedVerdicts()].map(([k, v]) => [k, { ...v, source: "shared" as const }])));
    // Two "nodes" whose clocks differ but fall in the same quarter of the ramp.
    const n1 = buildSnapshot({ ...input, now: since + 16_000 }, new StatsRegistry());
    const n2 = buildSnapshot({ ...input, now: since + 29_000 }, new StatsRegistry());
    const t1 = (n1.services.get("web")!.picker as MaglevPicker).table;
    const t2 = (n2.services.get("web")!.picker as MaglevPicker).table;
    expect(Buffer.from(t1.buffer).equals(Buffer.from(t2.buffer))).toBe(true);
    const b = n1.services.get("web")!.backends.find((x) => x.id === "b")!;
    expect(b.effectiveWeight).toBe(0.25);
    expect(n1.nextRampAt).toBe(since + 30_000);
    // The ramping backend holds about its weight share of the table: 0.25 / 1.25.
    const share = t1.filter((i) => n1.services.get("web")!.targets[i]?.id === "b").length / t1.length;
    expect(share).toBeGreaterThan(0.15);
    expect(share).toBeLessThan(0.25);
    const later = buildSnapshot({ ...input, now: since + 61_000 }, new StatsRegistry());
    expect(later.services.get("web")!.backends.find((x) => x.id === "b")!.effectiveWeight).toBe(1);
    expect(later.nextRampAt).toBeNull();
  });

  it("a recovered backend ramps from the floor to its full weight on a running node", async () => {
    const a = await startTcpEcho("a");
    const port = await deadPort();
    const node = await startNode({
      services: [
        {
          name: "web",
          listen: "127.0.0.1:0",
          slowStart: "3s",
          health: { type: "tcp", interval: "100ms", timeout: "150ms", rise: 1, fall: 1 },
          backends: [{ id: "a", address: "127.0.0.1", port: a.port }, { id: "b", address: "127.0.0.1", port, weight: 4 }],
        },
      ],
    });
    type State = { services: Array<{ backends: Array<{ id: string; effectiveWeight: number; verdict: { state: string } | null }> }> };
    const b = async () => (await getJson<State>(node.admin.address, "/api/state")).services[0].backends.find((x) => x.id === "b")!;
    await waitFor(async () => (await b()).verdict?.state === "down", { message: "b down" });
    expect((await b()).effectiveWeight).toBe(0);
    await startTcpEcho("b", { port });
    const seen: number[] = [];
    await waitFor(
      async () => {
        const w = (await b()).effectiveWeight;
        if (w > 0 && seen[seen.length - 1] !== w) seen.push(w);
        return w === 4;
      },
      { timeoutMs: 20_000, intervalMs: 50, message: "b at full weight" },
    );
    // Never more than the weight, never backwards, and at least one step between the floor and full.
    expect(seen[0]).toBeLessThan(4);
    for (let i = 1; i < seen.length; i++) expect(seen[i]).toBeGreaterThan(seen[i - 1]);
    expect(seen.length).toBeGreaterThanOrEqual(3);
  });
});
