// Affinity figures, run by hand (not part of `npm run bench`, not an assertion):
//   npm run build && node dist/test/bench/affinity-bench.js
// - memory: RSS and heap of a standalone node before and after 1,000,000 entries (child process, --expose-gc),
//   and the cost and allocation of a hit on the hot path;
// - cluster (real etcd, three in-process nodes): time until an entry made on one node is visible on the
//   two others (p50/p99), etcd writes per second per node at 5,000 new clients per second, and how many
//   entries per second replicate when one node creates them as fast as it can.
import { execFileSync } from "node:child_process";
import { fileURLToPath } from "node:url";
import { createLogger } from "../../node/log.js";
import type { ServiceState } from "../../node/model/snapshot.js";
import { BallastNode } from "../../node/node.js";
import { nodeConfigSchema } from "../../shared/schema.js";
import { startEtcd } from "../helpers/etcd.js";
import { startNode, stopAllNodes } from "../helpers/node.js";

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const ipOf = (i: number, first = 10) => `${first}.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}`;
const mib = (b: number) => (b / 1024 / 1024).toFixed(1);

function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return Number.NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}

async function memory(): Promise<void> {
  const gc = (globalThis as { gc?: () => void }).gc;
  if (!gc) throw new Error("run with --expose-gc");
  const N = Number(process.env.ENTRIES ?? 1_000_000);
  const config = nodeConfigSchema.parse({
    admin: { listen: "127.0.0.1:0" },
    affinity: { maxEntries: N },
    services: [
      {
        name: "web",
        listen: "127.0.0.1:0",
        affinity: { mode: "source-ip", ttl: "30m" },
        health: { type: "none" },
        backends: Array.from({ length: 10 }, (_, i) => ({ id: `b${i}`, address: "127.0.0.1", port: 20000 + i })),
      },
    ],
  });
  const node = new BallastNode({ config, log: createLogger("silent") });
  await node.start();
  const svc = node.reconciler.snapshot!.services.get("web") as ServiceState;
  const router = node.plane.router;
  // Hits are measured with addresses made before the measure (as socket.remoteAddress strings would be).
  const HIT_SAMPLE = 100_000;
  const sample = Array.from({ length: HIT_SAMPLE }, (_, i) => ipOf((i * 7919) % N));
  gc();
  await sleep(100);
  gc();
  const before = process.memoryUsage();
  let t0 = performance.now();
  const now = Date.now();
  // The table keeps the address strings: they are made inside the measure so their memory counts.
  for (let i = 0; i < N; i++) router.route(svc, ipOf(i), 40000, null, now);
  const fillMs = performance.now() - t0;
  gc();
  await sleep(100);
  gc();
  const after = process.memoryUsage();
  // Hits: the same clients again (every lookup finds a live entry), after a warm-up so JIT work is not counted.
  for (let i = 0; i < HIT_SAMPLE; i++) router.route(svc, sample[i], 40000, null, now + 1);
  gc();
  const heapBefore = process.memoryUsage().heapUsed;
  t0 = performance.now();
  for (let i = 0; i < N; i++) router.route(svc, sample[i % HIT_SAMPLE], 40000, null, now + 1);
  const hitMs = performance.now() - t0;
  const heapAfterHits = process.memoryUsage().heapUsed;
  // The same decision without affinity, for comparison.
  const plain = { ...svc, spec: { ...svc.spec, affinity: { mode: "none" as const, ttl: 0 } } } as ServiceState;
  t0 = performance.now();
  for (let i = 0; i < N; i++) router.route(plain, sample[i % HIT_SAMPLE], 40000, null, now);
  const plainMs = performance.now() - t0;
  console.log(
    JSON.stringify({
      entries: node.affinity.entries.count,
      rssBeforeMiB: mib(before.rss),
      rssAfterMiB: mib(after.rss),
      rssDeltaMiB: mib(after.rss - before.rss),
      heapDeltaMiB: mib(after.heapUsed - before.heapUsed),
      arrayBuffersDeltaMiB: mib(after.arrayBuffers - before.arrayBuffers),
      bytesPerEntry: Math.round((after.rss - before.rss) / N),
      fillNsPerEntry: Math.round((fillMs * 1e6) / N),
      hitNs: Math.round((hitMs * 1e6) / N),
      noAffinityNs: Math.round((plainMs * 1e6) / N),
      heapGrowthDuringHitsKiB: Math.round((heapAfterHits - heapBefore) / 1024),
    }),
  );
  await node.close();
}

