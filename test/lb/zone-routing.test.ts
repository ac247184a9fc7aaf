// Zone-aware routing across a real cluster: 3 zones × 2 backends, 2 nodes per zone on one etcd.
// Nodes pick backends of their own zone; as zone a's backends die one by one (real health checks),
// zone a's nodes spill over at the configured share, in proportion across b and c, identically on
// both nodes of the zone; affinity entries still win over locality.
import { describe, expect, it } from "vitest";
import type { BallastNode } from "../../node/node.js";
import { explainRoute } from "../../node/state.js";
import { type Backend, startTcpEcho, tcpExchange } from "../helpers/backends.js";
import type { EtcdProcess } from "../helpers/etcd.js";
import { portOf, startNode } from "../helpers/node.js";
import { useSharedEtcd } from "../helpers/suite.js";
import { waitFor } from "../helpers/wait.js";

let etcd: EtcdProcess;
let cluster = 0;
useSharedEtcd((e) => {
  etcd = e;
});

const ZONES = ["a", "b", "c"];
const CLIENTS = 3000;

async function zonedCluster(service: Record<string, unknown>) {
  const name = `zones${++cluster}`;
  const p = `/ballast/${name}/`;
  const backends = new Map<string, Backend>();
  for (const z of ZONES) for (const i of [1, 2]) backends.set(`${z}${i}`, await startTcpEcho(`${z}${i}`));
  await etcd.put(`${p}services/web`, JSON.stringify({ listen: "127.0.0.1:0", locality: "prefer-zone", ...service }));
  for (const [id, b] of backends) await etcd.put(`${p}backends/web/${id}`, JSON.stringify({ address: "127.0.0.1", port: b.port, zone: id[0] }));
  const nodes = new Map<string, BallastNode>();
  for (const z of ZONES) for (const i of [1, 2]) {
    const id = `z${z}${i}`;
    nodes.set(id, await startNode({ node: { id, zone: z }, cluster: name, etcd: { endpoints: [etcd.endpoint], leaseTtl: 2 } }));
  }
  for (const n of nodes.values()) await waitFor(() => n.reconciler.snapshot?.services.get("web")?.targets.length === 6, { message: `${n.id} routes all six` });
  return { backends, nodes };
}

/** Explains CLIENTS clients on a node: the backend each gets, and the share per backend zone. */
function survey(n: BallastNode) {
  const picks: string[] = [];
  const reasons = new Set<string>();
  const share: Record<string, number> = { a: 0, b: 0, c: 0 };
  for (let i = 0; i < CLIENTS; i++) {
    const r = explainRoute(n, "web", `10.${(i >> 8) & 255}.${i & 255}.9`, 0).body as { backend: { id: string } | null; reason: string };
    picks.push(r.backend?.id ?? "none");
    reasons.add(r.reason);
    if (r.backend) share[r.backend.id[0]] += 1;
  }
  for (const z of ZONES) share[z] /= CLIENTS;
  return { picks, reasons, share };
}

describe("zone-aware routing (locality: prefer-zone)", () => {
  it("nodes use their zone's backends; zone a's nodes spill over at the configured share, proportionally, identically", async () => {
    const { backends, nodes } = await zonedCluster({ algorithm: "source-ip", zoneAware: { minHealthyShare: 0.6 }, health: { type: "tcp", interval: "200ms", timeout: "200ms", rise: 1, fall: 1, jitter: 0 } });
    for (const [id, n] of nodes) {
      const s = survey(n);
      expect(s.share[id[1]]).toBe(1);
      expect([...s.reasons]).toEqual(["zone-local"]);
      // Real connections too: the echo names the backend.
      const got = await tcpExchange(portOf(n, "web"), "x");
      expect(got).toMatch(new RegExp(`^${id[1]}[12]:x$`));
    }

    await backends.get("a1")!.close();
    for (const n of nodes.values()) await waitFor(() => n.reconciler.snapshot?.services.get("web")?.targets.length === 5, { message: `${n.id} sees a1 down` });
    const a1 = survey(nodes.get("za1")!);
    const a2 = survey(nodes.get("za2")!);
    expect(a2.picks).toEqual(a1.picks);
    // Zone a at 50% < 60%: it keeps 50/60 of its clients; b and c share the rest equally.
    expect(a1.share.a).toBeCloseTo(0.5 / 0.6, 1);
    expect(a1.share.b).toBeCloseTo((1 - 0.5 / 0.6) / 2, 1);
    expect(a1.share.c).toBeCloseTo((1 - 0.5 / 0.6) / 2, 1);
    expect(a1.reasons).toEqual(new Set(["zone-local: zone a at 50%, keeps 83%", "spillover: zone a at 50% → zone b", "spillover: zone a at 50% → zone c"]));
    // Other zones are untouched.
    expect(survey(nodes.get("zb1")!).share.b).toBe(1);

    await backends.get("a2")!.close();
    for (const n of nodes.values()) await waitFor(() => n.reconciler.snapshot?.services.get("web")?.targets.length === 4, { message: `${n.id} sees a2 down` });
    const none1 = survey(nodes.get("za1")!);
    expect(survey(nodes.get("za2")!).picks).toEqual(none1.picks);
    expect(none1.share.a).toBe(0);
    expect(none1.share.b).toBeCloseTo(0.5, 1);
    expect(none1.share.c).toBeCloseTo(0.5, 1);
    const got = await tcpExchange(portOf(nodes.get("za1")!, "web"), "y");
    expect(got).toMatch(/^[bc][12]:y$/);
    expect(nodes.get("za1")!.plane.stats.service("web").zoneSpillover).toBeGreaterThan(0);
    const metrics = await (await fetch(`http://${nodes.get("za1")!.admin.address}/metrics`)).text();
    expect(metrics).toMatch(/ballast_zone_routed_total\{service="web",decision="spillover"[^}]*\} [1-9]/);
    expect(metrics).toMatch(/ballast_backend_zone_info\{service="web",backend="a1",zone="a"[^}]*\} 1/);
  });

  it("an affinity entry wins over locality", async () => {
    const { nodes } = await zonedCluster({ affinity: { mode: "source-ip", ttl: "5m" }, health: { type: "none" } });
    // Client 127.0.0.1 connects through a zone-b node: its entry names a b backend.
    const viaB = await tcpExchange(portOf(nodes.get("zb1")!, "web"), "z");
    expect(viaB).toMatch(/^b[12]:z$/);
    const za1 = nodes.get("za1")!;
    await waitFor(() => (explainRoute(za1, "web", "127.0.0.1", 0).body as { reason: string }).reason.startsWith("affinity"), { message: "the entry replicates to za1" });
    const r = explainRoute(za1, "web", "127.0.0.1", 0).body as { backend: { id: string }; reason: string };
    expect(r.backend.id).toBe(viaB.slice(0, 2));
    expect(r.reason).toMatch(/^affinity \(from node zb1/);
    // Another client on za1 stays in zone a.
    expect((explainRoute(za1, "web", "10.9.9.9", 0).body as { reason: string }).reason).toBe("zone-local");
  });
});
