// Zone plans (locality: prefer-zone), table-driven: where a node of one zone sends new clients as its
// zone's healthy share falls, and that the spill is proportional to the other zones' healthy weight.
import { describe, expect, it } from "vitest";
import { maglev } from "../../node/lb/maglev.js";
import { buildZonePlans, chooseZone, type ZoneMember } from "../../node/lb/zones.js";
import type { BackendTarget } from "../../node/lb/algorithm.js";
import { flowHash } from "../../node/lb/hash.js";

function target(id: string, zone: string, weight = 1): BackendTarget {
  return { id, host: "127.0.0.1", port: 1, weight, zone, label: id, stats: { active: 0, ejectedUntil: 0 } };
}

const all = ["a1", "a2", "b1", "b2", "c1", "c2"].map((id) => target(id, id[0]));
const members = (ts: BackendTarget[]): ZoneMember[] => ts.map((t) => ({ zone: t.zone, weight: t.weight, capacity: true }));

/** Share of 20 000 clients whose choice lands in each zone, and the backend zones they actually get. */
function split(healthy: BackendTarget[], zone: string, min = 0.7) {
  const plan = buildZonePlans(members(all), healthy, maglev, min).get(zone)!;
  const zones: Record<string, number> = {};
  for (let i = 0; i < 20_000; i++) {
    const h = flowHash(`10.${(i >> 8) & 255}.${i & 255}.7`, 40000 + (i % 1000));
    const c = chooseZone(plan, h)!;
    const t = c.picker.pick(h, null)!;
    expect(t.zone).toBe(c.zone);
    zones[t.zone] = (zones[t.zone] ?? 0) + 1 / 20_000;
  }
  return { plan, zones };
}

describe("zone plans", () => {
  it.each([
    { description: "all healthy: everything stays in zone a", healthy: all, localShare: 1, reason: "zone-local", a: 1, b: 0 },
    { description: "a1 down (a at 50% < 70%): a keeps 50/70, b and c take the rest equally", healthy: all.filter((t) => t.id !== "a1"), localShare: 0.5 / 0.7, reason: "zone-local: zone a at 50%, keeps 71%", a: 0.714, b: 0.143 },
    { description: "both of a down: all spills, half to b, half to c", healthy: all.filter((t) => t.zone !== "a"), localShare: 0, reason: null, a: 0, b: 0.5 },
  ])("$description", ({ healthy, localShare, reason, a, b }) => {
    const { plan, zones } = split(healthy, "a");
    expect(plan.localShare).toBeCloseTo(localShare, 6);
    if (reason) expect(plan.choices[0].reason).toBe(reason);
    expect(zones.a ?? 0).toBeCloseTo(a, 1);
    expect(zones.b ?? 0).toBeCloseTo(b, 1);
    expect(zones.c ?? 0).toBeCloseTo(b, 1);
    const spill = plan.choices.filter((c) => !c.local);
    if (localShare < 1) expect(spill.map((c) => c.reason)).toEqual([`spillover: zone a at ${Math.round(plan.healthyShare * 100)}% → zone b`, `spillover: zone a at ${Math.round(plan.healthyShare * 100)}% → zone c`]);
  });

  it("spillover starts exactly at the configured share, and is proportional to the other zones' healthy weight", () => {
    // Zone a: 10 backends of weight 1; b has weight 3, c weight 1.
    const zoneA = Array.from({ length: 10 }, (_, i) => target(`a${i}`, "a"));
    const others = [target("b1", "b", 3), target("c1", "c", 1)];
    const everyone = [...zoneA, ...others];
    for (let up = 10; up >= 0; up--) {
      const plan = buildZonePlans(members(everyone), [...zoneA.slice(0, up), ...others], maglev, 0.6).get("a")!;
      if (up >= 6) expect(plan.localShare).toBe(1);
      else expect(plan.localShare).toBeCloseTo(up / 10 / 0.6, 9);
      const spill = plan.choices.filter((c) => !c.local);
      if (up >= 6) expect(spill).toEqual([]);
      else {
        const width = (i: number) => spill[i].upTo - (i === 0 ? plan.localShare : spill[i - 1].upTo);
        expect(width(0) / width(1)).toBeCloseTo(3, 6);
      }
    }
  });

  it("the same records give the same plan (and choices) whatever the order of the targets", () => {
    const h = flowHash("192.0.2.1", 5555);
    const p1 = buildZonePlans(members(all), all.filter((t) => t.id !== "a2"), maglev, 0.7).get("a")!;
    const p2 = buildZonePlans(members([...all].reverse()), all.filter((t) => t.id !== "a2").reverse(), maglev, 0.7).get("a")!;
    expect(p1.choices.map((c) => [c.zone, c.upTo, c.reason])).toEqual(p2.choices.map((c) => [c.zone, c.upTo, c.reason]));
    for (let i = 0; i < 1000; i++) {
      const x = (h + i * 7919) >>> 0;
      expect(chooseZone(p2, x)!.picker.pick(x, null)!.id).toBe(chooseZone(p1, x)!.picker.pick(x, null)!.id);
    }
  });

  it("a zone with nowhere to spill keeps what it can serve", () => {
    const onlyA = [target("a1", "a"), target("a2", "a")];
    const plan = buildZonePlans(members(onlyA), [onlyA[0]], maglev, 0.7).get("a")!;
    expect(plan.localShare).toBe(1);
    expect(plan.choices).toHaveLength(1);
  });
});
