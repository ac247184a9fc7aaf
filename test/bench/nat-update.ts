// Kernel NAT update figures, in a network namespace made for the run: how long nftables takes to
// load a whole service's slot map (at the NAT ladder size and at the proxy's 65,537), and how long a
// verdict flip takes from snapshot to programmed map (a delta) with 100 backends, p50/p99.
// `npm run build && node dist/test/bench/nat-update.js [--flips N]` (root; never touches the host namespace).
import { createLogger } from "../../node/log.js";
import { RecordTable } from "../../node/control/records.js";
import { StatsRegistry } from "../../node/model/stats.js";
import { KernelForwarder } from "../../node/kernel/forwarder.js";
import { nftRunner } from "../../node/kernel/nft.js";
import { backendValue, type NatTableModel, renderFull } from "../../node/kernel/ruleset.js";
import { natTableSize } from "../../node/lb/nat-table.js";
import { buildMaglevTable } from "../../node/lb/maglev.js";
import { buildSnapshot, type Snapshot } from "../../node/model/snapshot.js";
import { KeySchema } from "../../shared/keys.js";
import { netnsUnavailable, Topology } from "../helpers/netns.js";

const keys = KeySchema.forCluster("bench");
const quantile = (xs: number[], q: number) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor(q * s.length))];
};

function snapshot(rev: number, n: number, down: Set<number>): Snapshot {
  const kvs = [{ key: keys.service("web"), value: Buffer.from(JSON.stringify({ listen: "10.99.0.1:80", forwarding: "nat", health: { type: "none" } })), modRevision: 1, lease: "0" }];
  for (let i = 0; i < n; i++) kvs.push({ key: keys.backend("web", `b${String(i).padStart(3, "0")}`), value: Buffer.from(JSON.stringify({ address: `10.98.${i >> 8}.${i & 255}`, port: 8080 })), modRevision: 1, lease: "0" });
  const t = new RecordTable(keys);
  t.reset(kvs, rev);
  const verdicts = new Map();
  for (const i of down) verdicts.set(`web/b${String(i).padStart(3, "0")}`, { state: "down", since: 1, reason: "bench", count: 3, checker: "b", source: "shared" });
  return buildSnapshot(t.input(verdicts), new StatsRegistry());
}

/** A service model of `size` slots over `n` backends (to load the proxy's 65,537 for comparison). */
function model(size: number, n: number): NatTableModel {
  const ids = Array.from({ length: n }, (_, i) => `b${i}`);
  const table = buildMaglevTable(ids, ids.map(() => 1), size);
  const slots = Array.from(table, (x) => backendValue(`10.98.${x >> 8}.${x & 255}`, 8080));
  return {
    table: "ballast_bench",
    seed: 1,
    services: new Map([["web", { name: "web", id: "s_web", family: 4, protocol: "tcp", vip: "10.99.0.1", port: 80, snat: true, sourceOnly: false, size, slots, affinity: null, allow: [], deny: [], sourceRate: 0, sourceBurst: 20, maxConnections: 0, counters: new Map() }]]),
  };
}

export async function natUpdateFigures(flips: number): Promise<Record<string, number | string>> {
  const why = netnsUnavailable();
  if (why) return { skipped: why };
  const topo = await Topology.create();
  try {
    const ns = await topo.namespace("nat");
    const runner = nftRunner({ netns: ns.name });
    const out: Record<string, number | string> = {};
    for (const [label, size] of [["ladder100", natTableSize(100)], ["proxy65537", 65537]] as const) {
      const times: number[] = [];
      for (let i = 0; i < 3; i++) {
        const r = await runner.load(renderFull(model(size, 100)));
        if (!r.ok) throw new Error(r.error);
        times.push(r.ms);
      }
      out[`load_${label}_slots`] = size;
      out[`load_${label}_ms_median`] = Math.round(quantile(times, 0.5));
    }
    // Verdict flips through the forwarder: snapshot build excluded, render + nft delta included.
    const f = new KernelForwarder({ cluster: "bench", log: createLogger("silent"), runner });
    await f.apply(snapshot(1, 100, new Set()));
    const times: number[] = [];
    const slots: number[] = [];
    for (let i = 0; i < flips; i++) {
      const s = snapshot(2 + i, 100, i % 2 === 0 ? new Set([i % 100]) : new Set());
      const t0 = performance.now();
      await f.apply(s);
      times.push(performance.now() - t0);
      slots.push(f.stats.lastSlotsChanged);
      if (f.stats.lastError) throw new Error(f.stats.lastError);
    }
    out.flip_backends = 100;
    out.flip_table_size = natTableSize(100);
    out.flip_count = flips;
    out.flip_slots_median = quantile(slots, 0.5);
    out.flip_ms_p50 = Math.round(quantile(times, 0.5) * 10) / 10;
    out.flip_ms_p99 = Math.round(quantile(times, 0.99) * 10) / 10;
    return out;
  } finally {
    await topo.destroy();
  }
}

if (process.argv[1]?.endsWith("nat-update.js")) {
  const i = process.argv.indexOf("--flips");
  natUpdateFigures(i > 0 ? Number(process.argv[i + 1]) : 100).then(
    (r) => {
      process.stdout.write(`${JSON.stringify(r, null, 2)}\n`);
      process.exit(0);
    },
    (err) => {
      process.stderr.write(`${(err as Error).stack}\n`);
      process.exit(1);
    },
  );
}
