// peek() answers what the next pick() will be and changes nothing: route explain relies on it.
import { describe, expect, it } from "vitest";
import type { BackendTarget, PickerFactory } from "../../node/lb/algorithm.js";
import { leastConn } from "../../node/lb/least-conn.js";
import { maglev, sourceIp } from "../../node/lb/maglev.js";
import { p2c } from "../../node/lb/p2c.js";
import { roundRobin } from "../../node/lb/round-robin.js";
import { target } from "./targets.js";

describe("peek", () => {
  it.each([
    { description: "round-robin", factory: roundRobin },
    { description: "least-conn", factory: leastConn },
    { description: "p2c", factory: p2c },
    { description: "maglev", factory: maglev },
    { description: "source-ip", factory: sourceIp },
  ] as Array<{ description: string; factory: PickerFactory }>)("$description: peeks between picks leave the pick sequence unchanged", ({ factory }) => {
    const backends = [target("a", 3), target("b", 1), target("c", 2)];
    const build = () => factory.build(backends);
    const plain = build();
    const peeked = build();
    // p2c draws from a random seed per build: copy the seed so both pickers start alike.
    if (factory === p2c) (peeked as unknown as { state: number }).state = (plain as unknown as { state: number }).state;
    const exclude = (t: BackendTarget) => t.id === "c";
    for (let i = 0; i < 50; i++) {
      const hash = i * 2654435761;
      const ex = i % 5 === 0 ? exclude : null;
      const predicted = peeked.peek(hash, ex);
      expect(peeked.peek(hash, ex)).toBe(predicted);
      expect(peeked.pick(hash, ex)).toBe(predicted);
      expect(plain.pick(hash, ex)).toBe(predicted);
    }
  });
});
