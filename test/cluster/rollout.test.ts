// Coordinated drain and rolling restart (issue 17, part 2) against real etcd and three real node
// processes: a drain key the node obeys and that survives its restart, the drain guard (refusal,
// --max-unavailable, a race with exactly one winner), and `ballast rollout restart` under steady TCP
// load (0 failed connections, at most one node out at any moment, resumable, stops at a node that
// does not come back). Nodes bind 127.0.0.1/.2/.3 on one fixed port, so a restarted node serves
// where it served before; the load client follows the node records as a DNS client would.
import { type ChildProcess, spawn } from "node:child_process";
import http from "node:http";
import net from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { RolloutView } from "../../shared/api.js";
import { parseRolloutValue, RESTART_EXIT_CODE } from "../../shared/rollout.js";
import { EtcdStore } from "../../node/control/etcd-store.js";
import { drainNode, undrainNode } from "../../node/rollout/guard.js";
import { type Backend, startTcpEcho } from "../helpers/backends.js";
import { type EtcdProcess, startEtcd } from "../helpers/etcd.js";
import { CLI } from "../helpers/node.js";
import { NodeCluster } from "../helpers/node-cluster.js";
import { waitFor as waitForBase } from "../helpers/wait.js";

/** The machine is shared and may be loaded: conditions get 30 s unless a test says otherwise (no speed is asserted). */
const waitFor: typeof waitForBase = (cond, opts = {}) => waitForBase(cond, { timeoutMs: 30_000, ...opts });
const WITHDRAW_DELAY_MS = 800;
let etcd: EtcdProcess;
let store: EtcdStore;
let backend: Backend;

beforeAll(async () => {
  etcd = await startEtcd();
  store = new EtcdStore({ endpoints: [etcd.endpoint] });
  backend = await startTcpEcho("b");
});
afterAll(async () => {
  await store?.close();
  await backend?.close();
  await etcd?.stop();
});

/** A port free on 127.0.0.1, .2 and .3 (each node binds its own address on it). */
async function freePortOnAll(): Promise<number> {
  for (let attempt = 0; attempt < 20; attempt++) {
    const probe = net.createServer();
    const port = await new Promise<number>((r) => probe.listen(0, "127.0.0.1", () => r((probe.address() as net.AddressInfo).port)));
    await new Promise((r) => probe.close(r));
    let free = true;
    for (const host of ["127.0.0.1", "127.0.0.2", "127.0.0.3"]) {
      const s = net.createServer();
      const ok = await new Promise<boolean>((r) => {
        s.once("error", () => r(false));
        s.listen(port, host, () => r(true));
      });
      if (ok) await new Promise((r) => s.close(r));
      free &&= ok;
    }
    if (free) return port;
  }
  throw new Error("no port free on 127.0.0.1-3");
}

/** Three node processes of one cluster, respawnable on the same address and port. */
class Cluster extends NodeCluster {
  port = 0;
  constructor(name: string) {
    super(name, {
      etcdEndpoint: etcd.endpoint,
      store,
      config: (id) => ({
        node: { id, bindAddress: `127.0.0.${Number(id.slice(1))}` },
        cluster: name,
        etcd: { endpoints: [etcd.endpoint], leaseTtl: 2 },
        withdrawDelay: `${WITHDRAW_DELAY_MS}ms`,
        drainTimeout: "10s",
        accessLog: { enabled: false },
      }),
    });
  }

  async start(): Promise<void> {
    this.port = await freePortOnAll();
    await etcd.put(this.keys.service("web"), JSON.stringify({ listen: `127.0.0.1:${this.port}`, health: { type: "none" } }));
    await etcd.put(this.keys.backend("web", "b"), `127.0.0.1:${backend.port}`);
    await Promise.all(["n1", "n2", "n3"].map((id) => this.spawn(id)));
    await waitFor(async () => (await this.records()).filter((r) => r.ready).length === 3, { timeoutMs: 60_000, message: "three ready nodes" });
  }

  async rollout(): Promise<RolloutView | null> {
    const kv = await store.get(this.keys.rolloutState);
    return kv ? parseRolloutValue(kv.value) : null;
  }
}

/** Whether a new connection to host:port is refused (the node's listener is closed). */
function refused(host: string, port: number): Promise<boolean> {
  return connect(host, port).then(
    (s) => {
      s.destroy();
      return false;
    },
    () => true,
  );
}

/** Connects to host:port; resolves with the socket once connected. */
function connect(host: string, port: number): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const s = net.connect({ host, port });
    s.once("connect", () => resolve(s));
    s.once("error", reject);
  });
}

