// forwarding: nat end to end in namespaces: the kernel forwarder programs the lb namespace's
// nftables from a snapshot; a client namespace opens real TCP/UDP flows through it to backend
// namespaces. The TypeScript jhash predicts the kernel's backend for every flow.
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { StatsRegistry } from "../../node/model/stats.js";
import { createLogger } from "../../node/log.js";
import { type ConntrackTool, conntrackTool } from "../../node/kernel/conntrack.js";
import { explainNat, KernelForwarder } from "../../node/kernel/forwarder.js";
import { nftRunner } from "../../node/kernel/nft.js";
import { netnsUnavailable } from "../helpers/netns.js";
import { waitFor } from "../helpers/wait.js";
import { CLIENT, createLab, type Lab, labSnapshot, VIP } from "./lab.js";

const skip = netnsUnavailable();
const log = createLogger(process.env.BALLAST_TEST_LOG ?? "silent");
const ports = (from: number, n: number) => Array.from({ length: n }, (_, i) => from + i);

function natService(extra: Record<string, unknown> = {}, backends = 3, protocol = "tcp") {
  const b: Record<string, Record<string, unknown>> = {};
  for (let i = 0; i < backends; i++) b[`b${i}`] = { address: `10.77.2.${10 + i}`, port: 8080 };
  return { service: { listen: `${VIP}:80`, protocol, forwarding: "nat", algorithm: "maglev", ...extra }, backends: b };
}

