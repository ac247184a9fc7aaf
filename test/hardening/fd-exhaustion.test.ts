// Issue 13 (part A), finding 1: local descriptor exhaustion must not become a cluster-wide outage.
// A real `ballast node` child runs with a low RLIMIT_NOFILE (prlimit) against a real etcd, as the
// health leader; the test floods it on loopback and reads the verdicts straight from etcd:
// - UDP from many source ports and held TCP connections are refused past the fd budget, so probes
//   keep their descriptors, no `down` verdict is written and the node stays leader and ready;
// - descriptors spent outside what the budget knows (the limit lowered under the running node with
//   prlimit --pid) make probes fail with EMFILE: that is not a verdict; the starved leader steps down.
import { execFileSync } from "node:child_process";
import dgram from "node:dgram";
import { readdirSync } from "node:fs";
import net from "node:net";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { decodeValue } from "../../shared/codec.js";
import { closeAllBackends, startTcpEcho, startUdpEcho } from "../helpers/backends.js";
import { type EtcdProcess, startEtcd } from "../helpers/etcd.js";
import { type NodeProcess, spawnNode } from "../helpers/node.js";
import { waitFor } from "../helpers/wait.js";

const NOFILE = 256;
let etcd: EtcdProcess;
let proc: NodeProcess | null = null;
const opened: Array<net.Socket | dgram.Socket> = [];

beforeAll(async () => {
  etcd = await startEtcd();
});
afterAll(async () => {
  await etcd?.stop();
});
afterEach(async () => {
  for (const s of opened.splice(0)) {
    if (s instanceof net.Socket) s.destroy();
    else s.close();
  }
  proc?.kill("SIGKILL");
  proc = null;
  await closeAllBackends();
});

async function verdicts(cluster: string): Promise<Array<{ key: string; state: string; reason: string }>> {
  const out = JSON.parse(await etcd.etcdctl("get", "--prefix", `/ballast/${cluster}/health/verdicts/`, "-w", "json")) as { kvs?: Array<{ key: string; value: string }> };
  return (out.kvs ?? []).map((kv) => {
    const v = decodeValue(Buffer.from(kv.value, "base64")) as { state: string; reason: string };
    return { key: Buffer.from(kv.key, "base64").toString(), state: v.state, reason: v.reason };
  });
}

async function api<T>(admin: string, path: string): Promise<T> {
  return (await (await fetch(`http://${admin}${path}`)).json()) as T;
}

/** A node under a low descriptor limit, health leader of `cluster`, with a UDP and a TCP service checked every 100 ms (fall 2). */
async function starvedLeader(cluster: string): Promise<{ proc: NodeProcess; udpPort: number; tcpPort: number }> {
  const udp = await startUdpEcho("u");
  const tcp = await startTcpEcho("t");
  // A generous timeout: the echo backends live in this busy test process; EMFILE fails at once anyway.
  const health = (type: string) => ({ type, interval: "100ms", timeout: "3s", rise: 1, fall: 2 });
  const p = `/ballast/${cluster}/`;
  await etcd.put(`${p}services/dns`, JSON.stringify({ listen: "127.0.0.1:0", protocol: "udp", health: health("udp"), timeouts: { udpIdle: "10m" } }));
  await etcd.put(`${p}backends/dns/a`, `127.0.0.1:${udp.port}`);
  await etcd.put(`${p}services/web`, JSON.stringify({ listen: "127.0.0.1:0", health: health("tcp") }));
  await etcd.put(`${p}backends/web/a`, `127.0.0.1:${tcp.port}`);
  proc = await spawnNode(
    { node: { id: "n1" }, cluster, etcd: { endpoints: [etcd.endpoint], leaseTtl: 2 } },
    { wrapper: ["prlimit", `--nofile=${NOFILE}:${NOFILE}`, "--"] },
  );
  const admin = proc.admin;
  await waitFor(async () => (await api<{ health: { isLeader: boolean } }>(admin, "/api/state")).health.isLeader, { message: "n1 leads" });
  await waitFor(async () => (await verdicts(cluster)).filter((v) => v.state === "up").length === 2, { message: "both backends verdicted up" });
  const state = await api<{ services: Array<{ name: string; boundPort: number }> }>(admin, "/api/state");
  const port = (name: string) => state.services.find((s) => s.name === name)!.boundPort;
  return { proc, udpPort: port("dns"), tcpPort: port("web") };
}

/** Watches etcd for `ms`: fails at once if any verdict turns down. */
async function expectNoDownVerdict(cluster: string, ms: number): Promise<void> {
  const until = Date.now() + ms;
  while (Date.now() < until) {
    const down = (await verdicts(cluster)).filter((v) => v.state !== "up");
    expect(down).toEqual([]);
    await new Promise((r) => setTimeout(r, 100));
  }
}

