// `forwarding: dsr` on the real kernel: two nodes program the same netdev table (node/kernel/dsr.ts)
// in their own namespaces; a client, the nodes and the backends share one switch; the backends hold
// the VIP on lo. Every address exists only inside the namespaces this file creates.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { randomBytes } from "node:crypto";
import { DsrForwarder, explainDsr } from "../../node/kernel/dsr.js";
import { nftRunner } from "../../node/kernel/nft.js";
import { createLogger } from "../../node/log.js";
import type { Snapshot } from "../../node/model/snapshot.js";
import { netnsUnavailable } from "../helpers/netns.js";
import { waitFor } from "../helpers/wait.js";
import { BACKEND_SCRIPT, type DsrLab, dsrLab, type Reply } from "./dsr-topology.js";
import { labSnapshot } from "./lab.js";

const log = createLogger(process.env.BALLAST_TEST_LOG ?? "silent");

const skip = netnsUnavailable();

type BackendState = "up" | "drain" | "down";

/**
 * A snapshot, through the real record parser and snapshot builder, with two DSR services on the
 * lab's VIP and port: `web` (TCP) and `webu` (UDP), the same backends in the given states.
 */
function snapshot(lab: DsrLab, revision: number, states: Record<string, BackendState>): Snapshot {
  const backends: Record<string, Record<string, unknown>> = {};
  for (const [id, st] of Object.entries(states)) backends[id] = { address: lab.backends.get(id)!.ip, port: lab.port, state: st === "drain" ? "drain" : "active" };
  const down = Object.keys(states).filter((id) => states[id] === "down");
  const svc = (protocol: "tcp" | "udp") => ({ listen: `${lab.vip}:${lab.port}`, protocol, forwarding: "dsr" });
  return labSnapshot(revision, { web: { service: svc("tcp"), backends, down }, webu: { service: svc("udp"), backends, down } });
}

const backendOf = (r: Reply | string): string => (typeof r === "string" ? `error: ${r}` : r.backend);