/** Writes `data` and resolves with the echo (the backend prefixes "b:" once). */
function echo(s: net.Socket, data: string, expect: string, timeoutMs = 10_000): Promise<void> {
  return new Promise((resolve, reject) => {
    let got = "";
    const timer = setTimeout(() => done(new Error(`no echo of ${data}; got ${JSON.stringify(got)}`)), timeoutMs);
    const onData = (d: Buffer) => {
      got += d.toString();
      if (got.endsWith(expect)) done(null);
    };
    const onErr = (err: Error) => done(err);
    const done = (err: Error | null) => {
      clearTimeout(timer);
      s.off("data", onData);
      s.off("error", onErr);
      if (err) reject(err);
      else resolve();
    };
    s.on("data", onData);
    s.once("error", onErr);
    s.write(data);
  });
}

/**
 * Steady TCP load through the nodes, as a DNS-following client: each connection goes to a node whose
 * record says ready and not draining (read from etcd every 100 ms), sends, holds ~300 ms, checks the
 * echo, closes. Counts per node; a failure is kept with its node and error.
 */
class Load {
  private live: string[] = [];
  private stopped = false;
  readonly ok = new Map<string, number>();
  readonly failures: string[] = [];
  private running: Promise<void>[] = [];

  constructor(private readonly cluster: Cluster) {}

  start(): void {
    const view = async () => {
      while (!this.stopped) {
        try {
          this.live = (await this.cluster.records()).filter((r) => r.ready && !r.draining).map((r) => r.id);
        } catch {
          // etcd answered nothing this time: keep the last view, as a DNS cache would
        }
        await new Promise((r) => setTimeout(r, 100));
      }
    };
    this.running.push(view());
    for (let w = 0; w < 6; w++) this.running.push(this.worker(w));
  }

  private async worker(w: number): Promise<void> {
    let i = 0;
    while (!this.stopped && i < 100_000) {
      i++;
      const live = this.live;
      if (live.length === 0) {
        await new Promise((r) => setTimeout(r, 50));
        continue;
      }
      const id = live[(i + w) % live.length];
      const host = `127.0.0.${Number(id.slice(1))}`;
      try {
        const s = await connect(host, this.cluster.port);
        try {
          await echo(s, `${w}-${i};`, `${w}-${i};`);
          await new Promise((r) => setTimeout(r, 300));
          await echo(s, "z", "z");
        } finally {
          s.destroy();
        }
        this.ok.set(id, (this.ok.get(id) ?? 0) + 1);
      } catch (err) {
        this.failures.push(`${id}: ${(err as Error).message}`);
      }
    }
  }

  async stop(): Promise<void> {
    this.stopped = true;
    await Promise.all(this.running);
  }
}

/** Nodes out (drain key, no record, or not ready), sampled every 50 ms: the most seen at once. */
class OutMonitor {
  max = 0;
  samples = 0;
  private stopped = false;
  private loop: Promise<void> | null = null;
  constructor(private readonly cluster: Cluster) {}
  start(): void {
    this.loop = (async () => {
      while (!this.stopped) {
        try {
          const [records, drains] = await Promise.all([this.cluster.records(), this.cluster.drains()]);
          const out = new Set(drains);
          for (const id of ["n1", "n2", "n3"]) {
            const r = records.find((x) => x.id === id);
            if (!r?.ready) out.add(id);
          }
          this.max = Math.max(this.max, out.size);
          this.samples++;
        } catch {
          // a failed read is no sample
        }
        await new Promise((r) => setTimeout(r, 50));
      }
    })();
  }
  async stop(): Promise<void> {
    this.stopped = true;
    await this.loop;
  }
}

/** The test's restart hook endpoint: `GET /restart/<node>` kills the node process and, unless told not to, spawns it again. */
async function restartServer(cluster: Cluster, opts: { noComeback?: string } = {}): Promise<{ port: number; restarted: string[]; close(): Promise<void> }> {
  const restarted: string[] = [];
  const server = http.createServer((req, res) => {
    const id = /^\/restart\/(n[123])$/.exec(req.url ?? "")?.[1];
    if (!id) {
      res.writeHead(404).end();
      return;
    }
    void (async () => {
      await cluster.kill(id);
      if (opts.noComeback !== id) await cluster.spawn(id);
      restarted.push(id);
      res.writeHead(200).end("restarted\n");
    })().catch((err: Error) => res.writeHead(500).end(err.message));
  });
  const port = await new Promise<number>((r) => server.listen(0, "127.0.0.1", () => r((server.address() as net.AddressInfo).port)));
  return { port, restarted, close: () => new Promise((r) => server.close(() => r())) };
}

