import { describe, expect, it } from "vitest";
import type { BackendTarget } from "../../node/lb/algorithm.js";
import { flowHash } from "../../node/lb/hash.js";
import { buildMaglevTable, type MaglevPicker, maglev, maglevTableSize, sourceIp } from "../../node/lb/maglev.js";
import { shuffled, target, targets } from "./targets.js";

function build(list: readonly BackendTarget[]): MaglevPicker {
  return maglev.build(list) as MaglevPicker;
}

/** The table as backend ids, so tables built from differently ordered inputs can be compared. */
function tableIds(p: MaglevPicker): string[] {
  return Array.from(p.table, (i) => p.targets[i].id);
}

function entriesPerId(p: MaglevPicker): Map<string, number> {
  const counts = new Map<string, number>();
  for (const i of p.table) counts.set(p.targets[i].id, (counts.get(p.targets[i].id) ?? 0) + 1);
  return counts;
}

/** Realistic flow keys: many clients, many source ports. */
function flowKey(i: number): number {
  return flowHash(`10.${(i >>> 16) & 255}.${(i >>> 8) & 255}.${i & 255}`, 1024 + (i % 60000));
}

describe("maglevTableSize", () => {
  it.each([
    { backends: 0, expected: 65537 },
    { backends: 1, expected: 65537 },
    { backends: 100, expected: 65537 },
    { backends: 655, expected: 65537 },
    { backends: 656, expected: 131101 },
    { backends: 999, expected: 131101 },
    { backends: 1000, expected: 131101 },
    { backends: 1001, expected: 131101 },
    { backends: 1312, expected: 262151 },
    { backends: 10000, expected: 1048601 },
  ])("$backends backends -> $expected", ({ backends, expected }) => {
    const m = maglevTableSize(backends);
    expect(m).toBe(expected);
    expect(m).toBeGreaterThanOrEqual(100 * backends);
    for (let d = 2; d * d <= m; d++) expect(m % d, `${m} divisible by ${d}`).not.toBe(0);
  });

  it("picker uses it", () => {
    expect(build(targets(3)).size).toBe(65537);
    expect(build(targets(1000)).size).toBe(131101);
  });
});

describe("buildMaglevTable", () => {
  it("fills every entry with a valid index", () => {
    const table = buildMaglevTable(["a", "b", "c"], [1, 1, 1], 65537);
    expect(table.length).toBe(65537);
    expect(table.every((i) => i >= 0 && i < 3)).toBe(true);
  });

  it("maps ids to the same entries whatever the input order", () => {
    const ids = ["x", "a", "m", "b"];
    const weights = [1, 2, 1, 3];
    const base = Array.from(buildMaglevTable(ids, weights, 65537), (i) => ids[i]);
    const order = [2, 0, 3, 1];
    const ids2 = order.map((i) => ids[i]);
    const weights2 = order.map((i) => weights[i]);
    expect(Array.from(buildMaglevTable(ids2, weights2, 65537), (i) => ids2[i])).toEqual(base);
  });

  it("ignores non-positive and non-finite weights; all unusable gives -1 everywhere", () => {
    const table = buildMaglevTable(["a", "b", "c", "d"], [0, 1, -1, Number.NaN], 65537);
    expect(table.every((i) => i === 1)).toBe(true);
    expect(buildMaglevTable(["a"], [0], 65537).every((i) => i === -1)).toBe(true);
  });

  it("rejects a non-prime size", () => {
    expect(() => buildMaglevTable(["a"], [1], 65536)).toThrow(RangeError);
  });
});