function holdTcp(port: number, n: number): Promise<void> {
  const all: Promise<void>[] = [];
  for (let i = 0; i < n; i++) {
    const s = net.connect({ host: "127.0.0.1", port });
    s.on("error", () => {});
    opened.push(s);
    all.push(new Promise((r) => { s.once("connect", () => r()); s.once("close", () => r()); }));
  }
  return Promise.all(all).then(() => {});
}

describe("descriptor exhaustion on the health leader", () => {
  it("a UDP and TCP flood is refused past the fd budget: no down verdict, still leader and ready", async () => {
    const { proc: p, udpPort, tcpPort } = await starvedLeader("fdflood");
    // One flow per source port: each would cost the node one descriptor.
    for (let i = 0; i < 400; i++) {
      const s = dgram.createSocket("udp4");
      opened.push(s);
      s.send("x", udpPort, "127.0.0.1");
    }
    await holdTcp(tcpPort, 200);
    // Before the fix, the flood spent every descriptor, probes failed with EMFILE and the leader
    // wrote `down` for both backends within a probe interval: every node stopped routing.
    await expectNoDownVerdict("fdflood", 3_000);
    await waitFor(async () => /ballast_connections_refused_total\{[^}]*reason="fd-budget"[^}]*\} [1-9]/.test(await (await fetch(`http://${p.admin}/metrics`)).text()), {
      message: "fd-budget refusals",
    });
    expect((await fetch(`http://${p.admin}/readyz`)).status).toBe(200);
    expect((await api<{ health: { isLeader: boolean } }>(p.admin, "/api/state")).health.isLeader).toBe(true);
  });

  it("probes failing with EMFILE are no verdict: the starved leader steps down", async () => {
    const { proc: p, udpPort } = await starvedLeader("fdstarve");
    // Descriptors spent outside what the budget knows: the limit is lowered under the running node
    // (prlimit --pid) to just above what it holds, so the flows it still admits use up the rest.
    const pid = p.child.pid!;
    const held = readdirSync(`/proc/${pid}/fd`).length;
    execFileSync("prlimit", ["--pid", String(pid), `--nofile=${held + 8}:${NOFILE}`]);
    const clients: dgram.Socket[] = [];
    for (let i = 0; i < 60; i++) {
      const s = dgram.createSocket("udp4");
      opened.push(s);
      clients.push(s);
    }
    // Each round re-sends from every client: a client whose flow could not get a socket (no-socket)
    // tries again, so a descriptor a probe frees is taken by a flow before the next probe. One flood
    // alone left the race open: a probe socket counted in `held` closed after the flood and gave the
    // next probes one free descriptor for good (1 run in 4 never stepped down).
    const flood = () => { for (const s of clients) s.send("x", udpPort, "127.0.0.1"); };
    flood();
    await expectNoDownVerdict("fdstarve", 3_000);
    await waitFor(() => { flood(); return p.logs.some((l) => l.includes("local resource shortage")); }, { message: "the leader steps down for the shortage" });
    const stepDown = JSON.parse(p.logs.find((l) => l.includes("local resource shortage"))!) as { msg: string; reason: string };
    expect(stepDown.msg).toBe("health-check leader stepped down");
    expect(stepDown.reason).toMatch(/EMFILE|ENFILE/);
    // Descriptors back: the node lives on, and nothing was written.
    execFileSync("prlimit", ["--pid", String(pid), `--nofile=${NOFILE}:${NOFILE}`]);
    await waitFor(async () => (await fetch(`http://${p.admin}/readyz`)).status === 200, { message: "admin answers" });
    expect((await verdicts("fdstarve")).map((v) => v.state)).toEqual(["up", "up"]);
  });
});

describe("the fd budget", () => {
  it("reads the soft limit from /proc/self/limits and keeps headroom and reserves out of the data plane", async () => {
    const { FdBudget, readFdLimit } = await import("../../node/model/fd-budget.js");
    const { mkdtempSync, writeFileSync } = await import("node:fs");
    const { join } = await import("node:path");
    const { tmpdir } = await import("node:os");
    const limits = join(mkdtempSync(join(tmpdir(), "ballast-limits-")), "limits");
    writeFileSync(limits, "Limit                     Soft Limit           Hard Limit           Units\nMax open files            1024                 524288               files\n");
    expect(readFdLimit(limits)).toBe(1024);
    writeFileSync(limits, "Max open files            unlimited            unlimited            files\n");
    expect(readFdLimit(limits)).toBe(Number.POSITIVE_INFINITY);

    const b = new FdBudget(1000, 40);
    expect(b.headroom).toBe(100);
    expect(b.capacity).toBe(860);
    b.reserve("probes", 60);
    expect(b.capacity).toBe(800);
    expect(b.take(799)).toBe(true);
    expect(b.take(2)).toBe(false);
    b.release(1);
    expect(b.take(2)).toBe(true);
    expect(b.inUse).toBe(800);
  });
});
