import { describe, expect, it } from "vitest";
import { P2cPicker, p2c } from "../../node/lb/p2c.js";
import { target, targets } from "./targets.js";

describe("p2c", () => {
  it("with two backends always takes the less loaded one", () => {
    const picker = p2c.build([target("a", 1, 5), target("b", 1, 0)]);
    for (let i = 0; i < 100; i++) expect(picker.pick(0, null)?.id).toBe("b");
  });

  it("compares load per unit of weight", () => {
    const picker = p2c.build([target("a", 1, 1), target("b", 4, 3)]);
    for (let i = 0; i < 100; i++) expect(picker.pick(0, null)?.id).toBe("b");
  });

  it("never picks the most loaded of many, and samples the rest", () => {
    const list = targets(10);
    list.forEach((t, i) => {
      t.stats.active = i;
    });
    const picker = p2c.build(list);
    const seen = new Set<string>();
    for (let i = 0; i < 2000; i++) seen.add(picker.pick(0, null)!.id);
    expect(seen.has(list[9].id)).toBe(false);
    expect(seen.size).toBe(9);
  });

  it.each([1, 2, 3, 5, 9])("never picks an excluded backend (%i of 10 acceptable)", (acceptable) => {
    const list = targets(10);
    const allowed = new Set(list.slice(0, acceptable).map((t) => t.id));
    const picker = new P2cPicker(list, acceptable * 7919);
    const seen = new Set<string>();
    for (let i = 0; i < 1000; i++) {
      const t = picker.pick(0, (x) => !allowed.has(x.id));
      expect(t).not.toBeNull();
      expect(allowed.has(t!.id)).toBe(true);
      seen.add(t!.id);
    }
    expect(seen.size).toBe(acceptable);
  });

  it("returns null when every backend is excluded or there are none", () => {
    expect(p2c.build(targets(5)).pick(0, () => true)).toBeNull();
    expect(p2c.build(targets(1)).pick(0, () => true)).toBeNull();
    expect(p2c.build([]).pick(0, null)).toBeNull();
    expect(p2c.build([target("a", 0)]).pick(0, null)).toBeNull();
  });

  it("survives a zero seed", () => {
    const picker = new P2cPicker(targets(4), 0);
    for (let i = 0; i < 10; i++) expect(picker.pick(0, null)).not.toBeNull();
  });
});
