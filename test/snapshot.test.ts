// Records → snapshot, as pure logic: the record table's per-key validation (bad records skipped
// with key and reason, last good value kept) and the builder's cross-record checks.
import { describe, expect, it } from "vitest";
import { RecordTable } from "../node/control/records.js";
import { buildSnapshot } from "../node/model/snapshot.js";
import { StatsRegistry } from "../node/model/stats.js";
import { encodeValue } from "../shared/codec.js";
import { KeySchema } from "../shared/keys.js";

const keys = KeySchema.forCluster("t");
const kv = (key: string, value: string | Buffer, modRevision = 1) => ({ key, value: Buffer.isBuffer(value) ? value : Buffer.from(value), modRevision, lease: "0" });

function build(records: Array<[string, string | Buffer]>) {
  const table = new RecordTable(keys);
  table.reset(records.map(([k, v]) => kv(k, v)), 10);
  return { table, snap: buildSnapshot(table.input(new Map()), new StatsRegistry()) };
}

const svc = JSON.stringify({ listen: "127.0.0.1:8080" });

describe("snapshot builder", () => {
  it.each([
    { description: "invalid JSON", key: keys.service("bad"), value: "{nope", reason: /invalid JSON/ },
    { description: "wrong type", key: keys.service("bad"), value: JSON.stringify({ listen: 80 }), reason: /listen: .*string/i },
    { description: "out-of-range port", key: keys.backend("web", "b9"), value: JSON.stringify({ address: "10.0.0.1", port: 70000 }), reason: /port: .*65535/ },
    { description: "out-of-range weight", key: keys.backend("web", "b9"), value: JSON.stringify({ address: "10.0.0.1", port: 80, weight: -1 }), reason: /weight/ },
    { description: "unknown key in value", key: keys.backend("web", "b9"), value: JSON.stringify({ address: "10.0.0.1", port: 80, colour: "red" }), reason: /unknown key.*colour/ },
    { description: "unknown service", key: keys.backend("nosuch", "b1"), value: "10.0.0.1:80", reason: /unknown service nosuch/ },
    { description: "duplicate backend address", key: keys.backend("web", "b2"), value: "10.0.0.1:80", reason: /duplicate address 10.0.0.1:80 \(same as backend b1\)/ },
    { description: "oversized value", key: keys.service("big"), value: JSON.stringify({ listen: "1.2.3.4:5", name: "x".repeat(70_000) }), reason: /exceeds/ },
    { description: "bad verdict bytes", key: keys.verdict("web", "b1"), value: Buffer.from([0xc1]), reason: /msgpack|version/ },
  ])("skips $description with its key and reason, keeps every valid record", ({ key, value, reason }) => {
    const { snap } = build([
      [keys.service("web"), svc],
      [keys.backend("web", "b1"), "10.0.0.1:80"],
      [key, value],
    ]);
    const bad = snap.invalid.find((r) => r.key === key);
    expect(bad?.reason).toMatch(reason);
    const web = snap.services.get("web")!;
    expect(web.targets.map((t) => t.id)).toEqual(["b1"]);
  });

  it("accepts the short backend form quoted or bare", () => {
    const { snap } = build([
      [keys.service("web"), svc],
      [keys.backend("web", "a"), '"10.0.0.1:80"'],
      [keys.backend("web", "b"), "10.0.0.2:80"],
    ]);
    expect(snap.services.get("web")!.targets.map((t) => t.label)).toEqual(["10.0.0.1:80", "10.0.0.2:80"]);
    expect(snap.invalid).toEqual([]);
  });

  it("keeps the last good value of a key when an update to it is bad", () => {
    const table = new RecordTable(keys);
    table.reset([kv(keys.service("web"), svc), kv(keys.backend("web", "b1"), JSON.stringify({ address: "10.0.0.1", port: 80, weight: 3 }))], 5);
    table.apply([{ type: "put", key: keys.backend("web", "b1"), value: Buffer.from('{"address":"10.0.0.1","port":"eighty"}'), modRevision: 6 }], 6);
    const snap = buildSnapshot(table.input(new Map()), new StatsRegistry());
    expect(snap.services.get("web")!.targets[0].weight).toBe(3);
    expect(snap.invalid).toEqual([expect.objectContaining({ key: keys.backend("web", "b1"), keptLastGood: true })]);
  });

  it("routes only active, weighted backends that are not down; sticky keeps drained ones", () => {
    const table = new RecordTable(keys);
    table.reset(
      [
        kv(keys.service("web"), svc),
        kv(keys.backend("web", "a"), "10.0.0.1:80"),
        kv(keys.backend("web", "b"), JSON.stringify({ address: "10.0.0.2", port: 80, state: "drain" })),
        kv(keys.backend("web", "c"), JSON.stringify({ address: "10.0.0.3", port: 80, state: "disabled" })),
        kv(keys.backend("web", "d"), JSON.stringify({ address: "10.0.0.4", port: 80, weight: 0 })),
        kv(keys.backend("web", "e"), "10.0.0.5:80"),
        kv(keys.verdict("web", "e"), encodeValue({ state: "down", since: 1, reason: "connect ECONNREFUSED", count: 3, checker: "n1" })),
      ],
      7,
    );
    const shared = new Map([...table.sharedVerdicts()].map(([k, v]) => [k, { ...v, source: "shared" as const }]));
    const web = buildSnapshot(table.input(shared), new StatsRegistry()).services.get("web")!;
    expect(web.targets.map((t) => t.id)).toEqual(["a"]);
    expect([...web.sticky.keys()].sort()).toEqual(["a", "b", "d"]);
    expect(Object.fromEntries(web.backends.map((b) => [b.id, b.why]))).toEqual({ a: "", b: "drain", c: "disabled", d: "weight 0", e: "down: connect ECONNREFUSED" });
  });

  it("builds the same routing from the same records in any order", () => {
    const records: Array<[string, string]> = [[keys.service("web"), JSON.stringify({ listen: "127.0.0.1:8080", algorithm: "maglev" })]];
    for (let i = 0; i < 50; i++) records.push([keys.backend("web", `b${String(i).padStart(2, "0")}`), `10.0.1.${i}:80`]);
    const one = build(records).snap.services.get("web")!;
    const two = build([...records].reverse()).snap.services.get("web")!;
    for (let h = 0; h < 5000; h++) expect(two.picker.pick(h * 2654435761, null)?.id).toBe(one.picker.pick(h * 2654435761, null)?.id);
  });

  it("rejects a second service on the same listen address", () => {
    const { snap } = build([
      [keys.service("a"), svc],
      [keys.service("b"), svc],
    ]);
    expect([...snap.services.keys()]).toEqual(["a"]);
    expect(snap.invalid[0]).toMatchObject({ key: keys.service("b"), reason: expect.stringMatching(/already used by service a/) });
  });
});
