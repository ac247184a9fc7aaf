// Issue 13 (part A), finding 18: `ballast status` must not show a junk node record as the health
// leader, and the data plane's apply chain must survive one rejected apply.
import { execFile } from "node:child_process";
import { promisify } from "node:util";
import { describe, expect, it, vi } from "vitest";
import { DataPlane } from "../../node/data/plane.js";
import { StatsRegistry } from "../../node/model/stats.js";
import { createLogger } from "../../node/log.js";
import { buildSnapshot } from "../../node/model/snapshot.js";
import { encodeValue } from "../../shared/codec.js";
import { KeySchema } from "../../shared/keys.js";
import { RecordTable } from "../../node/control/records.js";
import type { EtcdProcess } from "../helpers/etcd.js";
import { CLI, startNode } from "../helpers/node.js";
import { useSharedEtcd } from "../helpers/suite.js";
import { waitFor } from "../helpers/wait.js";

const run = promisify(execFile);
let etcd: EtcdProcess;
useSharedEtcd((e) => {
  etcd = e;
});

describe("ballast status and junk node records", () => {
  it("marks only the node that answers as itself and leads as leader", async () => {
    const node = await startNode({ node: { id: "n1" }, cluster: "junk", etcd: { endpoints: [etcd.endpoint], leaseTtl: 2 } });
    await waitFor(() => node.health.status().isLeader, { message: "n1 leads" });
    const admin = node.admin.address;
    // A record copying n1's id and admin address under another key, and a well-formed record for n2
    // that points at n1's admin API: neither is the leader.
    await node.store.put(node.keys.node("junk1"), encodeValue({ id: "n1", admin, address: admin, ready: true }));
    await node.store.put(node.keys.node("n2"), encodeValue({ ...node.nodeRecord(), id: "n2" }));
    await waitFor(async () => (await etcd.etcdctl("get", "--prefix", "--keys-only", "/ballast/junk/nodes/")).includes("n1"), { message: "n1 registered" });
    const r = await run(process.execPath, [CLI, "--etcd", etcd.endpoint, "--cluster", "junk", "-o", "json", "status"]);
    const rows = (JSON.parse(r.stdout) as { nodes: Array<{ node: string; leader: string }> }).nodes;
    expect(rows.map((n) => [n.node, n.leader]).sort()).toEqual([
      ["n1", "yes"],
      ["n2", ""],
    ]);
  });
});

describe("data plane apply chain", () => {
  it("applies later snapshots after one apply was rejected", async () => {
    const keys = KeySchema.forCluster("t");
    const stats = new StatsRegistry();
    const snapshotAt = (revision: number) => {
      const table = new RecordTable(keys);
      table.reset([], revision);
      return buildSnapshot({ ...table.input(new Map()), revision }, stats);
    };
    const plane = new DataPlane(createLogger("silent"));
    const spy = vi.spyOn(plane as unknown as { applyNow(s: unknown): Promise<void> }, "applyNow").mockRejectedValueOnce(new Error("injected"));
    // The caller may see the failure (or it is logged); the chain must not stay rejected.
    await plane.apply(snapshotAt(1)).catch(() => {});
    expect(spy).toHaveBeenCalledTimes(1);
    spy.mockRestore();
    await plane.apply(snapshotAt(2));
    expect(plane.current?.revision).toBe(2);
    await plane.close();
  });
});
