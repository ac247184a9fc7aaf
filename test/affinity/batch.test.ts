// The affinity batch wire format: golden bytes, round trip, tolerance of newer writers, and the size bound.
import { describe, expect, it } from "vitest";
import { type BatchEntry, decodeBatch, encodeBatch, encodeBatches, MAX_BATCH_BYTES } from "../../node/affinity/batch.js";
import { encodeValue } from "../../shared/codec.js";

const entries: BatchEntry[] = [
  { ip: "10.0.0.1", backend: "x", lastUsed: 1_700_000_000_500, created: 1_700_000_000_000, gen: 0, creator: "a" },
  { ip: "10.0.0.2", backend: "y", lastUsed: 1_700_000_000_400, created: 1_699_999_000_000, gen: 2, creator: "b" },
];

describe("affinity batch", () => {
  it("encodes to the documented bytes (golden)", () => {
    // {v:1, node:"a", base:1700000000500, backends:["x","y"], nodes:["a","b"],
    //  entries:[["10.0.0.1",0,0,500,0,0],["10.0.0.2",1,100,1000500,2,1]]}
    // msgpackr writes the map header as map16 (de 0006); base is a float64 (cb …); deltas are small ints.
    expect(encodeBatch("a", entries).toString("hex")).toBe(
      "de0006a17601a46e6f6465a161a462617365cb4278bcfe569f4000a86261636b656e647392a178a179a56e6f64657392a161a162" +
        "a7656e74726965739296a831302e302e302e310000cd01f4000096a831302e302e302e320164ce000f44340201",
    );
  });

  it("round-trips entries, times exact", () => {
    const d = decodeBatch(encodeBatch("a", entries));
    expect(d.node).toBe("a");
    expect(d.base).toBe(1_700_000_000_500);
    expect(d.entries).toEqual(entries);
    expect(d.skipped).toBe(0);
  });

  it("reads values of a newer writer: extra fields and extra tuple elements are ignored", () => {
    const v = encodeValue({
      v: 2,
      node: "c",
      base: 1000,
      backends: ["x"],
      nodes: ["c"],
      entries: [["10.0.0.9", 0, 10, 20, 1, 0, "future", 7]],
      compression: "none",
    });
    expect(decodeBatch(v).entries).toEqual([{ ip: "10.0.0.9", backend: "x", lastUsed: 990, created: 980, gen: 1, creator: "c" }]);
  });

  it.each([
    { description: "too short", row: ["10.0.0.1", 0, 0, 0, 0] },
    { description: "backend index out of range", row: ["10.0.0.1", 5, 0, 0, 0, 0] },
    { description: "creator not an index", row: ["10.0.0.1", 0, 0, 0, 0, "a"] },
    { description: "empty ip", row: ["", 0, 0, 0, 0, 0] },
    { description: "fractional time", row: ["10.0.0.1", 0, 0.5, 0, 0, 0] },
    { description: "negative generation", row: ["10.0.0.1", 0, 0, 0, -1, 0] },
  ])("skips a malformed tuple ($description), keeps the rest", ({ row }) => {
    const v = encodeValue({ node: "c", base: 1000, backends: ["x"], nodes: ["c"], entries: [row, ["10.0.0.2", 0, 0, 0, 0, 0]] });
    const d = decodeBatch(v);
    expect(d.skipped).toBe(1);
    expect(d.entries.map((e) => e.ip)).toEqual(["10.0.0.2"]);
  });

  it.each([
    { description: "not msgpack", bytes: Buffer.from([0xc1]) },
    { description: "no version", bytes: Buffer.from("82a46e6f6465a161a4626173650a", "hex") },
    { description: "no node", bytes: encodeValue({ base: 1, backends: [], nodes: [], entries: [] }) },
    { description: "no entries", bytes: encodeValue({ node: "a", base: 1, backends: [], nodes: [] }) },
  ])("rejects a value that is not a batch ($description)", ({ bytes }) => {
    expect(() => decodeBatch(bytes)).toThrow();
  });

  it("500 entries (the default batchMax) stay far below etcd's 1.5 MiB request limit", () => {
    const many: BatchEntry[] = [];
    for (let i = 0; i < 500; i++) {
      many.push({ ip: `2001:db8:ffff:ffff:ffff:ffff:${(i >> 8).toString(16)}:${(i & 255).toString(16)}`, backend: `backend-${i % 50}`, lastUsed: 1_700_000_000_000 + i, created: 1_690_000_000_000 + i, gen: 0, creator: "node-1" });
    }
    expect(encodeBatch("node-1", many).length).toBeLessThan(40 * 1024);
  });

  it("splits a batch that would exceed the byte bound", () => {
    const many: BatchEntry[] = [];
    for (let i = 0; i < 5000; i++) many.push({ ip: `10.1.${i >> 8}.${i & 255}`, backend: `b-${"x".repeat(120)}-${i}`, lastUsed: 1_700_000_000_000, created: 1_700_000_000_000, gen: 0, creator: "n" });
    const parts = encodeBatches("n", many);
    expect(parts.length).toBeGreaterThan(1);
    for (const p of parts) expect(p.length).toBeLessThanOrEqual(MAX_BATCH_BYTES);
    expect(parts.flatMap((p) => decodeBatch(p).entries)).toEqual(many);
  });
});