async function cluster(): Promise<void> {
  const etcd = await startEtcd();
  try {
    const prefix = "/ballast/bench/";
    await etcd.put(`${prefix}services/web`, JSON.stringify({ listen: "127.0.0.1:0", health: { type: "none" }, affinity: { mode: "source-ip", ttl: "30m" } }));
    for (let i = 0; i < 3; i++) await etcd.put(`${prefix}backends/web/b${i}`, `127.0.0.1:${20000 + i}`);
    const config = (id: string) => ({ node: { id }, cluster: "bench", etcd: { endpoints: [etcd.endpoint], leaseTtl: 5 } });
    const [a, b, c] = await Promise.all(["na", "nb", "nc"].map((id) => startNode(config(id))));
    const svc = () => a.reconciler.snapshot!.services.get("web")!;
    const others = [b, c];
    const visible = (ip: string) =>
      others.every((n) => {
        const t = n.affinity.entries.table("web");
        return t !== undefined && n.affinity.entries.find(t, ip) >= 0;
      });

    // 1. Visibility: 3000 entries at ~500/s, each timed until both other nodes hold it.
    {
      const pending = new Map<string, number>();
      const latencies: number[] = [];
      const poll = setInterval(() => {
        const now = performance.now();
        for (const [ip, t] of pending) {
          if (visible(ip)) {
            latencies.push(now - t);
            pending.delete(ip);
          }
        }
      }, 1);
      for (let i = 0; i < 3000; i += 5) {
        for (let j = i; j < i + 5; j++) {
          const ip = ipOf(j, 11);
          a.plane.router.route(svc(), ip, 40000, null, Date.now());
          pending.set(ip, performance.now());
        }
        await sleep(10);
      }
      while (pending.size > 0) await sleep(10);
      clearInterval(poll);
      latencies.sort((x, y) => x - y);
      console.log(JSON.stringify({ phase: "visibility on all other nodes (500 new/s)", entries: latencies.length, p50Ms: percentile(latencies, 50).toFixed(1), p99Ms: percentile(latencies, 99).toFixed(1), maxMs: latencies[latencies.length - 1].toFixed(1) }));
    }

    // 2. 5,000 new clients per second for 10 s on node A: its etcd writes per second.
    {
      const rep = a.affinity.replicator!;
      const batches0 = rep.batches;
      const bytes0 = rep.bytes;
      const grants0 = rep.leaseGrants;
      const seconds = 10;
      const t0 = performance.now();
      let made = 0;
      while (performance.now() - t0 < seconds * 1000) {
        const due = Math.floor(((performance.now() - t0) / 1000) * 5000);
        for (; made < due; made++) a.plane.router.route(svc(), ipOf(made, 12), 40000, null, Date.now());
        await sleep(5);
      }
      const elapsed = (performance.now() - t0) / 1000;
      const last = ipOf(made - 1, 12);
      while (!visible(last)) await sleep(5);
      const batches = rep.batches - batches0;
      console.log(
        JSON.stringify({
          phase: "5000 new clients/s on one node",
          clients: made,
          seconds: elapsed.toFixed(1),
          etcdPutsPerSecond: (batches / elapsed).toFixed(1),
          entriesPerPut: Math.round(made / batches),
          bytesPerSecondKiB: ((rep.bytes - bytes0) / elapsed / 1024).toFixed(1),
          leaseGrants: rep.leaseGrants - grants0,
        }),
      );
    }

    // 3. Replication throughput: 100,000 new entries at once on node A, until both others hold them all.
    {
      const N = 100_000;
      const before = others.map((n) => n.affinity.entries.table("web")!.size);
      const t0 = performance.now();
      const now = Date.now();
      for (let i = 0; i < N; i++) a.plane.router.route(svc(), ipOf(i, 13), 40000, null, now);
      const made = performance.now() - t0;
      while (!others.every((n, k) => n.affinity.entries.table("web")!.size >= before[k] + N)) await sleep(5);
      const s = (performance.now() - t0) / 1000;
      console.log(JSON.stringify({ phase: "burst of 100k new entries on one node", createMs: made.toFixed(0), secondsUntilAllOthersHaveThem: s.toFixed(2), entriesReplicatedPerSecond: Math.round(N / s) }));
    }
  } finally {
    await stopAllNodes();
    await etcd.stop();
  }
}

const mode = process.argv[2];
if (mode === "memory") await memory();
else if (mode === "cluster") await cluster();
else {
  const self = fileURLToPath(import.meta.url);
  console.log("memory (child process, --expose-gc):");
  console.log(execFileSync(process.execPath, ["--expose-gc", self, "memory"], { encoding: "utf8" }).trim());
  console.log("cluster (real etcd, three nodes):");
  await cluster();
}
process.exit(0);
