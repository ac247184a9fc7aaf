// A stop must end. A node process (dist/: `npm run build` first) whose etcd stops answering — SIGSTOP:
// the server keeps its sockets and answers nothing, as a hung or partitioned etcd — still exits on
// SIGTERM once its drain is over, and a drained node asked by a rollout to restart still exits for its
// supervisor: the etcd calls of closing (record update, lease revoke, election resign) have no answer to
// wait for, and a supervisor restarts only a process that exited.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { KeySchema } from "../../shared/keys.js";
import { RESTART_EXIT_CODE } from "../../shared/rollout.js";
import { type Backend, startTcpEcho } from "../helpers/backends.js";
import { type EtcdProcess, startEtcd } from "../helpers/etcd.js";
import { spawnNode } from "../helpers/node.js";
import { waitFor } from "../helpers/wait.js";

let backend: Backend;
beforeAll(async () => {
  backend = await startTcpEcho("b");
});
afterAll(async () => {
  await backend?.close();
});

async function clusteredNode(etcd: EtcdProcess, cluster: string) {
  const keys = KeySchema.forCluster(cluster);
  await etcd.put(keys.service("web"), JSON.stringify({ listen: "127.0.0.1:0", health: { type: "none" } }));
  await etcd.put(keys.backend("web", "b"), `127.0.0.1:${backend.port}`);
  const node = await spawnNode({ node: { id: "n1" }, cluster, etcd: { endpoints: [etcd.endpoint], leaseTtl: 2 }, withdrawDelay: "0s", drainTimeout: "1s", accessLog: { enabled: false } });
  await waitFor(async () => (await fetch(`http://${node.admin}/readyz`)).status === 200, { timeoutMs: 30_000, message: "node ready" });
  return { node, keys };
}

describe("stopping with etcd hung", () => {
  it("SIGTERM: the node drains and exits although etcd answers nothing", { timeout: 90_000 }, async () => {
    const etcd = await startEtcd();
    try {
      const { node } = await clusteredNode(etcd, "stop-sigterm");
      etcd.pause();
      node.kill("SIGTERM");
      // Exit 0 if closing finished without etcd, 1 if the bound cut it short: either way it ended.
      const code = await node.exited;
      expect([0, 1], node.logs.slice(-10).join("\n")).toContain(code);
    } finally {
      etcd.resume();
      await etcd.stop();
    }
  });

  it("a rollout's restart request: the drained node exits for its supervisor although etcd stopped answering", { timeout: 90_000 }, async () => {
    const etcd = await startEtcd();
    try {
      const { node, keys } = await clusteredNode(etcd, "stop-restart");
      // What `ballast rollout restart` (no hook) writes: drain, then exit for a process started before `restartAt`.
      // etcd hangs the moment the node reports drained, before its closing calls.
      let paused = false;
      const drained = waitFor(() => node.logs.some((l) => l.includes('"msg":"drained"')), { timeoutMs: 30_000, intervalMs: 5, message: "node drained" }).then(() => {
        etcd.pause();
        paused = true;
      });
      await etcd.put(keys.drain("n1"), JSON.stringify({ by: "test", at: Date.now(), reason: "rollout r-1", rollout: "r-1", restartAt: Date.now() }));
      await drained;
      expect(paused).toBe(true);
      expect(await node.exited, node.logs.slice(-10).join("\n")).toBe(RESTART_EXIT_CODE);
    } finally {
      etcd.resume();
      await etcd.stop();
    }
  });
});
