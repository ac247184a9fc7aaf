import { describe, expect, it } from "vitest";
import { leastConn } from "../../node/lb/least-conn.js";
import { target } from "./targets.js";

describe("least-conn", () => {
  it.each([
    { description: "fewest active wins", backends: [["a", 1, 5], ["b", 1, 2], ["c", 1, 9]], expected: "b" },
    { description: "weight divides load: 5 active at weight 3 beats 2 at weight 1", backends: [["a", 1, 2], ["b", 3, 5]], expected: "b" },
    { description: "idle heavy backend beats idle light one", backends: [["a", 1, 0], ["b", 2, 0]], expected: "b" },
    { description: "weight 0 is never picked", backends: [["a", 0, 0], ["b", 1, 100]], expected: "b" },
  ] as const)("$description", ({ backends, expected }) => {
    const picker = leastConn.build(backends.map(([id, weight, active]) => target(id, weight, active)));
    expect(picker.pick(0, null)?.id).toBe(expected);
  });

  it("rotates among equally loaded backends", () => {
    const picker = leastConn.build([target("a"), target("b"), target("c")]);
    const seen = new Set<string>();
    for (let i = 0; i < 3; i++) seen.add(picker.pick(0, null)!.id);
    expect(seen.size).toBe(3);
  });

  it("balances by weight as connections accumulate", () => {
    const list = [target("a", 1), target("b", 3)];
    const picker = leastConn.build(list);
    for (let i = 0; i < 400; i++) picker.pick(0, null)!.stats.active++;
    expect(list[0].stats.active).toBe(100);
    expect(list[1].stats.active).toBe(300);
  });

  it("skips excluded backends and returns null when all are excluded", () => {
    const picker = leastConn.build([target("a", 1, 0), target("b", 1, 10)]);
    expect(picker.pick(0, (t) => t.id === "a")?.id).toBe("b");
    expect(picker.pick(0, () => true)).toBeNull();
    expect(leastConn.build([]).pick(0, null)).toBeNull();
  });
});