describe("maglev table", () => {
  it.each([1, 2, 3, 4, 5])("is identical for a shuffled backend order (seed %i)", (seed) => {
    const list = targets(50);
    const expected = tableIds(build(list));
    expect(tableIds(build(shuffled(list, seed)))).toEqual(expected);
  });

  it("depends on ids and weights only, not addresses", () => {
    const a = [target("one"), target("two", 2)];
    const b = a.map((t) => ({ ...t, host: "10.9.9.9", port: 9999, label: "10.9.9.9:9999" }));
    expect(tableIds(build(b))).toEqual(tableIds(build(a)));
  });

  it.each([
    { backends: 3, tolerance: 0.01 },
    { backends: 100, tolerance: 0.01 },
    { backends: 1000, tolerance: 0.01 },
  ])("gives each of $backends equal backends its share of entries within 1%", ({ backends, tolerance }) => {
    const p = build(targets(backends));
    expect(p.size).toBeGreaterThan(100 * backends - 1);
    const counts = entriesPerId(p);
    expect(counts.size).toBe(backends);
    const fair = p.size / backends;
    let maxDeviation = 0;
    for (const c of counts.values()) maxDeviation = Math.max(maxDeviation, Math.abs(c - fair) / fair);
    expect(maxDeviation).toBeLessThanOrEqual(tolerance);
  });

  it.each([
    { description: "one double-weight backend", weights: [1, 1, 2] },
    { description: "1..4", weights: [1, 2, 3, 4] },
    { description: "3:2", weights: [3, 2] },
    { description: "1:1000", weights: [1, 1000] },
    { description: "100 backends, weights 1..4", weights: Array.from({ length: 100 }, (_, i) => 1 + (i % 4)) },
  ])("respects weights: $description", ({ weights }) => {
    const p = build(weights.map((w, i) => target(`b${String(i).padStart(3, "0")}`, w)));
    const counts = entriesPerId(p);
    const sum = weights.reduce((a, b) => a + b, 0);
    for (const t of p.targets) {
      const fair = (p.size * t.weight) / sum;
      expect(Math.abs((counts.get(t.id) ?? 0) - fair) / fair, t.id).toBeLessThan(0.03);
    }
  });

  it.each([
    { backends: 10, slack: 0.01 },
    { backends: 100, slack: 0.01 },
    { backends: 1000, slack: 0.01 },
  ])("removing one of $backends backends moves about 1/N of flows", ({ backends, slack }) => {
    const all = targets(backends);
    const removed = all[Math.floor(backends / 3)];
    const before = build(all);
    const after = build(all.filter((t) => t !== removed));
    expect(after.size).toBe(before.size);
    const keys = 100_000;
    let moved = 0;
    let movedElsewhere = 0;
    for (let i = 0; i < keys; i++) {
      const h = flowKey(i);
      const a = before.pick(h, null)!;
      const b = after.pick(h, null)!;
      if (a.id !== b.id) {
        moved++;
        if (a !== removed) movedElsewhere++;
      }
    }
    expect(moved / keys).toBeLessThanOrEqual(1 / backends + slack);
    // Flows on the surviving backends mostly stay put.
    expect(movedElsewhere / keys).toBeLessThanOrEqual(slack);
  });
});

describe("MaglevPicker.pick", () => {
  const list = targets(10);
  const p = build(list);

  it("returns the table's backend when nothing is excluded", () => {
    for (let h = 0; h < 1000; h++) expect(p.pick(h * 7919, null)).toBe(p.targets[p.table[(h * 7919) % p.size]]);
  });

  it("walks to a different backend, the same one on every node, when the first is excluded", () => {
    const otherNodes = [1, 2, 3].map((seed) => build(shuffled(list, seed)));
    for (let i = 0; i < 300; i++) {
      const h = flowKey(i);
      const primary = p.pick(h, null)!;
      const exclude = (t: BackendTarget) => t === primary;
      const fallback = p.pick(h, exclude);
      expect(fallback).not.toBeNull();
      expect(fallback).not.toBe(primary);
      for (const other of otherNodes) expect(other.pick(h, exclude)?.id).toBe(fallback!.id);
    }
  });

  it("spreads an excluded backend's flows over the others", () => {
    const down = p.targets[0];
    const landed = new Set<string>();
    for (let i = 0; i < 5000; i++) {
      const h = flowKey(i);
      if (p.pick(h, null) === down) landed.add(p.pick(h, (t) => t === down)!.id);
    }
    expect(landed.size).toBe(list.length - 1);
  });

  it("returns null when every backend is excluded, asking about each backend once", () => {
    let calls = 0;
    expect(
      p.pick(12345, () => {
        calls++;
        return true;
      }),
    ).toBeNull();
    expect(calls).toBe(list.length);
  });

  it("finds the only acceptable backend", () => {
    const only = p.targets[7];
    for (let h = 0; h < 100; h++) expect(p.pick(h * 104729, (t) => t !== only)).toBe(only);
  });

  it("handles no targets and weight-0 targets", () => {
    expect(build([]).pick(1, null)).toBeNull();
    expect(build([target("a", 0)]).pick(1, null)).toBeNull();
    const mixed = build([target("a", 0), target("b", 1)]);
    expect(mixed.pick(1, null)?.id).toBe("b");
  });

  it("accepts any number as a hash", () => {
    for (const h of [-1, 2 ** 32 - 1, 0.5, Number.NaN, 2 ** 40]) expect(p.pick(h, null)).not.toBeNull();
  });
});

describe("factories", () => {
  it.each([
    { factory: maglev, name: "maglev", hashSourceOnly: false },
    { factory: sourceIp, name: "source-ip", hashSourceOnly: true },
  ])("$name hashes the source only: $hashSourceOnly", ({ factory, name, hashSourceOnly }) => {
    expect(factory.name).toBe(name);
    expect(factory.hashSourceOnly).toBe(hashSourceOnly);
    expect(factory.build(targets(2)).algorithm).toBe(name);
  });
});