// Real processes in namespaces on a shared 2-core machine: generous per-test deadlines (a test that
// times out keeps running in the background and would disturb the next one).
describe.skipIf(skip !== null)("forwarding: nat in the kernel (namespaces)", { timeout: 180_000 }, () => {
  let lab: Lab;
  const forwarders: KernelForwarder[] = [];
  const forwarder = (cluster = "lab") => {
    const f = new KernelForwarder({ cluster, log, runner: nftRunner({ netns: lab.lb.name }), conntrack: conntrackTool({ netns: lab.lb.name }) });
    forwarders.push(f);
    return f;
  };
  /** A forwarder that collects counters into `stats` only when the test asks (collectCounters). */
  const counting = (stats: StatsRegistry) => {
    const f = new KernelForwarder({ cluster: "lab", log, runner: nftRunner({ netns: lab.lb.name }), conntrack: conntrackTool({ netns: lab.lb.name }), stats, countersEveryMs: 60_000 });
    forwarders.push(f);
    return f;
  };
  /** A NAT service on the VIP's `port` (its own port: other tests' flows to port 80 do not count there). */
  const natOn = (port: number, backends = 3) => {
    const s = natService({}, backends);
    s.service.listen = `${VIP}:${port}`;
    return s;
  };
  beforeAll(async () => {
    lab = await createLab(3);
  });
  afterEach(() => {
    // Held connections end with their test, also when it failed half way.
    for (const h of lab?.held ?? []) h.close();
  });
  afterAll(async () => {
    for (const f of forwarders) await f.close();
    await lab?.destroy();
  });

  it("TCP full NAT: 1000 flows reach the backend the TypeScript jhash predicts, backends see the node's address", async () => {
    const f = forwarder();
    const snap = labSnapshot(5, { web: natService() });
    await f.apply(snap);
    expect(f.status("web")).toEqual({ programmed: true, reason: null, revision: 5 });
    const svc = snap.services.get("web")!;
    const got = await lab.flows("tcp", ports(20000, 1000));
    let agree = 0;
    const seen = new Set<string>();
    for (const [p, answer] of got) {
      const [name, from] = answer.split(" ");
      expect(from, `flow from port ${p}: ${answer}`).toBe("10.77.2.1");
      seen.add(name);
      if (explainNat(svc, f.seed, CLIENT, p).backend?.id === name) agree++;
    }
    expect(got.size).toBe(1000);
    expect(agree).toBe(1000);
    expect(seen.size).toBe(3);
  });

  it("UDP full NAT: 300 flows reach the predicted backend", async () => {
    const f = forwarder();
    const snap = labSnapshot(6, { dns: natService({}, 3, "udp") });
    await f.apply(snap);
    const svc = snap.services.get("dns")!;
    const got = await lab.flows("udp", ports(30000, 300));
    const wrong = [...got].filter(([p, a]) => explainNat(svc, f.seed, CLIENT, p).backend?.id !== a.split(" ")[0]);
    expect(wrong).toEqual([]);
  });

  it("nat.sourceAddresses: full NAT leaves with the configured address of the node, not the interface's", async () => {
    await lab.lb.addAddress("eth0", "10.77.2.5/24");
    const f = new KernelForwarder({ cluster: "lab", log, runner: nftRunner({ netns: lab.lb.name }), conntrack: conntrackTool({ netns: lab.lb.name }), sourceAddresses: ["10.77.2.5", "fd77:2::5"] });
    forwarders.push(f);
    const own = natService();
    own.service.listen = `${VIP}:84`;
    await f.apply(labSnapshot(8, { web: own }));
    const got = await lab.flows("tcp", ports(22000, 30), { port: 84 });
    expect(got.size).toBe(30);
    for (const a of got.values()) expect(a).toMatch(/^b[012] 10\.77\.2\.5$/);
  });

  it("nat.snat false: backends see the client's own address (they route replies through the node)", async () => {
    const routed = await createLab(2, { backendRoute: true });
    try {
      const f = new KernelForwarder({ cluster: "lab", log, runner: nftRunner({ netns: routed.lb.name }), conntrack: conntrackTool({ netns: routed.lb.name }) });
      await f.apply(labSnapshot(7, { web: natService({ nat: { snat: false } }, 2) }));
      const got = await routed.flows("tcp", ports(21000, 20));
      for (const a of got.values()) expect(a).toMatch(new RegExp(`^b[01] ${CLIENT.replace(/\./g, "\\.")}$`));
    } finally {
      await routed.destroy();
    }
  });

  it("a verdict flip is a small delta: established flows stay, new flows follow the map, 500 new connections during changes all succeed", async () => {
    const f = forwarder();
    await f.apply(labSnapshot(10, { web: natService() }));
    const held = await lab.hold(ports(40000, 30));
    const before = await held.ask();
    // While 500 connections are opened, the table changes back and forth (b2 down, up, down, up).
    const load = lab.flows("tcp", ports(41000, 500), { concurrency: 20 });
    for (let i = 0; i < 5; i++) {
      await f.apply(labSnapshot(11 + i, { web: { ...natService(), down: i % 2 === 0 ? ["b2"] : [] } }));
      expect(f.status("web")?.reason).toBe(null);
    }
    const answers = await load;
    expect([...answers.values()].filter((a) => !/^b[012] /.test(a))).toEqual([]);
    // b2 is down now: its slots (about a third) were rewritten as a delta, not the whole table.
    const svcSize = labSnapshot(1, { web: natService() }).services.get("web")!.picker as unknown as { size: number };
    expect(f.state().lastSlotsChanged).toBeGreaterThan(0);
    expect(f.state().lastSlotsChanged).toBeLessThan(svcSize.size);
    // Connections on b0 and b1 stayed where they were (b2's were removed: it is down).
    const after = await held.ask();
    for (const [p, a] of before) {
      if (!a.startsWith("b2")) expect(after.get(p), `held flow ${p}`).toBe(a);
    }
    // New flows never reach the down backend.
    const fresh = await lab.flows("tcp", ports(42000, 100));
    expect([...fresh.values()].filter((a) => a.startsWith("b2"))).toEqual([]);
    held.close();
  });

  it("down: tracked flows of the backend are removed (the client learns at once); drain: they are kept", async () => {
    const f = forwarder();
    await f.apply(labSnapshot(20, { web: natService() }));
    const held = await lab.hold(ports(43000, 30));
    const before = await held.ask();
    const on = (b: string) => [...before].filter(([, a]) => a.startsWith(b)).map(([p]) => p);
    expect(on("b1").length).toBeGreaterThan(0);
    expect(on("b2").length).toBeGreaterThan(0);
    // b1 drains: its connections keep working; b2 goes down: its flows are removed.
    const drain = natService();
    drain.backends.b1.state = "drain";
    await f.apply(labSnapshot(21, { web: { ...drain, down: ["b2"] } }));
    await f.flowWork;
    expect(f.state().flowsRemoved).toBeGreaterThan(0);
    const after = await held.ask();
    for (const p of on("b1")) expect(after.get(p)).toBe(before.get(p));
    // A removed flow's next packet is picked up as a new flow and sent to a live backend, which
    // answers a mid-stream segment with a reset: the client learns at once.
    for (const p of on("b2")) expect(after.get(p)).toMatch(/^error:ECONNRESET|^closed$/);
    held.close();
  });

  it("a failed apply keeps the previous ruleset forwarding, shows the reason, and the next apply recovers", async () => {
    const f0 = forwarder();
    await f0.apply(labSnapshot(30, { web: natService() }));
    const real = nftRunner({ netns: lab.lb.name });
    let fail = true;
    const f = new KernelForwarder({
      cluster: "lab",
      log,
      runner: { load: (script) => real.load(fail ? `${script}add rule inet nosuchtable nosuchchain drop\n` : script), run: (a) => real.run(a) },
      conntrack: conntrackTool({ netns: lab.lb.name }),
    });
    forwarders.push(f);
    await f.apply(labSnapshot(31, { web: natService({}, 2) }));
    expect(f.status("web")?.programmed).toBe(false);
    expect(f.status("web")?.reason).toMatch(/^apply failed: .*No such file or directory/);
    expect(f.state().failures).toBe(1);
    // The previous table (three backends) still forwards.
    const got = await lab.flows("tcp", ports(44000, 60));
    expect(new Set([...got.values()].map((a) => a.split(" ")[0]))).toEqual(new Set(["b0", "b1", "b2"]));
    fail = false;
    await f.apply(labSnapshot(32, { web: natService({}, 2) }));
    expect(f.status("web")).toEqual({ programmed: true, reason: null, revision: 32 });
    const now = await lab.flows("tcp", ports(44100, 60));
    expect(new Set([...now.values()].map((a) => a.split(" ")[0]))).toEqual(new Set(["b0", "b1"]));
  });

  it("a new process adopts the table a dead one left: established flows are not disturbed", async () => {
    const first = forwarder();
    await first.apply(labSnapshot(40, { web: natService() }));
    const held = await lab.hold(ports(45000, 20));
    const before = await held.ask();
    // The first forwarder "dies" (its table stays); a new one applies a later revision with b0 gone.
    const second = forwarder();
    const s = natService();
    delete (s.backends as Record<string, unknown>).b0;
    await second.apply(labSnapshot(41, { web: s }));
    expect(second.status("web")?.programmed).toBe(true);
    const after = await held.ask();
    expect(after).toEqual(before);
    held.close();
  });

  let limitCase = 0;
  it.each([
    { description: "access.deny names the client", extra: { access: { deny: [`${CLIENT}/32`] } }, answered: (n: number) => n === 0 },
    { description: "access.allow leaves the client out", extra: { access: { allow: ["192.168.0.0/16"] } }, answered: (n: number) => n === 0 },
    { description: "access.allow includes the client", extra: { access: { allow: ["10.77.0.0/16"] } }, answered: (n: number) => n === 40 },
    { description: "limits.sourceRate 1/s, burst 5", extra: { limits: { sourceRate: 1, sourceBurst: 5 } }, answered: (n: number) => n >= 5 && n <= 8 },
    { description: "limits.maxConnections 5", extra: { limits: { maxConnections: 5 } }, answered: (n: number) => n === 5 },
  ])("limits and access in the kernel: $description", async ({ extra, answered }) => {
    // Each case its own service port, so conntrack entries of one case do not count in the next.
    const f = forwarder();
    const port = 5000 + ++limitCase;
    const svc = natService(extra, 3, "udp");
    svc.service.listen = `${VIP}:${port}`;
    await f.apply(labSnapshot(50, { lim: svc }));
    expect(f.status("lim")).toMatchObject({ programmed: true, reason: null });
    const base = 46000 + limitCase * 100;
    const got = await lab.flows("udp", ports(base, 40), { port, concurrency: 40 });
    const n = [...got.values()].filter((a) => /^b[012] /.test(a)).length;
    expect(answered(n), `${n} of 40 flows answered`).toBe(true);
  });

  it("affinity: clients are learned from conntrack events, programmed as map elements, and keep their backend through a backend add", async () => {
    const entries = new Map<string, string>();
    const f = new KernelForwarder({
      cluster: "lab",
      log,
      runner: nftRunner({ netns: lab.lb.name }),
      conntrack: conntrackTool({ netns: lab.lb.name }),
      netns: lab.lb.name,
      affinityOf: () => entries,
      learn: (_svc, client, target) => entries.set(client, target.id),
      affinitySyncMs: 100,
    });
    forwarders.push(f);
    const two = natService({ affinity: { mode: "source-ip", ttl: "10m" }, algorithm: undefined }, 2);
    await f.apply(labSnapshot(60, { aff: two }));
    const first = await lab.flows("tcp", ports(47000, 10));
    const backend = [...first.values()][0].split(" ")[0];
    // source-ip hashing: all of the client's flows land on one backend, and the watcher learns it.
    expect(new Set([...first.values()].map((a) => a.split(" ")[0]))).toEqual(new Set([backend]));
    await waitFor(() => entries.get(CLIENT) === backend, { message: "affinity entry learned from conntrack" });
    // The entry reaches the kernel map (the periodic re-apply).
    await waitFor(async () => (await lab.lb.run("nft", ["list", "map", "inet", "ballast_lab", "s_aff_aff"])).includes(CLIENT), { message: "entry programmed" });
    // Adding a backend changes the table size (and so every flow's slot); the entry keeps the client.
    const three = natService({ affinity: { mode: "source-ip", ttl: "10m" }, algorithm: undefined }, 3);
    const snap3 = labSnapshot(61, { aff: three });
    await f.apply(snap3);
    const after = await lab.flows("tcp", ports(47100, 10));
    expect(new Set([...after.values()].map((a) => a.split(" ")[0]))).toEqual(new Set([backend]));
    // The entry decides before the hash: bind the client to a backend the hash would not choose.
    const hashed = explainNat(snap3.services.get("aff")!, f.seed, CLIENT, 0).backend!.id;
    const other = ["b0", "b1", "b2"].find((b) => b !== hashed)!;
    entries.set(CLIENT, other);
    await f.apply(labSnapshot(62, { aff: three }));
    const bound = await lab.flows("tcp", ports(47200, 10));
    expect(new Set([...bound.values()].map((a) => a.split(" ")[0]))).toEqual(new Set([other]));
  });

  it("counters: per-backend bytes from nft counters and tracked flows from conntrack land in the stats registry", async () => {
    const stats = new StatsRegistry();
    const f = counting(stats);
    // Its own service port: flows of other tests to port 80 must not count here.
    const own = natOn(81);
    const snap = labSnapshot(70, { web: own });
    await f.apply(snap);
    const held = await lab.hold(ports(48000, 12), 81);
    const answers = await held.ask();
    await f.collectCounters();
    const svc = snap.services.get("web")!;
    for (const b of ["b0", "b1", "b2"]) {
      const mine = [...answers.values()].filter((a) => a.startsWith(`${b} `)).length;
      const c = stats.backend("web", b);
      // Held flows are tracked: the gauge counts exactly this test's connections to the backend.
      expect(c.active, b).toBe(mine);
      if (mine > 0) {
        expect(c.bytesIn, b).toBeGreaterThan(0);
        expect(c.bytesOut, b).toBeGreaterThan(0);
      }
    }
    expect(stats.service("web").bytesIn).toBe(svc.backends.reduce((n, b) => n + stats.backend("web", b.id).bytesIn, 0));
    held.close();
    // Closed flows stay tracked (TIME_WAIT, 2 min) but are not open: the gauges go back to 0.
    await waitFor(async () => {
      await f.collectCounters();
      return ["b0", "b1", "b2"].every((b) => stats.backend("web", b).active === 0);
    }, { message: "closed flows no longer counted as open" });
  });

  it("counters: two services on one backend count apart; removing a backend, then a service, keeps the rest counting", async () => {
    const stats = new StatsRegistry();
    const f = counting(stats);
    // Both services send to the same backend addresses and port: only the service's VIP port tells their packets apart.
    const a = natOn(83);
    const b = natOn(84);
    await f.apply(labSnapshot(90, { a, b }));
    const bytes = (svc: string) => ["b0", "b1", "b2"].reduce((n, id) => n + stats.backend(svc, id).bytesIn, 0);
    const held = await lab.hold(ports(48100, 6), 83);
    await held.ask();
    held.close();
    await f.collectCounters();
    expect(bytes("a")).toBeGreaterThan(0);
    expect(bytes("b")).toBe(0);
    // A delta that drops a's b2 (its counters and their map elements) and then one that drops b.
    const fewer = natOn(83, 2);
    await f.apply(labSnapshot(91, { a: fewer, b }));
    expect(f.stats.lastError).toBeNull();
    await f.apply(labSnapshot(92, { a: fewer }));
    expect(f.stats.lastError).toBeNull();
    expect(f.status("a")).toEqual({ programmed: true, reason: null, revision: 92 });
    const before = bytes("a");
    const again = await lab.hold(ports(48200, 6), 83);
    const answers = await again.ask();
    again.close();
    expect([...answers.values()].every((x) => !x.startsWith("b2 ")), "no flow reaches the removed backend").toBe(true);
    await f.collectCounters();
    expect(bytes("a")).toBeGreaterThan(before);
  });

  it("counters: a slow read of the connection table spaces the next read to 20× its duration", async () => {
    const real = conntrackTool({ netns: lab.lb.name });
    // A table so large that listing it takes 60 ms (a busy node's conntrack holds 10^5–10^6 flows).
    const slow: ConntrackTool = { ...real, flowsByBackend: async (flt) => { await new Promise((r) => setTimeout(r, 60)); return real.flowsByBackend(flt); } };
    const f = new KernelForwarder({ cluster: "lab", log, runner: nftRunner({ netns: lab.lb.name }), conntrack: slow, stats: new StatsRegistry(), countersEveryMs: 100 });
    forwarders.push(f);
    const own = natService();
    own.service.listen = `${VIP}:82`;
    await f.apply(labSnapshot(71, { web: own }));
    // The first read is due after the configured 100 ms; it takes ≥ 60 ms, so the next waits ≥ 1.2 s.
    await waitFor(() => f.lastCountersMs >= 60 && f.nextCountersMs >= 20 * f.lastCountersMs, { message: "read spaced by its duration" });
    expect(f.nextCountersMs).toBeGreaterThan(100);
  });

  it("IPv6: 200 TCP flows through an IPv6 VIP reach the backend the TypeScript jhash predicts", async () => {
    await lab.client.addAddress("eth0", "fd77:1::2/64");
    await lab.lb.addAddress("c0", "fd77:1::1/64");
    await lab.lb.addAddress("eth0", "fd77:2::1/64");
    await lab.client.addRoute("default", "fd77:1::1");
    for (const [i, b] of lab.backends.entries()) await b.addAddress("eth0", `fd77:2::${10 + i}/64`);
    const b6: Record<string, Record<string, unknown>> = {};
    for (let i = 0; i < 3; i++) b6[`b${i}`] = { address: `fd77:2::${10 + i}`, port: 8080 };
    const f = forwarder();
    const snap = labSnapshot(80, { web6: { service: { listen: "[fd77:9::1]:80", forwarding: "nat" }, backends: b6 } });
    await f.apply(snap);
    expect(f.status("web6")).toMatchObject({ programmed: true, reason: null });
    const js = `const net = require("net"); const out = []; Promise.all(${JSON.stringify(ports(49000, 200))}.map((lp) => new Promise((res) => {
      const s = net.connect({ host: "fd77:9::1", port: 80, localPort: lp, localAddress: "fd77:1::2" }); let b = "";
      const t = setTimeout(() => { s.destroy(); res(lp + " timeout"); }, 5000);
      s.on("data", (d) => { b += d; if (b.includes("\\n")) { clearTimeout(t); s.resetAndDestroy(); res(lp + " " + b.trim()); } });
      s.on("error", (e) => { clearTimeout(t); res(lp + " error:" + e.code); }); }))).then((r) => process.stdout.write(r.join("\\n")));`;
    const out = await lab.client.run(process.execPath, ["-e", js], 60_000);
    const svc = snap.services.get("web6")!;
    const wrong: string[] = [];
    for (const line of out.split("\n")) {
      const [p, name, from] = line.split(" ");
      if (explainNat(svc, f.seed, "fd77:1::2", Number(p)).backend?.id !== name || from !== "fd77:2::1") wrong.push(line);
    }
    expect(wrong).toEqual([]);
  });

  it("drain: tracked flows stay until timeouts.drain, then they are removed", async () => {
    const f = forwarder();
    const svc = natService({ timeouts: { drain: "1500ms" } });
    await f.apply(labSnapshot(90, { web: svc }));
    const held = await lab.hold(ports(49500, 24));
    const before = await held.ask();
    const onB0 = [...before].filter(([, a]) => a.startsWith("b0")).map(([p]) => p);
    expect(onB0.length).toBeGreaterThan(0);
    const drained = natService({ timeouts: { drain: "1500ms" } });
    drained.backends.b0.state = "drain";
    await f.apply(labSnapshot(91, { web: drained }));
    // Still open right after the drain started.
    const during = await held.ask();
    for (const p of onB0) expect(during.get(p)).toBe(before.get(p));
    const removed = f.state().flowsRemoved;
    await waitFor(() => f.state().flowsRemoved > removed, { timeoutMs: 10_000, message: "drain timeout removed b0's flows" });
    const after = await held.ask();
    for (const p of onB0) expect(after.get(p)).toMatch(/^error:ECONNRESET|^closed$/);
    // Connections to the other backends are untouched.
    for (const [p, a] of before) if (!a.startsWith("b0")) expect(after.get(p)).toBe(a);
    held.close();
  });
});
