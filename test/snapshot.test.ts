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

  describe("reuse across builds", () => {
    const put = (key: string, value: string | Buffer, rev: number) => ({ type: "put" as const, key, value: Buffer.isBuffer(value) ? value : Buffer.from(value), modRevision: rev });
    const verdict = (state: "up" | "down", since: number) => encodeValue({ state, since, reason: state === "down" ? "refused" : "", count: 2, checker: "n1" });
    const sharedOf = (t: RecordTable) => new Map([...t.sharedVerdicts()].map(([k, v]) => [k, { ...v, source: "shared" as const }]));

    function twoServices() {
      const table = new RecordTable(keys);
      table.reset(
        [
          kv(keys.service("web"), JSON.stringify({ listen: "127.0.0.1:8080", algorithm: "maglev" })),
          kv(keys.service("api"), JSON.stringify({ listen: "127.0.0.1:8081", algorithm: "round-robin" })),
          kv(keys.backend("web", "a"), "10.0.0.1:80"),
          kv(keys.backend("web", "b"), "10.0.0.2:80"),
          kv(keys.backend("api", "x"), "10.0.1.1:80"),
          kv(keys.backend("api", "y"), "10.0.1.2:80"),
          kv(keys.verdict("api", "x"), verdict("up", 1)),
        ],
        10,
      );
      return table;
    }

    it("identical bytes are not a change; different bytes or a cleared error are", () => {
      const table = twoServices();
      expect(table.apply([put(keys.backend("web", "a"), "10.0.0.1:80", 11)], 11)).toBe(false);
      expect(table.apply([put(keys.service("web"), JSON.stringify({ listen: "127.0.0.1:8080", algorithm: "maglev" }), 12)], 12)).toBe(false);
      expect(table.apply([put(keys.verdict("api", "x"), verdict("up", 1), 13)], 13)).toBe(false);
      expect(table.apply([put(keys.backend("web", "a"), "10.0.0.1:81", 14)], 14)).toBe(true);
      expect(table.apply([put(keys.backend("web", "a"), "not an address", 15)], 15)).toBe(true);
      // Back to the last good bytes: the error goes, so the invalid list (and the snapshot) change.
      expect(table.apply([put(keys.backend("web", "a"), "10.0.0.1:81", 16)], 16)).toBe(true);
      expect(table.invalid()).toEqual([]);
    });

    it("identical bytes of a backend that shares its address are a change: record age decides which routes", () => {
      const table = twoServices();
      table.apply([put(keys.backend("web", "c"), "10.0.0.1:80", 11)], 11);
      expect(buildSnapshot(table.input(new Map()), new StatsRegistry()).services.get("web")!.targets.map((t) => t.id)).toEqual(["a", "b"]);
      // a rewritten with the same bytes is now younger than c: c keeps the address, on every node.
      expect(table.apply([put(keys.backend("web", "a"), "10.0.0.1:80", 12)], 12)).toBe(true);
      expect(buildSnapshot(table.input(new Map()), new StatsRegistry()).services.get("web")!.targets.map((t) => t.id)).toEqual(["b", "c"]);
    });

    it("a verdict flip in one service keeps every other service's state and picker", () => {
      const table = twoServices();
      const stats = new StatsRegistry();
      const first = buildSnapshot(table.input(sharedOf(table)), stats);
      table.apply([put(keys.verdict("api", "x"), verdict("down", 2), 11)], 11);
      const second = buildSnapshot(table.input(sharedOf(table)), stats, first);
      expect(second.services.get("web")).toBe(first.services.get("web"));
      expect(second.services.get("api")).not.toBe(first.services.get("api"));
      expect(second.services.get("api")!.targets.map((t) => t.id)).toEqual(["y"]);
      // Nothing changed at all: every service is the same object.
      const third = buildSnapshot(table.input(sharedOf(table)), stats, second);
      for (const [name, svc] of third.services) expect(svc, name).toBe(second.services.get(name));
    });

    it("keeps the picker (and its round-robin position) when only non-routing details change", () => {
      const table = twoServices();
      const stats = new StatsRegistry();
      const first = buildSnapshot(table.input(sharedOf(table)), stats);
      const api = first.services.get("api")!;
      expect(api.picker.pick(0, null)?.id).toBe("x");
      // A timeout change and a new verdict detail: the spec and views change, the routable set does not.
      table.apply([put(keys.service("api"), JSON.stringify({ listen: "127.0.0.1:8081", algorithm: "round-robin", timeouts: { idle: "5m" } }), 11)], 11);
      table.apply([put(keys.verdict("api", "x"), encodeValue({ state: "up", since: 5, reason: "", count: 9, checker: "n2" }), 12)], 12);
      const second = buildSnapshot(table.input(sharedOf(table)), stats, first);
      const next = second.services.get("api")!;
      expect(next).not.toBe(api);
      expect(next.spec.timeouts.idle).toBe(300_000);
      expect(next.picker).toBe(api.picker);
      expect(next.targets).toBe(api.targets);
      expect(next.sticky.get("x")).toBe(api.targets[0]);
      // The position carried on: the next pick is the other backend, not the first again.
      expect(next.picker.pick(0, null)?.id).toBe("y");
    });

    it("rebuilds the picker when the routable set changes", () => {
      const table = twoServices();
      const stats = new StatsRegistry();
      const first = buildSnapshot(table.input(new Map()), stats);
      table.apply([put(keys.backend("web", "c"), "10.0.0.3:80", 11)], 11);
      const second = buildSnapshot(table.input(new Map()), stats, first);
      expect(second.services.get("web")!.picker).not.toBe(first.services.get("web")!.picker);
      expect(second.services.get("web")!.targets.map((t) => t.id)).toEqual(["a", "b", "c"]);
      // Unchanged backends keep their Target objects (retries compare by identity).
      expect(second.services.get("web")!.targets[0]).toBe(first.services.get("web")!.targets[0]);
    });
  });
});
