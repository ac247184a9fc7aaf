// Observer quorum (issue 17) with the real network: three Ballast node processes, each in its own
// network namespace, one etcd (in a namespace too) and the backends in another. A backend is made
// unreachable from one node only by an nft drop rule inside that node's namespace (the host's
// ruleset is never touched): it stays up cluster-wide and is shown partial, the node that cannot
// reach it avoids it; unreachable from a majority it goes down; a dead observer is replaced.
import type { ChildProcess } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { stringify } from "yaml";
import { type Namespace, netnsUnavailable, Topology } from "../helpers/netns.js";
import { CLI } from "../helpers/node.js";
import { waitFor } from "../helpers/wait.js";

const skip = netnsUnavailable();
const NET = "10.79.0";
const ETCD = `http://${NET}.5:2379`;
const BACKENDS = `${NET}.21`;
const NODES = ["n1", "n2", "n3"].map((id, i) => ({ id, address: `${NET}.${11 + i}` }));
const HEALTH = { type: "tcp", interval: "200ms", timeout: "150ms", rise: 2, fall: 2, jitter: 0 };
/** fall × interval + timeout, plus the observer's batch and etcd round trips: generous on a busy machine. */
const DOWN_BOUND_MS = 15_000;

/** A TCP server per port that answers its name. */
const BACKEND_JS = `const net = require("net"); for (const [port, name] of JSON.parse(process.argv[1])) net.createServer((s) => { s.on("error", () => {}); s.end(name + "\\n"); }).listen(port, "0.0.0.0");`;
/** N connections to host:port, one after the other; prints each answer (or the error). */
const CONNECT_JS = `
const net = require("net"); const [host, port, n] = process.argv.slice(1); const out = [];
(async () => { for (let i = 0; i < Number(n); i++) out.push(await new Promise((res) => { const s = net.connect({ host, port: Number(port) }); let b = "";
  const t = setTimeout(() => { s.destroy(); res("timeout"); }, 5000);
  s.on("data", (d) => (b += d)); s.on("end", () => { clearTimeout(t); res(b.trim()); }); s.on("error", (e) => { clearTimeout(t); res("error:" + e.code); }); }));
  process.stdout.write(out.join("\\n")); })();
`;

// biome-ignore lint/suspicious/noExplicitAny: JSON from the admin API, read field by field in assertions
type Json = any;

