import { describe, expect, it } from "vitest";
import type { BackendTarget } from "../../node/lb/algorithm.js";
import { roundRobin } from "../../node/lb/round-robin.js";
import { target } from "./targets.js";

function sequence(weights: number[], picks: number, exclude: ((t: BackendTarget) => boolean) | null = null): string {
  const names = "abcdefgh";
  const picker = roundRobin.build(weights.map((w, i) => target(names[i], w)));
  let out = "";
  for (let i = 0; i < picks; i++) out += picker.pick(0, exclude)?.id ?? "-";
  return out;
}

describe("round-robin", () => {
  it.each([
    { description: "nginx's documented 5,1,1 sequence", weights: [5, 1, 1], expected: "aabacaa" },
    { description: "equal weights rotate", weights: [1, 1, 1], expected: "abcabc" },
    { description: "2:1 interleaves", weights: [2, 1], expected: "abaaba" },
    { description: "single backend", weights: [3], expected: "aaa" },
    { description: "weight 0 is never picked", weights: [0, 1], expected: "bbb" },
  ])("$description", ({ weights, expected }) => {
    expect(sequence(weights, expected.length)).toBe(expected);
  });

  it("hands out picks in exact weight proportion over a full cycle", () => {
    const seq = sequence([5, 3, 2], 100);
    expect([...seq].filter((c) => c === "a").length).toBe(50);
    expect([...seq].filter((c) => c === "b").length).toBe(30);
    expect([...seq].filter((c) => c === "c").length).toBe(20);
  });

  it("skips excluded backends and returns null when all are excluded", () => {
    expect(sequence([5, 1, 1], 6, (t) => t.id === "a")).toBe("bcbcbc");
    expect(sequence([1, 1], 3, () => true)).toBe("---");
    expect(roundRobin.build([]).pick(0, null)).toBeNull();
  });
});