function hookCommand(port: number): string {
  // Run by the CLI with sh -c; {node} becomes the quoted node id.
  return `${process.execPath} -e "fetch('http://127.0.0.1:${port}/restart/'+process.argv[1]).then(r=>process.exit(r.ok?0:1),()=>process.exit(2))" {node}`;
}

describe("coordinated drain", () => {
  it("a drain key makes the node unready at once, lets its connections finish, reports drained; it survives a restart; undrain serves again", { timeout: 240_000 }, async () => {
    const c = new Cluster("drain-obey");
    try {
      await c.start();
      const held = await connect("127.0.0.1", c.port);
      await echo(held, "one;", "one;");

      const r = await c.cli("node", "drain", "n1", "--reason", "kernel upgrade");
      expect(r.code, r.stderr).toBe(0);
      await waitFor(async () => (await c.readyz("n1")) === 503, { message: "n1 /readyz 503" });
      await waitFor(async () => (await c.record("n1"))?.draining === true, { message: "n1 record draining" });
      // Still draining while the held connection is open, which keeps working.
      // After withdrawDelay the listeners close: new connections are refused.
      await waitFor(() => refused("127.0.0.1", c.port), { message: "n1 listeners closed" });
      expect((await c.record("n1"))?.drain).toMatchObject({ state: "draining", openAtStart: 1 });
      await echo(held, "two;", "two;");
      held.end();
      await waitFor(async () => (await c.record("n1"))?.drain?.state === "drained", { message: "n1 drained" });
      const rec = (await c.record("n1"))!;
      expect(rec.drain).toMatchObject({ state: "drained", openAtStart: 1, open: 0 });
      expect(rec.ready).toBe(false);
      // The other nodes serve on.
      const other = await connect("127.0.0.2", c.port);
      await echo(other, "x;", "x;");
      other.destroy();

      // A drained node that restarts stays drained: the key is in etcd.
      const before = rec.startedAt;
      await c.kill("n1");
      await c.spawn("n1");
      await waitFor(async () => {
        const r2 = await c.record("n1");
        return r2 !== undefined && r2.startedAt > before && r2.drain?.state === "drained";
      }, { timeoutMs: 40_000, message: "restarted n1 registered drained" });
      expect(await c.readyz("n1")).toBe(503);
      expect(await refused("127.0.0.1", c.port)).toBe(true);

      expect((await c.cli("node", "undrain", "n1")).code).toBe(0);
      await waitFor(async () => (await c.readyz("n1")) === 200, { message: "n1 ready after undrain" });
      const back = await connect("127.0.0.1", c.port);
      await echo(back, "back;", "back;");
      back.destroy();
      const after = (await c.record("n1"))!;
      expect(after.drain).toBeUndefined();
      expect(after.draining).toBe(false);
      const status = await c.cli("status");
      expect(status.stdout).toMatch(/NODES[\s\S]*DRAIN/);
    } finally {
      await c.stop();
    }
  });

  it("the guard refuses a second drain naming the node already out, admits it with --max-unavailable 2, and --wait waits", { timeout: 240_000 }, async () => {
    const c = new Cluster("drain-guard");
    try {
      await c.start();
      expect((await c.cli("node", "drain", "n1")).code).toBe(0);
      const refused = await c.cli("node", "drain", "n2");
      expect(refused.code).toBe(1);
      expect(refused.stderr).toMatch(/drain of n2 refused: 1 node is already out \(n1: drained\)/);
      expect(await c.drains()).toEqual(["n1"]);
      await waitFor(async () => (await c.record("n2"))?.ready === true);
      // A rollout would undrain n1 at its end: it does not start over an operator's drain.
      const ro = await c.cli("rollout", "restart", "--restart-cmd", "false");
      expect(ro.code).toBe(1);
      expect(ro.stderr).toMatch(/rollout stopped: n1 is drained \(rollout\/drains\/\): undrain first/);
      expect(await c.rollout()).toBeNull();

      const admitted = await c.cli("node", "drain", "n2", "--max-unavailable", "2");
      expect(admitted.code, admitted.stderr).toBe(0);
      expect(await c.drains()).toEqual(["n1", "n2"]);
      await waitFor(async () => (await c.readyz("n2")) === 503, { message: "n2 unready" });

      // n3 waits for a place: undraining n2 lets it through.
      const waiting = spawn(process.execPath, [CLI, "--etcd", etcd.endpoint, "--cluster", c.name, "node", "drain", "n3", "--max-unavailable", "2", "--wait", "30"], { stdio: ["ignore", "pipe", "pipe"] });
      let said = "";
      waiting.stderr!.on("data", (d: Buffer) => (said += d.toString()));
      const exited = new Promise<number | null>((r) => waiting.on("exit", (code) => r(code)));
      await waitFor(() => /waiting: n1: drained, n2: drained/.test(said), { message: "n3's drain waiting for the guard" });
      expect(await c.drains()).toEqual(["n1", "n2"]);
      expect((await c.cli("node", "undrain", "n2")).code).toBe(0);
      // n2 counts as out until it is ready again; then n3 is admitted.
      expect(await exited, said).toBe(0);
      expect(await c.drains()).toEqual(["n1", "n3"]);
      expect((await c.record("n2"))?.ready).toBe(true);
    } finally {
      await c.stop();
    }
  });

  it("two concurrent drains race: exactly one wins (CLI processes, then 5 rounds in one process)", { timeout: 240_000 }, async () => {
    const c = new Cluster("drain-race");
    try {
      await c.start();
      const [a, b] = await Promise.all([c.cli("node", "drain", "n2"), c.cli("node", "drain", "n3")]);
      expect([a.code, b.code].sort()).toEqual([0, 1]);
      expect((a.code === 1 ? a : b).stderr).toMatch(/refused: 1 node is already out \((n2|n3): drained\)/);
      expect((await c.drains()).length).toBe(1);
      for (const id of await c.drains()) await c.cli("node", "undrain", id);
      await waitFor(async () => (await c.records()).filter((r) => r.ready).length === 3, { timeoutMs: 40_000 });

      // The same race with both clients started in the same tick, five times (20 more in test/control/drain-keys.test.ts).
      for (let round = 0; round < 5; round++) {
        const results = await Promise.allSettled(
          ["n2", "n3"].map((id) => drainNode(store, c.keys, id, { maxUnavailable: 1, waitMs: 0, by: `race-${round}` })),
        );
        expect(results.filter((x) => x.status === "fulfilled").length).toBe(1);
        expect(results.filter((x) => x.status === "rejected").length).toBe(1);
        const drained = await c.drains();
        expect(drained.length).toBe(1);
        await undrainNode(store, c.keys, drained[0], "test");
        await waitFor(async () => (await c.records()).filter((r) => r.ready).length === 3, { timeoutMs: 40_000 });
      }
    } finally {
      await c.stop();
    }
  });
});