describe.skipIf(skip !== null)("forwarding: dsr in the kernel (namespaces)", () => {
  let lab: DsrLab;
  let seed: number;
  let programmers: DsrForwarder[];
  const forwarder = (i: number, cluster = "t", device = "eth0") => new DsrForwarder({ cluster, device, seed, log, runner: nftRunner({ netns: lab.nodes[i].name }) });

  beforeAll(async () => {
    lab = await dsrLab(["b1", "b2", "b3"]);
    seed = randomBytes(4).readUInt32BE(0);
    programmers = [forwarder(0), forwarder(1)];
  });
  afterAll(async () => {
    await lab?.topology.destroy();
  });

  async function applyAll(snap: Snapshot, nodes = programmers): Promise<void> {
    for (const p of nodes) {
      await p.apply(snap);
      for (const name of ["web", "webu"]) expect(p.status(name), p.stats.lastError ?? "").toEqual({ programmed: true, reason: null, revision: snap.revision });
    }
  }

  it("the backend script puts the VIP on lo with the ARP settings, idempotently, checks and removes it", async () => {
    const b1 = lab.backends.get("b1")!.ns;
    expect((await b1.exec("sh", [BACKEND_SCRIPT, "check", lab.vip])).code).toBe(0);
    expect((await b1.exec("sh", [BACKEND_SCRIPT, "up", lab.vip])).code).toBe(0); // again: no error
    expect(await b1.run("cat", ["/proc/sys/net/ipv4/conf/all/arp_ignore"])).toBe("1\n");
    expect(await b1.run("cat", ["/proc/sys/net/ipv4/conf/all/arp_announce"])).toBe("2\n");
    const spare = await lab.topology.namespace("spare");
    const missing = await spare.exec("sh", [BACKEND_SCRIPT, "check", "10.1.2.3"]);
    expect(missing.code).toBe(1);
    expect(missing.stderr).toMatch(/arp_ignore is not 1[\s\S]*vip 10\.1\.2\.3 is not on lo/);
    expect((await spare.exec("sh", [BACKEND_SCRIPT, "up", "10.1.2.3"])).code).toBe(0);
    expect(await spare.run("ip", ["-4", "addr", "show", "dev", "lo"])).toMatch(/inet 10\.1\.2\.3\/32/);
    expect((await spare.exec("sh", [BACKEND_SCRIPT, "down", "10.1.2.3"])).code).toBe(0);
    expect(await spare.run("ip", ["-4", "addr", "show", "dev", "lo"])).not.toMatch(/10\.1\.2\.3/);
    const bad = await spare.exec("sh", [BACKEND_SCRIPT, "up", "10.1.2"]);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toMatch(/not an IPv4 address: 10\.1\.2/);
  });

  it("forwards to a backend that answers the client directly, and the TypeScript hash predicts the kernel", async () => {
    const snap = snapshot(lab, 1, { b1: "up", b2: "up", b3: "up" });
    await applyAll(snap);
    await lab.routeVia(0);
    // A probe on node 1 counts packets coming from the VIP: replies would pass here if they went back through the node.
    await lab.nodes[0].run("nft", ["add", "table", "netdev", "probe"]);
    await lab.nodes[0].run("nft", ["add", "chain", "netdev", "probe", "in", "{", "type", "filter", "hook", "ingress", "device", "eth0", "priority", "0", ";", "policy", "accept", ";", "}"]);
    await lab.nodes[0].run("nft", ["add", "rule", "netdev", "probe", "in", "ip", "saddr", lab.vip, "counter"]);

    const plan = programmers[0].current!.services.get("web")!;
    const udpPlan = programmers[0].current!.services.get("webu")!;
    const seen = new Map<string, number>();
    for (let i = 0; i < 60; i++) {
      const port = 41000 + i;
      const r = await lab.driver.udp(port);
      expect(typeof r, `udp from ${port}: ${String(r)}`).toBe("object");
      const reply = r as Reply;
      // The backend saw the client's own address: the node rewrote nothing.
      expect(reply.peer).toBe(`${lab.clientIp}:${port}`);
      expect(explainDsr(udpPlan, lab.clientIp, port).backend?.id).toBe(reply.backend);
      seen.set(reply.backend, (seen.get(reply.backend) ?? 0) + 1);
    }
    for (let i = 0; i < 20; i++) {
      const id = `p${i}`;
      const port = await lab.driver.open(id, 42000 + i);
      const r = await lab.driver.ask(id);
      expect(typeof r, `tcp ${id}: ${String(r)}`).toBe("object");
      expect((r as Reply).peer).toBe(`${lab.clientIp}:${port}`);
      expect(explainDsr(plan, lab.clientIp, port).backend?.id).toBe((r as Reply).backend);
      await lab.driver.reset(id);
    }
    expect([...seen.keys()].sort()).toEqual(["b1", "b2", "b3"]);
    const out = await lab.nodes[0].run("nft", ["list", "table", "netdev", "probe"]);
    expect(out).toMatch(/counter packets 0 bytes 0/);
    // Per-backend counters moved (client → backend direction).
    const counters = await programmers[0].counters();
    let packets = 0;
    for (const name of ["web", "webu"]) for (const c of counters.get(name)!.values()) packets += c.packets;
    expect(packets).toBeGreaterThanOrEqual(60 + 20 * 3);
    await lab.nodes[0].run("nft", ["delete", "table", "netdev", "probe"]);
  });

  it("sends the same flow to the same backend through either node", async () => {
    const byNode: string[][] = [[], []];
    for (const n of [0, 1]) {
      await lab.routeVia(n);
      for (let i = 0; i < 30; i++) {
        const id = `s${n}-${i}`;
        await lab.driver.open(id, 43000 + i);
        byNode[n].push(backendOf(await lab.driver.ask(id)));
        await lab.driver.reset(id);
      }
    }
    expect(byNode[0].every((b) => !b.startsWith("error"))).toBe(true);
    expect(new Set(byNode[0]).size).toBeGreaterThan(1);
    expect(byNode[1]).toEqual(byNode[0]);
  });

  it("keeps an established TCP connection through the switch from node 1 to node 2 with node 1 down", async () => {
    await lab.routeVia(0);
    const ids = Array.from({ length: 10 }, (_, i) => `f${i}`);
    const first = new Map<string, string>();
    for (const id of ids) {
      await lab.driver.open(id);
      first.set(id, backendOf(await lab.driver.ask(id)));
    }
    expect([...first.values()].every((b) => /^b\d$/.test(b))).toBe(true);
    // Node 1 dies (its link goes down) and the client's route moves to node 2: the anycast failover.
    await lab.nodes[0].ip("link", "set", "eth0", "down");
    await lab.routeVia(1);
    try {
      for (let round = 0; round < 3; round++) {
        for (const id of ids) expect(backendOf(await lab.driver.ask(id)), `${id} round ${round}`).toBe(first.get(id));
      }
    } finally {
      await lab.nodes[0].ip("link", "set", "eth0", "up");
      for (const id of ids) await lab.driver.reset(id);
    }
  });

  it("keeps pinned flows on their backend when the table changes, while new flows follow the new table", async () => {
    await applyAll(snapshot(lab, 2, { b1: "up", b2: "up" }), [programmers[0]]);
    await lab.routeVia(0);
    const ids = Array.from({ length: 30 }, (_, i) => `t${i}`);
    const before = new Map<string, { port: number; backend: string }>();
    for (const id of ids) {
      const port = await lab.driver.open(id);
      before.set(id, { port, backend: backendOf(await lab.driver.ask(id)) });
    }
    // b3 joins: the new table moves about a third of these flows to b3 — but not the pinned ones.
    await applyAll(snapshot(lab, 3, { b1: "up", b2: "up", b3: "up" }), [programmers[0]]);
    const plan = programmers[0].current!.services.get("web")!;
    const moved = ids.filter((id) => explainDsr(plan, lab.clientIp, before.get(id)!.port).backend?.id !== before.get(id)!.backend);
    expect(moved.length).toBeGreaterThan(0);
    for (const id of ids) expect(backendOf(await lab.driver.ask(id)), id).toBe(before.get(id)!.backend);
    // A new flow on a moved flow's slot goes to the backend the new table names.
    const id = moved[0];
    const port = before.get(id)!.port;
    await lab.driver.reset(id);
    const fresh = await freshFlowOn(lab, port + 1000, plan, "b3");
    expect(fresh.got).toBe("b3");
    for (const x of ids) if (x !== id) await lab.driver.reset(x);
  });

  it("skips a down backend, also for flows pinned to it", async () => {
    await applyAll(snapshot(lab, 4, { b1: "up", b2: "up", b3: "up" }), [programmers[0]]);
    await lab.routeVia(0);
    // UDP flows: they survive a move, so the test can watch where a pinned flow's next datagram goes.
    const ports = Array.from({ length: 30 }, (_, i) => 44000 + i);
    const first = new Map<number, string>();
    for (const p of ports) first.set(p, backendOf(await lab.driver.udp(p)));
    const onB1 = ports.filter((p) => first.get(p) === "b1");
    expect(onB1.length).toBeGreaterThan(0);
    // A TCP connection pinned to b1 as well.
    let tcp = "";
    for (let i = 0; i < 40 && tcp === ""; i++) {
      await lab.driver.open(`d${i}`);
      if (backendOf(await lab.driver.ask(`d${i}`)) === "b1") tcp = `d${i}`;
      else await lab.driver.reset(`d${i}`);
    }
    expect(tcp).not.toBe("");

    await applyAll(snapshot(lab, 5, { b1: "down", b2: "up", b3: "up" }), [programmers[0]]);
    for (const p of ports) {
      const b = backendOf(await lab.driver.udp(p));
      expect(b, `udp ${p}`).toMatch(/^b[23]$/);
      if (first.get(p) !== "b1") expect(b, `udp ${p} was not on b1 and stays`).toBe(first.get(p));
    }
    // The pinned TCP connection's next segment goes to another backend, which resets it: the client learns at once.
    expect(await lab.driver.ask(tcp)).toMatch(/ECONNRESET|closed/);
    await lab.driver.reset(tcp);
    // New connections never reach b1 while it is down.
    for (let i = 0; i < 20; i++) {
      await lab.driver.open(`n${i}`);
      expect(backendOf(await lab.driver.ask(`n${i}`))).toMatch(/^b[23]$/);
      await lab.driver.reset(`n${i}`);
    }
    expect(programmers[0].stats.pinsRemoved).toBeGreaterThan(0);

    // b1 returns: the flows that moved away were pinned again where they went, and stay there,
    // although the table sends them to b1 again (a second move would break them once more).
    const moved = new Map<number, string>();
    for (const p of onB1) moved.set(p, backendOf(await lab.driver.udp(p)));
    await applyAll(snapshot(lab, 6, { b1: "up", b2: "up", b3: "up" }), [programmers[0]]);
    const plan = programmers[0].current!.services.get("webu")!;
    for (const p of onB1) {
      expect(explainDsr(plan, lab.clientIp, p).backend?.id, `udp ${p}: the table names b1 again`).toBe("b1");
      expect(backendOf(await lab.driver.udp(p)), `udp ${p}`).toBe(moved.get(p));
    }
  });

  it("a drained backend keeps its pinned flows and takes no new ones", async () => {
    await applyAll(snapshot(lab, 30, { b1: "up", b2: "up", b3: "up" }), [programmers[0]]);
    await lab.routeVia(0);
    let held = "";
    for (let i = 0; i < 40 && held === ""; i++) {
      await lab.driver.open(`r${i}`);
      if (backendOf(await lab.driver.ask(`r${i}`)) === "b2") held = `r${i}`;
      else await lab.driver.reset(`r${i}`);
    }
    expect(held).not.toBe("");
    await applyAll(snapshot(lab, 31, { b1: "up", b2: "drain", b3: "up" }), [programmers[0]]);
    for (let round = 0; round < 3; round++) expect(backendOf(await lab.driver.ask(held))).toBe("b2");
    // New flows from source ports below the ephemeral range, which no earlier flow in this file used:
    // DSR is stateless, so a "new" flow that reused a pinned flow's ports (an earlier test's flow to
    // b2, its socket reset and the port free again) would rightly follow that pin to the drained b2.
    for (let i = 0; i < 20; i++) {
      await lab.driver.open(`q${i}`, 21_000 + i);
      expect(backendOf(await lab.driver.ask(`q${i}`))).toMatch(/^b[13]$/);
      await lab.driver.reset(`q${i}`);
    }
    await lab.driver.reset(held);
  });

  it("drops (and counts) packets when no backend is routable; an unset interface or a refused transaction keeps the previous ruleset", async () => {
    const p = programmers[1];
    await p.apply(snapshot(lab, 7, { b1: "down", b2: "down", b3: "down" }));
    expect(p.current!.services.get("webu")!.slots.length).toBe(0);
    expect(p.status("webu")).toEqual({ programmed: true, reason: null, revision: 7 });
    await lab.routeVia(1);
    expect(await lab.driver.udp(45000, 500)).toBe("udp timeout");
    const out = await lab.nodes[1].run("nft", ["list", "counters", "table", "netdev", p.table]);
    expect(out).toMatch(/dsr_webu_\w+_none \{\s*packets [1-9]/);

    // The node config names no interface: the services are reported, not programmed.
    const unset = new DsrForwarder({ cluster: "t3", device: undefined, seed, log, runner: nftRunner({ netns: lab.nodes[1].name }) });
    await unset.apply(snapshot(lab, 8, { b1: "up" }));
    expect(unset.status("web")).toEqual({ programmed: false, reason: expect.stringMatching(/^node config dsr.interface is not set/), revision: 0 });
    // A transaction the kernel refuses (an interface that does not exist) keeps the previous ruleset.
    const broken = forwarder(1, "t2", "nosuchdev0");
    await broken.apply(snapshot(lab, 9, { b1: "up" }));
    expect(broken.stats.failures).toBe(1);
    expect(broken.status("web")).toMatchObject({ programmed: false, revision: 0 });
    expect(broken.status("web")?.reason).toMatch(/^apply failed: /);
    expect(await lab.driver.udp(45001, 500)).toBe("udp timeout");
    await p.apply(snapshot(lab, 10, { b1: "up" }));
    expect(backendOf(await lab.driver.udp(45002))).toBe("b1");
    const failing = forwarder(1, "t", "nosuchdev0");
    await failing.apply(snapshot(lab, 11, { b2: "up" }));
    expect(failing.stats.failures).toBe(1);
    expect(backendOf(await lab.driver.udp(45003)), "the previous ruleset still forwards").toBe("b1");
  });

  it("a restarted node adopts its table: pins survive, stale services are removed", async () => {
    const p = programmers[0];
    await applyAll(snapshot(lab, 20, { b1: "up", b2: "up" }), [p]);
    await lab.routeVia(0);
    const ports = Array.from({ length: 20 }, (_, i) => 46000 + i);
    const first = new Map<number, string>();
    for (const port of ports) first.set(port, backendOf(await lab.driver.udp(port)));
    // A new process (nothing in memory) with b3 added: the pins it finds in the kernel must hold.
    const restarted = forwarder(0);
    await restarted.apply(snapshot(lab, 21, { b1: "up", b2: "up", b3: "up" }));
    expect(restarted.status("webu")).toEqual({ programmed: true, reason: null, revision: 21 });
    const plan = restarted.current!.services.get("webu")!;
    expect(ports.filter((port) => explainDsr(plan, lab.clientIp, port).backend?.id !== first.get(port)).length).toBeGreaterThan(0);
    for (const port of ports) expect(backendOf(await lab.driver.udp(port)), `udp ${port}`).toBe(first.get(port));
    // Another restart whose first snapshot no longer has the services: what the old process made goes; the table stays.
    const again = forwarder(0);
    await again.apply(labSnapshot(22, {}));
    expect(again.stats.failures).toBe(0);
    const left = await lab.nodes[0].run("nft", ["-t", "list", "table", "netdev", again.table]);
    expect(left).not.toMatch(/dsr_web/);
    expect(left).toMatch(/chain ingress/);
    await waitFor(async () => (await lab.driver.udp(46000, 300)) === "udp timeout", { message: "VIP no longer forwarded" });
    programmers[0] = again;
  });
});

/** Opens connections from ports ≥ `from` until one lands on the slot the plan gives `want`; reports who answered. */
async function freshFlowOn(lab: DsrLab, from: number, plan: Parameters<typeof explainDsr>[0], want: string): Promise<{ port: number; got: string }> {
  for (let port = from; port < from + 500; port++) {
    if (explainDsr(plan, lab.clientIp, port).backend?.id !== want) continue;
    await lab.driver.open("fresh", port);
    const got = backendOf(await lab.driver.ask("fresh"));
    await lab.driver.reset("fresh");
    return { port, got };
  }
  throw new Error(`no port from ${from} maps to ${want}`);
}
