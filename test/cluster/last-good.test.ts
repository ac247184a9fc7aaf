// Last known good on disk: a node restarted while etcd is down serves the records it last applied
// (from its state directory), says so in /api/state and /metrics, and converges once etcd answers.
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, afterEach, describe, expect, it } from "vitest";
import { closeAllBackends, startTcpEcho, tcpExchange } from "../helpers/backends.js";
import { type EtcdProcess, startEtcd } from "../helpers/etcd.js";
import { portOf, startNode, stopAllNodes } from "../helpers/node.js";
import { waitFor } from "../helpers/wait.js";

let etcd: EtcdProcess | undefined;
const dirs: string[] = [];

afterEach(async () => {
  await stopAllNodes();
  await closeAllBackends();
});
afterAll(async () => {
  await etcd?.stop();
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

describe("last known good on disk", () => {
  it("serves from the state directory when etcd is unreachable at start, then converges", async () => {
    etcd = await startEtcd();
    const a = await startTcpEcho("a");
    const b = await startTcpEcho("b");
    const stateDir = mkdtempSync(join(tmpdir(), "ballast-state-"));
    dirs.push(stateDir);
    const config = (id: string) => ({ node: { id }, cluster: "lkg", stateDir, etcd: { endpoints: [etcd!.endpoint], leaseTtl: 2 } });
    await etcd.put("/ballast/lkg/services/web", JSON.stringify({ listen: "127.0.0.1:0", health: { type: "none" } }));
    const put = await etcd.put("/ballast/lkg/backends/web/a", `127.0.0.1:${a.port}`);

    const first = await startNode(config("n1"));
    await waitFor(() => first.reconciler.appliedRevision >= put, { message: "n1 applies the backend" });
    expect(await tcpExchange(portOf(first, "web"), "hi")).toBe("a:hi");
    await waitFor(() => (first.lastGood?.saves ?? 0) > 0 && first.lastGood!.revision >= put, { message: "the snapshot written to disk" });
    const file = join(stateDir, "last-known-good.json");
    expect(existsSync(file)).toBe(true);
    expect(JSON.parse(readFileSync(file, "utf8")).revision).toBeGreaterThanOrEqual(put);
    await stopAllNodes();

    await etcd.kill("SIGKILL");
    const second = await startNode(config("n2"), { waitForSnapshot: false });
    await waitFor(() => second.lastGood?.source === "disk", { timeoutMs: 30_000, message: "n2 to load the file" });
    await waitFor(() => (second.plane.listenerOf("web")?.boundPort ?? 0) > 0, { message: "web listening from the file" });
    expect(await tcpExchange(portOf(second, "web"), "hi")).toBe("a:hi");
    const state = (await (await fetch(`http://${second.admin.address}/api/state`)).json()) as { store: { connected: boolean; snapshotSource: string; staleSeconds: number }; revision: number };
    expect(state.store).toMatchObject({ connected: false, snapshotSource: "disk" });
    expect(state.store.staleSeconds).toBeGreaterThan(0);
    expect(state.revision).toBeGreaterThanOrEqual(put);
    const metrics = await (await fetch(`http://${second.admin.address}/metrics`)).text();
    expect(metrics).toMatch(/ballast_snapshot_from_disk\{node="n2"\} 1/);

    // etcd back, with a change made meanwhile: the node leaves the file behind and follows etcd.
    await etcd.restart();
    await etcd.put("/ballast/lkg/backends/web/b", `127.0.0.1:${b.port}`);
    const del = await etcd.del("/ballast/lkg/backends/web/a");
    expect(del).toBe(1);
    await waitFor(() => second.lastGood?.source === "etcd" && second.reconciler.snapshot?.services.get("web")?.targets.map((t) => t.id).join() === "b", {
      timeoutMs: 30_000,
      message: "n2 to converge on etcd",
    });
    expect(await tcpExchange(portOf(second, "web"), "hi")).toBe("b:hi");
  }, 120_000);

  it("a file of another cluster is not served", async () => {
    const stateDir = mkdtempSync(join(tmpdir(), "ballast-state-"));
    dirs.push(stateDir);
    const { writeFileSync } = await import("node:fs");
    writeFileSync(join(stateDir, "last-known-good.json"), JSON.stringify({ v: 1, prefix: "/ballast/other/", revision: 9, savedAt: Date.now(), kvs: [{ key: "/ballast/other/services/web", value: Buffer.from(JSON.stringify({ listen: "127.0.0.1:0" })).toString("base64"), modRevision: 2 }] }));
    // An endpoint nothing listens on: etcd is unreachable from the start.
    const node = await startNode({ node: { id: "n3" }, cluster: "mine", stateDir, etcd: { endpoints: ["http://127.0.0.1:1"], leaseTtl: 2 } }, { waitForSnapshot: false });
    await waitFor(() => node.reconciler.connected === false && node.reconciler.lastError !== null, { timeoutMs: 30_000, message: "the store to report unreachable" });
    expect(node.lastGood?.source).toBe("none");
    expect(node.reconciler.snapshot).toBeNull();
  }, 60_000);
});
