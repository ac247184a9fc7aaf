// The affinity scale bench (test/bench/scale-affinity.ts) at small N against a real etcd: it runs,
// and what it measures has the shape the issue asks of replication "exception": per-node entries and
// etcd bytes per new client that do not grow with the nodes, where "mesh" grows with them.
import { describe, expect, it } from "vitest";
import { scaleAffinity } from "../bench/scale-affinity.js";
import type { EtcdProcess } from "../helpers/etcd.js";
import { useSharedEtcd } from "../helpers/suite.js";

let etcd: EtcdProcess;
useSharedEtcd((e) => {
  etcd = e;
});

describe("scale-affinity bench", () => {
  it("mesh grows with the nodes; exception does not", async () => {
    const run = (nodes: number, replication: "mesh" | "exception") => scaleAffinity({ endpoint: etcd.endpoint, nodes, replication, clientsPerNode: 50, timeoutMs: 60_000 });
    const mesh3 = await run(3, "mesh");
    const mesh9 = await run(9, "mesh");
    const exc3 = await run(3, "exception");
    const exc9 = await run(9, "exception");
    // mesh: every node holds every client; etcd sends each entry to every node.
    expect(mesh3.entriesPerNode.min).toBe(150);
    expect(mesh9.entriesPerNode.min).toBe(450);
    expect(mesh9.deliveredBytesPerClient).toBeGreaterThan(2 * mesh3.deliveredBytesPerClient);
    // exception: a node holds its own 50 clients and its shards' records (about 2/N of all).
    expect(exc9.entriesPerNode.mean).toBeLessThan(mesh9.entriesPerNode.mean / 2);
    expect(exc9.entriesPerNode.mean).toBeLessThan(2 * exc3.entriesPerNode.mean);
    expect(exc9.deliveredBytesPerClient).toBeLessThan(1.5 * exc3.deliveredBytesPerClient);
    expect(exc9.etcdSentBytesPerClient).toBeGreaterThan(0);
  });
});
