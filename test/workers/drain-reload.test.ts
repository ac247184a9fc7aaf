// `workers: 2` under the two operator actions that reach a running node (issue 18): the operator drain
// (`ballast node drain`, a key in a real etcd) and the config reload (SIGHUP). Both are orchestrated by
// the primary; these tests check that every worker obeys and that the workers' open connections survive.
import { execFile } from "node:child_process";
import { randomBytes } from "node:crypto";
import net from "node:net";
import { promisify } from "node:util";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import type { NodeRecord } from "../../shared/api.js";
import { parseNodeRecord } from "../../shared/codec.js";
import { KeySchema } from "../../shared/keys.js";
import { EtcdStore } from "../../node/control/etcd-store.js";
import { closeAllBackends, startTcpEcho } from "../helpers/backends.js";
import { type EtcdProcess, startEtcd } from "../helpers/etcd.js";
import { CLI, writeNodeConfig } from "../helpers/node.js";
import { waitFor as waitForBase } from "../helpers/wait.js";
import { type Conn, connect, health, readyNode, state, tcpPortOf } from "./helpers.js";

const run = promisify(execFile);
/** The machine may be loaded: conditions get 30 s unless a test says otherwise (no speed is asserted). */
const waitFor: typeof waitForBase = (cond, opts = {}) => waitForBase(cond, { timeoutMs: 30_000, ...opts });

afterEach(async () => {
  await closeAllBackends();
});

/** Whether a new connection to 127.0.0.1:port is refused (no listener takes it). */
function refused(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect(port, "127.0.0.1");
    s.once("connect", () => {
      s.destroy();
      resolve(false);
    });
    s.once("error", () => resolve(true));
  });
}

/** Opens connections until each of the two workers holds at least `each` of them (bounded). */
async function spreadOverWorkers(node: Parameters<typeof state>[0], port: number, each: number): Promise<Conn[]> {
  const conns: Conn[] = [];
  for (let i = 0; i < 40; i++) {
    conns.push(await connect(port));
    if (conns.length < 2 * each) continue;
    const ws = (await state(node)).workers!;
    if (ws.length === 2 && ws.every((w) => w.active >= each) && ws.reduce((a, w) => a + w.active, 0) === conns.length) return conns;
  }
  await waitFor(async () => {
    const ws = (await state(node)).workers!;
    return ws.every((w) => w.active >= each) && ws.reduce((a, w) => a + w.active, 0) === conns.length;
  }, { message: `both workers hold at least ${each} of ${conns.length} connections` });
  return conns;
}

describe("workers: 2, operator drain", () => {
  let etcd: EtcdProcess;
  let store: EtcdStore;
  beforeAll(async () => {
    etcd = await startEtcd();
    store = new EtcdStore({ endpoints: [etcd.endpoint] });
  });
  afterAll(async () => {
    await store?.close();
    await etcd?.stop();
  });

  it("a drain key stops every worker's listener while each worker's open connections carry on; drained once they end; undrain serves through both again", async () => {
    const cluster = `wdrain-${randomBytes(3).toString("hex")}`;
    const keys = KeySchema.forCluster(cluster);
    const b = await startTcpEcho("b");
    await etcd.put(keys.service("web"), JSON.stringify({ listen: "127.0.0.1:0", health }));
    await etcd.put(keys.backend("web", "b"), `127.0.0.1:${b.port}`);
    const record = async (): Promise<NodeRecord | undefined> => {
      const { kvs } = await store.list(keys.nodes);
      return kvs.map((kv) => parseNodeRecord(kv.key.slice(keys.nodes.length), kv.value)).find((r) => r.id === "n1");
    };
    const cli = (...args: string[]) =>
      run(process.execPath, [CLI, "--etcd", etcd.endpoint, "--cluster", cluster, ...args]).then(
        (r) => ({ code: 0, stderr: r.stderr }),
        (e: { code: number; stderr: string }) => ({ code: e.code, stderr: e.stderr }),
      );
    const node = await readyNode({ node: { id: "n1" }, cluster, etcd: { endpoints: [etcd.endpoint], leaseTtl: 2 }, workers: 2, withdrawDelay: "300ms", drainTimeout: "60s" });
    try {
      const port = tcpPortOf(await state(node), "web");
      const held = await spreadOverWorkers(node, port, 2);

      const r = await cli("node", "drain", "n1", "--reason", "test");
      expect(r.code, r.stderr).toBe(0);
      await waitFor(async () => (await fetch(`http://${node.admin}/readyz`)).status === 503, { message: "readyz 503 once the key is seen" });
      // After withdrawDelay no worker accepts: the primary's listening socket is gone too.
      await waitFor(() => refused(port), { message: "new connections refused" });
      await waitFor(async () => (await record())?.drain?.state === "draining", { message: "record says draining" });
      expect((await record())?.drain?.openAtStart).toBe(held.length);
      // Every held connection, on either worker, still relays.
      const alive = await Promise.all(held.map((c) => c.echo("during", 5000)));
      expect(alive.every(Boolean)).toBe(true);
      const during = await state(node);
      expect(during.workers!.every((w) => w.active > 0)).toBe(true);

      for (const c of held) c.sock.end();
      await waitFor(async () => (await record())?.drain?.state === "drained", { message: "record says drained once every worker's connections ended" });
      expect((await record())?.drain).toMatchObject({ state: "drained", openAtStart: held.length, open: 0 });
      expect(node.child.exitCode).toBeNull();

      const u = await cli("node", "undrain", "n1");
      expect(u.code, u.stderr).toBe(0);
      await waitFor(async () => (await fetch(`http://${node.admin}/readyz`)).status === 200, { message: "ready after undrain" });
      const port2 = tcpPortOf(await state(node), "web");
      const accepted = (await state(node)).workers!.map((w) => w.accepted);
      const again = await spreadOverWorkers(node, port2, 1);
      const after = (await state(node)).workers!;
      for (let i = 0; i < 2; i++) expect(after[i].accepted, `worker ${i} accepts after undrain`).toBeGreaterThan(accepted[i]);
      for (const c of again) c.sock.destroy();
    } finally {
      node.kill("SIGKILL");
    }
  }, 180_000);
});

