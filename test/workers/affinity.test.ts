// The worker's copy of the node's affinity entries (node/workers/worker.ts WorkerAffinity): what it
// reports to the primary, and how entries from the primary merge. In-process; no sockets needed.
import { describe, expect, it } from "vitest";
import type { ServiceState, Target } from "../../node/model/snapshot.js";
import type { WireEntry } from "../../node/workers/protocol.js";
import { counterNumbers, WorkerAffinity } from "../../node/workers/worker.js";
import { ServiceCounters } from "../../node/model/stats.js";

const TTL = 10_000;
const target = (id: string) => ({ id }) as unknown as Target;
const svc = { name: "web", spec: { affinity: { mode: "source-ip", ttl: TTL } }, sticky: new Map([["b1", target("b1")], ["b2", target("b2")]]) } as unknown as ServiceState;

describe("WorkerAffinity", () => {
  it("reports a new entry once, a refresh only after a quarter of the TTL, and a changed backend at once", () => {
    const sent: WireEntry[][] = [];
    const a = new WorkerAffinity((e) => sent.push(e));
    a.record(svc, "10.0.0.1", target("b1"), 1000);
    a.record(svc, "10.0.0.1", target("b1"), 1500);
    a.flush();
    expect(sent).toEqual([[["web", "10.0.0.1", "b1", 1000]]]);
    a.record(svc, "10.0.0.1", target("b1"), 1000 + TTL / 4);
    a.flush();
    expect(sent[1]).toEqual([["web", "10.0.0.1", "b1", 1000 + TTL / 4]]);
    a.record(svc, "10.0.0.1", target("b2"), 1000 + TTL / 4 + 1);
    a.flush();
    expect(sent[2]).toEqual([["web", "10.0.0.1", "b2", 1000 + TTL / 4 + 1]]);
    expect(a.lookup(svc, "10.0.0.1", 5000)?.id).toBe("b2");
  });

  it("routes by entries from the primary until their grace passes, and not to a backend the snapshot lost", () => {
    const a = new WorkerAffinity(() => {});
    a.merge([["web", "10.0.0.2", "b2", 1000], ["web", "10.0.0.3", "gone", 1000]]);
    expect(a.lookup(svc, "10.0.0.2", 2000)?.id).toBe("b2");
    expect(a.lookup(svc, "10.0.0.2", 1000 + TTL * 1.25)).toBeNull();
    expect(a.lookup(svc, "10.0.0.3", 2000)).toBeNull();
    // An older use does not replace a newer entry for the same backend.
    a.merge([["web", "10.0.0.2", "b2", 5000]]);
    a.merge([["web", "10.0.0.2", "b2", 3000]]);
    expect(a.lookup(svc, "10.0.0.2", 5000 + TTL)?.id).toBe("b2");
    a.sweep({ revision: 1, nextRampAt: null, services: new Map([["web", svc]]), invalid: [] }, 5000 + TTL * 1.25);
    expect(a.size("web")).toBe(0);
  });
});

describe("counterNumbers", () => {
  it("copies every number of a counters object, nested records as a.b, and nothing else", () => {
    const c = new ServiceCounters("web");
    c.accepted = 3;
    c.refused.draining = 2;
    const n = counterNumbers(c);
    expect(n.accepted).toBe(3);
    expect(n["refused.draining"]).toBe(2);
    expect(n.service).toBeUndefined();
    expect(Object.values(n).every((v) => typeof v === "number")).toBe(true);
  });
});
