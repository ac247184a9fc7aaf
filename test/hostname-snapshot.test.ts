// Host-name backends in the pure snapshot build: the resolver's answers are an input read
// synchronously; each address a target of the backend, failures its reason, an unchanged answer
// (the same object) keeps the service's state and picker.
import { describe, expect, it } from "vitest";
import { RecordTable } from "../node/control/records.js";
import { buildSnapshot, type ResolvedName, type Snapshot } from "../node/model/snapshot.js";
import { StatsRegistry } from "../node/model/stats.js";
import { KeySchema } from "../shared/keys.js";

const keys = KeySchema.forCluster("t");
const stats = new StatsRegistry();
const answer = (addresses: string[], error: string | null = null): ResolvedName => Object.freeze({ addresses: Object.freeze(addresses), error, since: 1, ttlMs: 5000 });

function build(service: Record<string, unknown>, backends: Record<string, unknown>, answers: Record<string, ResolvedName>, prev: Snapshot | null = null): Snapshot {
  const table = new RecordTable(keys);
  const kvs = [{ key: keys.service("web"), value: Buffer.from(JSON.stringify({ listen: "127.0.0.1:8080", ...service })), modRevision: 1, lease: "0" }];
  for (const [id, b] of Object.entries(backends)) kvs.push({ key: keys.backend("web", id), value: Buffer.from(JSON.stringify(b)), modRevision: 1, lease: "0" });
  table.reset(kvs, 10);
  const input = table.input(new Map());
  input.resolve = (name) => answers[name];
  return buildSnapshot(input, stats, prev);
}

describe("host-name backends in the snapshot", () => {
  it.each<{ description: string; answers: Record<string, ResolvedName>; why: string; addresses: string[] }>([
    { description: "before the first answer", answers: {} as Record<string, ResolvedName>, why: "resolving api.test", addresses: [] },
    { description: "NXDOMAIN", answers: { "api.test": answer([], "NXDOMAIN") }, why: "resolve api.test: NXDOMAIN", addresses: [] },
    { description: "a stale answer kept through a timeout", answers: { "api.test": answer(["10.0.0.1"], "ETIMEOUT; keeping the last answer") }, why: "", addresses: ["10.0.0.1"] },
  ])("$description", ({ answers, why, addresses }) => {
    const web = build({ health: { type: "none" } }, { a: { address: "api.test", port: 80 } }, answers).services.get("web")!;
    expect(web.backends[0]).toMatchObject({ why, routable: why === "", addresses });
    expect(web.targets.map((t) => t.host)).toEqual(why === "" ? addresses : []);
  });

  it("every address a target with the backend's id, weight and counters, and a Maglev key of its own", () => {
    const web = build({ algorithm: "maglev", health: { type: "none" } }, { a: { address: "api.test", port: 80, weight: 3 }, b: { address: "10.0.0.9", port: 80 } }, { "api.test": answer(["10.0.0.1", "10.0.0.2", "fd00::1"]) }).services.get("web")!;
    expect(web.targets.map((t) => [t.id, t.host, t.weight, t.hashKey ?? null])).toEqual([
      ["a", "10.0.0.1", 3, "a|10.0.0.1"],
      ["a", "10.0.0.2", 3, "a|10.0.0.2"],
      ["a", "fd00::1", 3, "a|fd00::1"],
      // An IP literal keeps its id as its key, so existing tables do not move.
      ["b", "10.0.0.9", 1, null],
    ]);
    expect(new Set(web.targets.filter((t) => t.id === "a").map((t) => t.stats)).size).toBe(1);
    expect(web.sticky.get("a")?.host).toBe("10.0.0.1");
    expect(web.targets.find((t) => t.host === "fd00::1")?.label).toBe("[fd00::1]:80");
  });

  it("a checkAddress name that does not resolve keeps a checked backend out, not an unchecked one", () => {
    const backends = { a: { address: "10.0.0.1", port: 80, checkAddress: "probe.test" } };
    const answers = { "probe.test": answer([], "NXDOMAIN") };
    expect(build({}, backends, answers).services.get("web")!.backends[0]).toMatchObject({ routable: false, why: "checkAddress: resolve probe.test: NXDOMAIN", addresses: ["10.0.0.1"], checkAddresses: [] });
    expect(build({ health: { type: "none" } }, backends, answers).services.get("web")!.backends[0]).toMatchObject({ routable: true });
  });

  it("the same answer object keeps the service state; a changed answer rebuilds it", () => {
    const first = answer(["10.0.0.1"]);
    const s1 = build({ health: { type: "none" } }, { a: { address: "api.test", port: 80 } }, { "api.test": first });
    // The record table keeps parsed specs by identity only within one table: rebuild from s1's input.
    const table = new RecordTable(keys);
    table.reset([{ key: keys.service("web"), value: Buffer.from(JSON.stringify({ listen: "127.0.0.1:8080", health: { type: "none" } })), modRevision: 1, lease: "0" }, { key: keys.backend("web", "a"), value: Buffer.from(JSON.stringify({ address: "api.test", port: 80 })), modRevision: 1, lease: "0" }], 10);
    let current = first;
    const input = () => ({ ...table.input(new Map()), resolve: () => current });
    const a = buildSnapshot(input(), stats, s1);
    const b = buildSnapshot(input(), stats, a);
    expect(b.services.get("web")).toBe(a.services.get("web"));
    current = answer(["10.0.0.2"]);
    const c = buildSnapshot(input(), stats, b);
    expect(c.services.get("web")).not.toBe(b.services.get("web"));
    expect(c.services.get("web")!.targets.map((t) => t.host)).toEqual(["10.0.0.2"]);
  });

  it("a nat service does not resolve names: the backend says why", () => {
    const web = build({ listen: "10.0.0.100:80", forwarding: "nat" }, { a: { address: "api.test", port: 80 } }, { "api.test": answer(["10.0.0.1"]) }).services.get("web")!;
    expect(web.backends[0].why).toBe("address: forwarding nat needs an IP address, got api.test");
  });
});
