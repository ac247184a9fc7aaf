// Affinity batches from a rogue or buggy node (issue 13, finding 9): far-future times, generations that
// do not fit, client "addresses" that are not addresses, names for entries that are never stored, and
// one huge batch. Each is fed through the node's real merge path (the cluster watch's hand-over).
import { afterEach, describe, expect, it } from "vitest";
import { encodeValue } from "../../shared/codec.js";
import { KeySchema } from "../../shared/keys.js";
import { nodeConfigSchema } from "../../shared/schema.js";
import { CLOCK_SKEW_MS, MERGE_ENTRIES_PER_TURN } from "../../node/affinity/table.js";
import { MemoryStore } from "../../node/control/memory-store.js";
import { createLogger } from "../../node/log.js";
import { BallastNode } from "../../node/node.js";
import { waitFor } from "../helpers/wait.js";

const keys = KeySchema.forCluster("aff");
const running: BallastNode[] = [];
afterEach(async () => {
  await Promise.all(running.splice(0).map((n) => n.close()));
});

async function affinityNode(ttl = "10m"): Promise<BallastNode> {
  const store = new MemoryStore();
  await store.put(keys.service("web"), JSON.stringify({ listen: "127.0.0.1:0", affinity: { mode: "source-ip", ttl }, health: { type: "none" } }));
  await store.put(keys.backend("web", "a"), "127.0.0.1:9");
  await store.put(keys.backend("web", "b"), "127.0.0.1:10");
  const config = nodeConfigSchema.parse({ node: { id: "me" }, cluster: "aff", admin: { listen: "127.0.0.1:0" } });
  const n = new BallastNode({ config, store, log: createLogger("silent", {}) });
  running.push(n);
  await n.start();
  return n;
}

type Row = [unknown, number, number, number, number, number];
let seq = 1;
/** Hands a batch value to the node as the watch would (a live put from node "rogue"). */
function deliver(n: BallastNode, value: Buffer): void {
  n.affinity.events([{ type: "put", key: keys.affinityBatch("web", "rogue", seq++), value, modRevision: seq }]);
}
function batch(base: number, rows: Row[], nodes: string[] = ["rogue"], backends: string[] = ["a", "b"]): Buffer {
  return encodeValue({ node: "rogue", base, backends, nodes, entries: rows });
}
const merged = (n: BallastNode) => waitFor(() => !n.affinity.pending, { message: "batches merged" });
function slotOf(n: BallastNode, ip: string): number {
  const e = n.affinity.entries;
  const t = e.table("web");
  return t === undefined ? -1 : e.find(t, ip);
}

describe("affinity batches from a rogue node", () => {
  it("clamps far-future times to now + the clock skew allowance", async () => {
    const n = await affinityNode();
    const future = Date.now() + 10 * 365 * 86_400_000;
    deliver(n, batch(future, [["10.1.0.1", 0, 0, 0, 0, 0]]));
    await merged(n);
    const slot = slotOf(n, "10.1.0.1");
    expect(slot).toBeGreaterThanOrEqual(0);
    expect(n.affinity.entries.lastUsed(slot)).toBeLessThanOrEqual(Date.now() + CLOCK_SKEW_MS);
    expect(n.affinity.entries.created(slot)).toBeLessThanOrEqual(Date.now() + CLOCK_SKEW_MS);
  });

  it("skips generations that do not fit an int32 re-pick instead of truncating them", async () => {
    const n = await affinityNode();
    const now = Date.now();
    deliver(n, batch(now, [["10.1.0.2", 0, 0, 0, 2 ** 32 + 5, 0], ["10.1.0.3", 0, 0, 0, 2 ** 31 - 1, 0], ["10.1.0.4", 0, 0, 0, 7, 0]]));
    await merged(n);
    expect(slotOf(n, "10.1.0.2")).toBe(-1);
    expect(slotOf(n, "10.1.0.3")).toBe(-1);
    expect(n.affinity.entries.gen(slotOf(n, "10.1.0.4"))).toBe(7);
  });

  it("skips client addresses that are not IP addresses", async () => {
    const n = await affinityNode();
    const now = Date.now();
    const junk = ["not-an-ip", "10.0.0.1\n", "x".repeat(2000), "10.0.0.256", "::1::2"];
    deliver(n, batch(now, [...junk.map((ip): Row => [ip, 0, 0, 0, 0, 0]), ["2001:db8::7", 1, 0, 0, 0, 0]]));
    await merged(n);
    for (const ip of junk) expect(slotOf(n, ip), JSON.stringify(ip)).toBe(-1);
    expect(n.affinity.entries.backendName(slotOf(n, "2001:db8::7"))).toBe("b");
    expect(n.affinity.entries.table("web")!.size).toBe(1);
  });

  it("interns no names for entries it does not store, and frees names once their entries are gone", async () => {
    const n = await affinityNode("1s");
    const e = n.affinity.entries;
    const before = e.names.names.length;
    const now = Date.now();
    // 20k stale entries, each from another "creator", and 20k naming backends the service does not have.
    const creators = Array.from({ length: 20_000 }, (_, i) => `c${i}`);
    deliver(n, batch(now, creators.map((_, i): Row => [`10.2.${i >> 8}.${i & 255}`, 0, 3_600_000, 3_600_000, 0, i]), creators));
    const ghosts = Array.from({ length: 20_000 }, (_, i) => `ghost${i}`);
    deliver(n, batch(now, ghosts.map((_, i): Row => [`10.3.${i >> 8}.${i & 255}`, i, 0, 0, 0, 0]), ["rogue"], ghosts));
    await merged(n);
    expect(e.names.names.length - before).toBeLessThan(10);
    // Live entries from 5000 creators: stored (names interned), then expired and swept: names freed.
    const live = Array.from({ length: 5_000 }, (_, i) => `l${i}`);
    deliver(n, batch(Date.now(), live.map((_, i): Row => [`10.4.${i >> 8}.${i & 255}`, 0, 0, 0, 0, i]), live));
    await merged(n);
    expect(e.table("web")!.size).toBe(5_000);
    expect(e.names.names.length).toBeGreaterThanOrEqual(5_000);
    await waitFor(() => e.table("web")!.size === 0 && e.names.names.length < 100, { timeoutMs: 30_000, message: "entries expire and their names are freed" });
    // The node still records its own picks after the renumbering.
    const svc = n.reconciler.snapshot!.services.get("web")!;
    n.affinity.record(svc, "10.9.9.9", svc.targets[0], Date.now());
    expect(e.creatorName(slotOf(n, "10.9.9.9"))).toBe("me");
  });

  it("merges one huge batch over several event-loop turns", async () => {
    const n = await affinityNode();
    const count = 4 * MERGE_ENTRIES_PER_TURN;
    const now = Date.now();
    deliver(n, batch(now, Array.from({ length: count }, (_, i): Row => [`10.5.${i >> 8}.${i & 255}`, i & 1, 0, 0, 0, 0])));
    // Runs right after the node's first merge turn (same check phase, queued later).
    const afterFirstTurn = await new Promise<number>((r) => setImmediate(() => r(n.affinity.entries.table("web")?.size ?? 0)));
    expect(afterFirstTurn).toBeLessThan(count);
    expect(afterFirstTurn).toBeLessThanOrEqual(MERGE_ENTRIES_PER_TURN);
    await merged(n);
    expect(n.affinity.entries.table("web")!.size).toBe(count);
  });
});