describe("ballast rollout restart", () => {
  it("restarts three nodes under steady load: 0 failed connections, at most one out, resumable after the CLI is killed", { timeout: 420_000 }, async () => {
    const c = new Cluster("rollout");
    const hook = await restartServer(c);
    const load = new Load(c);
    const out = new OutMonitor(c);
    let cli: ChildProcess | null = null;
    try {
      await c.start();
      const startedBefore = new Map((await c.records()).map((r) => [r.id, r.startedAt]));
      load.start();
      out.start();
      await waitFor(() => load.ok.size === 3, { message: "load through all three nodes" });

      // First run: killed once the second node is being rolled.
      const lines: string[] = [];
      cli = spawn(process.execPath, [CLI, "--etcd", etcd.endpoint, "--cluster", c.name, "rollout", "restart", "--restart-cmd", hookCommand(hook.port), "--timeout", "60"], { stdio: ["ignore", "pipe", "pipe"] });
      cli.stdout!.on("data", (d: Buffer) => lines.push(d.toString()));
      cli.stderr!.on("data", (d: Buffer) => lines.push(d.toString()));
      const firstExit = new Promise<number | null>((r) => cli!.on("exit", (code) => r(code)));
      await waitFor(async () => {
        const st = await c.rollout();
        return st?.done.length === 1 && st.current?.node === "n2";
      }, { timeoutMs: 60_000, message: `second node in progress; CLI said:\n${lines.join("")}` });
      cli.kill("SIGKILL");
      await firstExit;
      const mid = (await c.rollout())!;
      expect(mid.status).toBe("running");
      expect(mid.done).toEqual(["n1"]);

      // Second run resumes where the first stopped (after the dead CLI's lock lease expires).
      const second = await c.cli("rollout", "restart", "--restart-cmd", hookCommand(hook.port), "--timeout", "60");
      expect(second.code, `${second.stdout}\n${second.stderr}`).toBe(0);
      expect(second.stdout).toMatch(/resuming rollout r-\d+: 1\/3 nodes done, at n2/);
      expect(second.stdout).toMatch(/done: 3 nodes/);

      const done = (await c.rollout())!;
      expect(done.status).toBe("done");
      expect(done.done).toEqual(["n1", "n2", "n3"]);
      expect(done.steps.map((s) => s.node)).toEqual(["n1", "n2", "n3"]);
      // Every node is a new process, ready, not drained.
      const recs = await c.records();
      for (const id of ["n1", "n2", "n3"]) {
        const r = recs.find((x) => x.id === id)!;
        expect(r.startedAt).toBeGreaterThan(startedBefore.get(id)!);
        expect(r.ready).toBe(true);
        expect(r.drain).toBeUndefined();
      }
      expect(await c.drains()).toEqual([]);
      // Load kept flowing after the last node came back, through every node.
      const served = new Map(load.ok);
      await waitFor(() => ["n1", "n2", "n3"].every((id) => (load.ok.get(id) ?? 0) > (served.get(id) ?? 0)), { message: "load through every node after the rollout" });
      await load.stop();
      await out.stop();
      expect(load.failures).toEqual([]);
      expect(out.samples).toBeGreaterThan(50);
      expect(out.max).toBe(1);
      const status = await c.cli("rollout", "status");
      expect(status.stdout).toMatch(/rollout r-\d+: done, 3\/3 nodes done/);
      console.log(`rollout figures: ${JSON.stringify(done.steps)}; connections ok per node ${JSON.stringify(Object.fromEntries(load.ok))}, failed ${load.failures.length}, most nodes out at once ${out.max} (${out.samples} samples)`);
    } finally {
      cli?.kill("SIGKILL");
      await load.stop();
      await out.stop();
      await hook.close();
      await c.stop();
    }
  });

  it("without a restart hook each node exits 75 once drained and comes back under its supervisor", { timeout: 300_000 }, async () => {
    const c = new Cluster("rollout-self");
    c.supervise = true;
    try {
      await c.start();
      const before = new Map((await c.records()).map((r) => [r.id, r.startedAt]));
      const r = await c.cli("rollout", "restart", "--timeout", "60");
      expect(r.code, `${r.stdout}\n${r.stderr}`).toBe(0);
      expect(r.stdout).toMatch(/restart by each node's supervisor/);
      expect(c.exits).toEqual([
        { id: "n1", code: RESTART_EXIT_CODE },
        { id: "n2", code: RESTART_EXIT_CODE },
        { id: "n3", code: RESTART_EXIT_CODE },
      ]);
      const recs = await c.records();
      for (const id of ["n1", "n2", "n3"]) {
        const rec = recs.find((x) => x.id === id)!;
        expect(rec.startedAt).toBeGreaterThan(before.get(id)!);
        expect(rec.ready).toBe(true);
      }
      expect((await c.rollout())?.status).toBe("done");
      expect(await c.drains()).toEqual([]);
    } finally {
      await c.stop();
    }
  });

  it("stops at the first node that does not come back, saying so, and leaves the rest untouched", { timeout: 240_000 }, async () => {
    const c = new Cluster("rollout-stop");
    const hook = await restartServer(c, { noComeback: "n2" });
    try {
      await c.start();
      // The bound must hold a restart on a loaded machine (n1 must come back): 25 s.
      const r = await c.cli("rollout", "restart", "--restart-cmd", hookCommand(hook.port), "--timeout", "25");
      expect(r.code, `${r.stdout}\n${r.stderr}`).toBe(1);
      expect(r.stderr).toMatch(/rollout stopped: n2 did not come back: waited 25 s/);
      // It says what it saw last: n2 was killed and its leased record expired.
      expect(r.stderr).toMatch(/\(last seen: no node record: no process of it is registered\)/);
      const st = (await c.rollout())!;
      expect(st.status).toBe("failed");
      expect(st.done).toEqual(["n1"]);
      expect(st.current?.node).toBe("n2");
      expect(st.error).toMatch(/n2 did not come back/);
      expect(hook.restarted).toEqual(["n1", "n2"]);
      // n3 was never drained; n2 keeps its drain key; n1 and n3 serve.
      expect(await c.drains()).toEqual(["n2"]);
      const recs = await c.records();
      expect(recs.filter((x) => x.ready).map((x) => x.id).sort()).toEqual(["n1", "n3"]);
      const status = await c.cli("rollout", "status");
      expect(status.stdout).toMatch(/rollout r-\d+: failed, 1\/3 nodes done[\s\S]*stopped: n2 did not come back/);

      // abort ends it; the drain key stays for the operator.
      const ab = await c.cli("rollout", "abort");
      expect(ab.code).toBe(0);
      expect(ab.stdout).toMatch(/aborted; still drained: n2/);
      expect((await c.rollout())!.status).toBe("aborted");
    } finally {
      await hook.close();
      await c.stop();
    }
  });
});
