// Zone-aware routing (`locality: prefer-zone`), after Envoy's zone-aware routing: a node sends its
// new clients to backends of its own zone while that zone keeps at least `minHealthyShare` of its
// weight healthy; below that the zone keeps (healthy share / minHealthyShare) of its clients and the
// rest spill over to the other zones in proportion to their healthy weight. Plans are built per zone
// at snapshot time from the records alone, so every node of one zone makes the same decision.
import type { BackendTarget, Picker, PickerFactory } from "./algorithm.js";

/** Where a node of one zone sends a client: its own zone's picker or another zone's, with the reason. */
export interface ZoneChoice {
  readonly zone: string;
  readonly picker: Picker;
  /** Upper bound (exclusive) of this choice on [0, 1): choices are cumulative. */
  readonly upTo: number;
  /** The explain answer: "zone-local", "zone-local: zone a at 50%, keeps 71%", "spillover: zone a at 50% → zone b". */
  readonly reason: string;
  readonly local: boolean;
}

export interface ZonePlan {
  readonly zone: string;
  /** Healthy (routable) weight of the zone over its active weight. */
  readonly healthyShare: number;
  /** Share of the zone's clients that stay in the zone. */
  readonly localShare: number;
  readonly choices: readonly ZoneChoice[];
}

/** A backend as zone planning sees it: its zone, weight, and whether it counts as capacity and is healthy. */
export interface ZoneMember {
  readonly zone: string;
  readonly weight: number;
  /** Active (not drained or disabled) with weight > 0: part of the zone's capacity. */
  readonly capacity: boolean;
}

const byString = (a: string, b: string) => (a < b ? -1 : a > b ? 1 : 0);
const percent = (x: number) => `${Math.floor(x * 100 + 1e-9)}%`;

/**
 * Plans for every zone that has backends. `members` are all backends of the service (capacity);
 * `targets` the routable ones (health), each built into a per-zone picker of the service's algorithm.
 */
export function buildZonePlans(members: readonly ZoneMember[], targets: readonly BackendTarget[], factory: PickerFactory, minHealthyShare: number): ReadonlyMap<string, ZonePlan> {
  const total = new Map<string, number>();
  for (const m of members) if (m.capacity) total.set(m.zone, (total.get(m.zone) ?? 0) + m.weight);
  const healthy = new Map<string, number>();
  const byZone = new Map<string, BackendTarget[]>();
  for (const t of targets) {
    healthy.set(t.zone, (healthy.get(t.zone) ?? 0) + t.weight);
    let list = byZone.get(t.zone);
    if (!list) {
      list = [];
      byZone.set(t.zone, list);
    }
    list.push(t);
  }
  const zones = [...total.keys()].sort(byString);
  const pickers = new Map<string, Picker>();
  for (const [zone, list] of byZone) pickers.set(zone, factory.build(list));

  const plans = new Map<string, ZonePlan>();
  for (const zone of zones) {
    const cap = total.get(zone) ?? 0;
    const ok = healthy.get(zone) ?? 0;
    const healthyShare = cap > 0 ? ok / cap : 0;
    const others = zones.filter((z) => z !== zone && (healthy.get(z) ?? 0) > 0);
    const othersWeight = others.reduce((sum, z) => sum + (healthy.get(z) ?? 0), 0);
    // With nowhere to spill, a degraded zone keeps everything it can still serve.
    let localShare = healthyShare >= minHealthyShare ? 1 : healthyShare / minHealthyShare;
    if (othersWeight === 0) localShare = ok > 0 ? 1 : 0;
    const choices: ZoneChoice[] = [];
    const local = pickers.get(zone);
    if (local && localShare > 0) {
      const reason = localShare >= 1 ? "zone-local" : `zone-local: zone ${zone} at ${percent(healthyShare)}, keeps ${percent(localShare)}`;
      choices.push({ zone, picker: local, upTo: localShare, reason, local: true });
    }
    let acc = localShare;
    for (const z of localShare < 1 ? others : []) {
      acc += (1 - localShare) * ((healthy.get(z) ?? 0) / othersWeight);
      choices.push({ zone: z, picker: pickers.get(z)!, upTo: acc, reason: `spillover: zone ${zone} at ${percent(healthyShare)} → zone ${z}`, local: false });
    }
    // Rounding must never leave a gap at the top.
    if (choices.length > 0) choices[choices.length - 1] = { ...choices[choices.length - 1], upTo: 1 };
    plans.set(zone, { zone, healthyShare, localShare, choices });
  }
  return plans;
}

/**
 * The choice for a client's hash. The hash is remixed first, so the zone decision does not bias which
 * backend the zone's own picker (which uses the same hash) selects.
 */
export function chooseZone(plan: ZonePlan, hash: number): ZoneChoice | null {
  const c = plan.choices;
  if (c.length === 0) return null;
  let h = Math.imul(hash ^ (hash >>> 16), 0x7feb352d);
  h = Math.imul(h ^ (h >>> 15), 0x846ca68b);
  const x = ((h ^ (h >>> 16)) >>> 0) / 0x1_0000_0000;
  for (let i = 0; i < c.length; i++) if (x < c[i].upTo) return c[i];
  return c[c.length - 1];
}

