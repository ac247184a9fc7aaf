// The forwarder seam: the proxy carries only `forwarding: proxy` services; the node hands every
// snapshot to every forwarder in order, and readiness, drain, close and /api/state cover all of them.
import { afterEach, describe, expect, it } from "vitest";
import { RecordTable } from "../../node/control/records.js";
import { DataPlane } from "../../node/data/plane.js";
import { createLogger } from "../../node/log.js";
import type { Forwarder, ForwarderServiceStatus, ForwardingMode } from "../../node/model/forwarder.js";
import { buildSnapshot, type ServiceState, type Snapshot } from "../../node/model/snapshot.js";
import { StatsRegistry } from "../../node/model/stats.js";
import { BallastNode } from "../../node/node.js";
import { KeySchema } from "../../shared/keys.js";
import { nodeConfigSchema } from "../../shared/schema.js";
import { closeAllBackends, startTcpEcho, tcpExchange } from "../helpers/backends.js";
import { waitFor } from "../helpers/wait.js";

const log = createLogger("silent");
const keys = KeySchema.forCluster("t");
const cleanup: Array<() => Promise<void>> = [];

afterEach(async () => {
  for (const c of cleanup.splice(0)) await c();
  await closeAllBackends();
});

/** A snapshot with services "p" (proxy) and "k" (marked as kernel NAT, as the nat branch's schema will write). */
function snapshotWithKernelService(): Snapshot {
  const table = new RecordTable(keys);
  const kv = (key: string, value: string) => ({ key, value: Buffer.from(value), modRevision: 1, lease: "0" });
  table.reset([kv(keys.service("p"), JSON.stringify({ listen: "127.0.0.1:0" })), kv(keys.service("k"), JSON.stringify({ listen: "127.0.0.1:0" }))], 7);
  const snap = buildSnapshot(table.input(new Map()), new StatsRegistry());
  const services = new Map<string, ServiceState>(snap.services);
  const k = services.get("k")!;
  services.set("k", { ...k, spec: { ...k.spec, forwarding: "nat" } });
  return { ...snap, services };
}

class RecordingForwarder implements Forwarder<Snapshot> {
  readonly name = "recording";
  readonly applied: Array<{ revision: number; proxyHadIt: boolean }> = [];
  drained = 0;
  closed = false;
  constructor(private readonly proxy: () => DataPlane) {}
  handles(mode: ForwardingMode): boolean {
    return mode === "nat";
  }
  async apply(s: Snapshot): Promise<void> {
    this.applied.push({ revision: s.revision, proxyHadIt: this.proxy().current === s });
  }
  status(): ForwarderServiceStatus | undefined {
    return undefined;
  }
  async drain(): Promise<{ remaining: number }> {
    this.drained++;
    return { remaining: 2 };
  }
  async close(): Promise<void> {
    this.closed = true;
  }
}

describe("forwarder seam", () => {
  it("the proxy opens listeners only for proxy services and reports status only for them", async () => {
    const plane = new DataPlane(log);
    cleanup.push(() => plane.close());
    await plane.apply(snapshotWithKernelService());
    expect(plane.name).toBe("proxy");
    expect(plane.handles("proxy")).toBe(true);
    expect(plane.handles("nat")).toBe(false);
    expect(plane.listenerOf("p")?.boundPort).toBeGreaterThan(0);
    expect(plane.listenerOf("k")).toBeUndefined();
    expect(plane.status("p")).toEqual({ programmed: true, reason: null, revision: 7 });
    expect(plane.status("k")).toBeUndefined();
    expect(plane.ready).toBe(true);
  });

  it("the node hands each snapshot to every forwarder after the proxy, and drains and closes them all", async () => {
    const a = await startTcpEcho("a");
    const config = nodeConfigSchema.parse({
      admin: { listen: "127.0.0.1:0" },
      services: [{ name: "web", listen: "127.0.0.1:0", health: { type: "none" }, backends: [{ id: "a", address: "127.0.0.1", port: a.port }] }],
    });
    let node: BallastNode | null = null;
    const rec = new RecordingForwarder(() => node!.plane);
    node = new BallastNode({ config, log, forwarders: [rec] });
    cleanup.push(() => node!.close());
    await node.start();
    // The kernel forwarders (forwarding: nat, then dsr) are built in, after the proxy; injected ones follow.
    expect(node.forwarders.map((f) => f.name)).toEqual(["proxy", "kernel", "dsr", "recording"]);
    await waitFor(() => rec.applied.length > 0, { message: "recording forwarder got a snapshot" });
    expect(rec.applied.every((x) => x.proxyHadIt)).toBe(true);
    expect(node.ready).toBe(true);

    const state = (await (await fetch(`http://${node.admin.address}/api/state`)).json()) as { services: Array<{ name: string; forwarding: unknown }> };
    const web = state.services.find((s) => s.name === "web")!;
    expect(web.forwarding).toEqual({ mode: "proxy", forwarder: "proxy", programmed: true, reason: null, revision: node.plane.current!.revision });
    const port = node.plane.listenerOf("web")!.boundPort;
    expect(await tcpExchange(port, "hi")).toBe("a:hi");

    const r = await node.shutdown(1000);
    expect(rec.drained).toBe(1);
    expect(rec.closed).toBe(true);
    // The proxy had nothing open; the recording forwarder reports 2 still open: drain sums them.
    expect(r.remaining).toBe(2);
  });
});