describe.skipIf(skip !== null)("observer quorum: three nodes in namespaces, one etcd", { timeout: 240_000 }, () => {
  let topo: Topology;
  let etcdNs: Namespace;
  const nodeNs: Namespace[] = [];
  const procs: ChildProcess[] = [];
  const logs: string[][] = [[], [], []];
  const dirs: string[] = [];
  const dead = new Set<number>();

  const etcdctl = (...args: string[]) => etcdNs.run("etcdctl", ["--endpoints", ETCD, ...args]);
  const get = async (node: number, path: string): Promise<Json> =>
    JSON.parse(await etcdNs.run(process.execPath, ["-e", `fetch("http://${NODES[node].address}:9090${path}").then((r) => r.text()).then((t) => process.stdout.write(t))`]));
  const backendOf = async (node: number, service: string, id: string): Promise<Json> => {
    const st = await get(node, "/api/state");
    return (st.services as Json[]).find((s) => s.name === service)?.backends.find((b: Json) => b.id === id);
  };
  const live = () => [0, 1, 2].filter((i) => !dead.has(i));
  const leaderIndex = async (): Promise<number> => {
    let idx = -1;
    await waitFor(async () => {
      const st = await get(live()[0], "/api/state");
      idx = NODES.findIndex((n) => n.id === st.health.leader);
      return idx >= 0 && !dead.has(idx);
    }, { timeoutMs: 30_000, intervalMs: 300, message: "a health leader" });
    return idx;
  };
  /** Drops this node's packets to one backend port, inside the node's own namespace. */
  const block = async (node: number, port: number) => {
    await nodeNs[node].run("nft", ["add table inet quorumtest"]);
    await nodeNs[node].run("nft", ["add chain inet quorumtest out { type filter hook output priority 0 ; }"]);
    await nodeNs[node].run("nft", [`add rule inet quorumtest out ip daddr ${BACKENDS} tcp dport ${port} drop`]);
  };
  const unblock = async (node: number) => {
    await nodeNs[node].exec("nft", ["delete table inet quorumtest"]);
  };
  const startNode = (i: number) => {
    const dir = mkdtempSync(join(tmpdir(), "ballast-quorum-"));
    dirs.push(dir);
    const file = join(dir, "node.yaml");
    writeFileSync(file, stringify({ node: { id: NODES[i].id }, cluster: "quorum", etcd: { endpoints: [ETCD], leaseTtl: 2 }, admin: { listen: `${NODES[i].address}:9090` }, log: { level: "info" }, accessLog: { enabled: false } }));
    const child = nodeNs[i].spawn(process.execPath, [CLI, "node", "--config", file], { stdio: ["ignore", "pipe", "pipe"] });
    child.stdout!.on("data", (d: Buffer) => logs[i].push(d.toString()));
    child.stderr!.on("data", (d: Buffer) => logs[i].push(d.toString()));
    procs[i] = child;
  };
  const tail = (i: number) => logs[i].join("").slice(-1500);

  beforeAll(async () => {
    topo = await Topology.create();
    etcdNs = await topo.namespace("etcd");
    await topo.attach(etcdNs, [`${NET}.5/24`]);
    const dataDir = mkdtempSync(join(tmpdir(), "ballast-quorum-etcd-"));
    dirs.push(dataDir);
    etcdNs.spawn("etcd", ["--data-dir", dataDir, "--listen-client-urls", ETCD, "--advertise-client-urls", ETCD, "--listen-peer-urls", `http://${NET}.5:2380`, "--initial-advertise-peer-urls", `http://${NET}.5:2380`, "--initial-cluster", `default=http://${NET}.5:2380`, "--log-level", "error"]);
    const b = await topo.namespace("backends");
    await topo.attach(b, [`${BACKENDS}/24`]);
    b.spawn(process.execPath, ["-e", BACKEND_JS, JSON.stringify([[8080, "b1"], [8081, "b2"], [8082, "r1"]])]);
    for (const [i, n] of NODES.entries()) {
      const ns = await topo.namespace(n.id);
      await topo.attach(ns, [`${n.address}/24`]);
      nodeNs[i] = ns;
    }
    await waitFor(async () => {
      await etcdctl("put", "/ballast/quorum/services/web", JSON.stringify({ listen: "0.0.0.0:8000", algorithm: "round-robin", health: HEALTH }));
      return true;
    }, { timeoutMs: 20_000, message: "etcd accepts writes" });
    await etcdctl("put", "/ballast/quorum/backends/web/b1", `${BACKENDS}:8080`);
    await etcdctl("put", "/ballast/quorum/backends/web/b2", `${BACKENDS}:8081`);
    // K = 2 of three nodes: the leader and one observer, so a dead observer has a successor.
    await etcdctl("put", "/ballast/quorum/services/rot", JSON.stringify({ listen: "0.0.0.0:8001", health: { ...HEALTH, observers: 2 } }));
    await etcdctl("put", "/ballast/quorum/backends/rot/r1", `${BACKENDS}:8082`);
    for (const i of [0, 1, 2]) startNode(i);
    // Every backend decided by a full quorum: three observers voting pass.
    for (const i of [0, 1, 2]) {
      await waitFor(async () => {
        const v = (await backendOf(i, "web", "b2"))?.verdict;
        return v?.state === "up" && v.quorum === "ok" && Object.values(v.votes ?? {}).filter((x) => x === "pass").length === 3;
      }, { timeoutMs: 90_000, intervalMs: 300, message: `node ${i} sees b2 up by three votes` }).catch((err: Error) => {
        throw new Error(`${err.message}\n${[0, 1, 2].map(tail).join("\n---\n")}`);
      });
    }
  }, 240_000);
  afterAll(async () => {
    await topo?.destroy();
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
  });

  it("a backend unreachable from the leader alone stays up everywhere, shown partial; the leader avoids it", async () => {
    const leader = await leaderIndex();
    await block(leader, 8081);
    await waitFor(async () => {
      const v = (await backendOf((leader + 1) % 3, "web", "b2"))?.verdict;
      return v?.partial === true && v.votes[NODES[leader].id] === "fail";
    }, { timeoutMs: DOWN_BOUND_MS, intervalMs: 200, message: `b2 partial (leader log: ${tail(leader)})` });
    for (const i of [0, 1, 2]) {
      const b = await backendOf(i, "web", "b2");
      expect(b.verdict.state).toBe("up");
      expect(b.routable).toBe(true);
      expect(b.verdict.reason).toContain(`fails only from ${NODES[leader].id}`);
      expect(Object.values(b.verdict.votes).sort()).toEqual(["fail", "pass", "pass"]);
    }
    // Past the down bound it is still up on every node: one node's bad path is no cluster verdict.
    const until = Date.now() + 3_000;
    while (Date.now() < until) {
      for (const i of [0, 1, 2]) expect((await backendOf(i, "web", "b2")).verdict.state).toBe("up");
    }
    // The leader steers its own new connections around it; the other nodes still use it.
    const onLeader = await backendOf(leader, "web", "b2");
    expect(onLeader.ejected).toBe(true);
    const other = (leader + 1) % 3;
    expect((await backendOf(other, "web", "b2")).ejected).toBe(false);
    const route = await get(leader, "/api/route?service=web&client=10.1.2.3");
    expect(route.avoided).toEqual(["b2"]);
    const through = (await etcdNs.run(process.execPath, ["-e", CONNECT_JS, NODES[leader].address, "8000", "6"])).split("\n");
    expect(through).toEqual(Array(6).fill("b1"));
    const elsewhere = (await etcdNs.run(process.execPath, ["-e", CONNECT_JS, NODES[other].address, "8000", "6"])).split("\n");
    expect(new Set(elsewhere)).toEqual(new Set(["b1", "b2"]));
    const metrics = await etcdNs.run(process.execPath, ["-e", `fetch("http://${NODES[other].address}:9090/metrics").then((r) => r.text()).then((t) => process.stdout.write(t))`]);
    expect(metrics).toMatch(/ballast_backend_verdict_partial\{[^}]*backend="b2"[^}]*\} 1/);
    expect(metrics).toMatch(/ballast_backend_verdict_votes\{[^}]*backend="b2"[^}]*vote="fail"[^}]*\} 1/);
  });

  it("unreachable from a majority: down on every node within the bound; back up when the path returns", async () => {
    const leader = await leaderIndex();
    const second = (leader + 1) % 3;
    const started = Date.now();
    await block(second, 8081);
    for (const i of [0, 1, 2]) {
      await waitFor(async () => (await backendOf(i, "web", "b2"))?.verdict?.state === "down", { timeoutMs: DOWN_BOUND_MS, intervalMs: 100, message: `b2 down on node ${i} (log: ${tail(leader)})` });
    }
    console.log(`[quorum] blocked from a majority → down on all three nodes after ${Date.now() - started} ms`);
    const v = (await backendOf(leader, "web", "b2")).verdict;
    expect(v.quorum).toBe("ok");
    expect(v.votes[NODES[leader].id]).toBe("fail");
    expect(v.votes[NODES[second].id]).toBe("fail");
    expect(v.reason).toContain("(a majority of 3 observers fail)");
    await unblock(leader);
    await unblock(second);
    for (const i of [0, 1, 2]) {
      await waitFor(async () => {
        const b = await backendOf(i, "web", "b2");
        return b?.verdict?.state === "up" && !b.verdict.partial && b.ejected === false;
      }, { timeoutMs: DOWN_BOUND_MS, intervalMs: 100, message: `b2 up again on node ${i}` });
    }
  });

  it("observers rotate: when the chosen observer dies, the remaining node takes its place", async () => {
    const leader = await leaderIndex();
    let observer = -1;
    await waitFor(async () => {
      const v = (await backendOf(leader, "rot", "r1"))?.verdict;
      const ids = Object.keys(v?.votes ?? {});
      observer = NODES.findIndex((n) => n.id === ids[1]);
      return ids.length === 2 && ids[0] === NODES[leader].id && v.votes[ids[1]] === "pass";
    }, { timeoutMs: 20_000, intervalMs: 200, message: "rot decided by the leader and one observer" });
    const third = [0, 1, 2].find((i) => i !== leader && i !== observer)!;
    expect((await get(observer, "/api/state")).health.observing).toContain("rot");
    expect((await get(third, "/api/state")).health.observing).not.toContain("rot");
    procs[observer].kill("SIGKILL");
    dead.add(observer);
    await waitFor(async () => {
      const v = (await backendOf(leader, "rot", "r1"))?.verdict;
      return v?.votes?.[NODES[third].id] === "pass" && !(NODES[observer].id in v.votes);
    }, { timeoutMs: 20_000, intervalMs: 200, message: `node ${NODES[third].id} replaces ${NODES[observer].id} as rot's observer (log: ${tail(leader)})` });
    expect((await get(third, "/api/state")).health.observing).toContain("rot");
    const v = (await backendOf(third, "rot", "r1")).verdict;
    expect(v.state).toBe("up");
    expect(v.quorum).toBe("ok");
  });
});
