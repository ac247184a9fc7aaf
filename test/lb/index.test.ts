import { describe, expect, it } from "vitest";
import { pickerFactory } from "../../node/lb/index.js";
import { ALGORITHMS } from "../../shared/schema.js";
import { target, targets } from "./targets.js";

describe("pickerFactory", () => {
  it.each(ALGORITHMS.map((name) => ({ name })))("$name: builds pickers that follow the contract", ({ name }) => {
    const factory = pickerFactory(name);
    expect(factory.name).toBe(name);
    expect(factory.hashSourceOnly).toBe(name === "source-ip");

    const list = targets(4);
    const picker = factory.build(list);
    expect(picker.algorithm).toBe(name);
    for (let h = 0; h < 50; h++) {
      const t = picker.pick(h * 2654435761, (x) => x.id === list[0].id);
      expect(t).not.toBeNull();
      expect(t!.id).not.toBe(list[0].id);
    }
    expect(picker.pick(1, () => true)).toBeNull();
    expect(factory.build([]).pick(1, null)).toBeNull();
    expect(factory.build([target("zero", 0)]).pick(1, null)).toBeNull();
  });
});