describe("workers: 2, config reload", () => {
  it("SIGHUP reaches every worker: the new backends and the access-log switch apply in both, their open connections stay", async () => {
    const a = await startTcpEcho("a");
    const b = await startTcpEcho("b");
    const svc = (backends: unknown[]) => ({ name: "web", listen: "127.0.0.1:0", algorithm: "round-robin", health, backends });
    const node = await readyNode({ workers: 2, accessLog: { enabled: false }, services: [svc([{ id: "a", address: "127.0.0.1", port: a.port }])] });
    try {
      const port = tcpPortOf(await state(node), "web");
      const held = await spreadOverWorkers(node, port, 1);
      expect(held.every((c) => c.backend === "a")).toBe(true);
      const accessLines = () => node.logs.filter((l) => l.includes('"msg":"access"'));
      expect(accessLines()).toEqual([]);

      // Backend a drained, b added, the access log switched on.
      writeNodeConfig(node.file, { workers: 2, accessLog: { enabled: true, ratePerSecond: 10_000 }, services: [svc([{ id: "a", address: "127.0.0.1", port: a.port, state: "drain" }, { id: "b", address: "127.0.0.1", port: b.port }])] });
      node.kill("SIGHUP");
      await waitFor(async () => (await state(node)).services[0].backends.length === 2, { message: "the reloaded backends in /api/state" });
      expect(tcpPortOf(await state(node), "web")).toBe(port);

      // New connections go to b through both workers. Each worker applies the reload when its message
      // arrives: poll until four connections in a row (handed to the workers in turn) reach b.
      let made = held.length;
      await waitFor(async () => {
        let allB = true;
        for (let i = 0; i < 4; i++) {
          const c = await connect(port);
          made++;
          c.sock.destroy();
          allB &&= c.backend === "b";
        }
        return allB;
      }, { message: "new connections reach b" });
      await waitFor(async () => (await state(node)).workers!.reduce((s, w) => s + w.accepted, 0) === made, { message: "the workers report every connection so far" });
      const before = (await state(node)).workers!.map((w) => w.accepted);
      const fresh: Conn[] = [];
      for (let i = 0; i < 6; i++) fresh.push(await connect(port));
      await waitFor(async () => (await state(node)).workers!.reduce((s, x, i) => s + x.accepted - before[i], 0) === fresh.length, { message: "the workers report the new connections" });
      const ws = (await state(node)).workers!;
      for (let i = 0; i < 2; i++) expect(ws[i].accepted, `worker ${i} took new connections`).toBeGreaterThan(before[i]);
      expect(fresh.map((c) => c.backend)).toEqual(fresh.map(() => "b"));

      // The connections opened before the reload, on both workers, still relay (to a: drained, not cut).
      const alive = await Promise.all(held.map((c) => c.echo("after", 5000)));
      expect(alive.every(Boolean)).toBe(true);

      // The access log, now on in both workers: one line per connection that ends, whichever worker had it.
      const ports = new Set(fresh.map((c) => `127.0.0.1:${c.localPort}`));
      for (const c of fresh) c.sock.end();
      await waitFor(() => accessLines().filter((l) => ports.has((JSON.parse(l) as { client: string }).client)).length === fresh.length, { message: "an access line for every new connection" });
      expect(node.child.exitCode).toBeNull();
      for (const c of held) c.sock.destroy();
    } finally {
      node.kill("SIGKILL");
    }
  }, 120_000);
});
