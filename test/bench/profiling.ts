// --profile: runs the keep-alive, new-connection and bulk loads against a Ballast node started under
// `node --cpu-prof`, one profile each, and ranks the hot functions.
import { mkdirSync, readdirSync } from "node:fs";
import { join } from "node:path";
import { type BallastNode, stopNode } from "./ballast.js";
import type { Context } from "./context.js";
import { type Dest, iperf, wrk } from "./load.js";
import { sleep } from "./net.js";
import { summarizeProfile } from "./profile.js";

/** `start(id, profileDir)` starts a node (with the bench's services) that writes its CPU profile into profileDir. */
export async function profileRun(ctx: Context, start: (id: string, profileDir: string) => Promise<BallastNode>, dests: { http: Dest; bulk: Dest }): Promise<void> {
  const stamp = new Date().toISOString().replace(/[:.]/g, "-");
  const runs = [
    { name: "keep-alive", id: "bench-prof-ka", close: false, connections: 64 },
    { name: "new-connections", id: "bench-prof-nc", close: true, connections: 32 },
    { name: "bulk", id: "bench-prof-bulk", close: false, connections: 0 },
  ];
  for (const run of runs) {
    const dir = join(ctx.resultsDir, "profile", `${stamp}-${run.name}`);
    mkdirSync(dir, { recursive: true });
    ctx.log(`profile: ${run.name} against a node under --cpu-prof …`);
    const spawned = performance.now();
    const node = await start(run.id, dir);
    await sleep(500);
    // Start-up (module loading, first etcd sync) is not the hot path: leave it out of the summary.
    const loadStartMs = performance.now() - spawned;
    if (run.name === "bulk") {
      const r = await iperf(dests.bulk, ctx.opts.durationS);
      ctx.log(`  bulk under the profiler: ${r.gbps.toFixed(2)} Gbit/s`);
    } else {
      const r = await wrk(dests.http, { connections: run.connections, durationS: ctx.opts.durationS, close: run.close });
      ctx.log(`  ${run.name} under the profiler: ${Math.round(r.rps)} req/s`);
    }
    await stopNode(node, true);
    const file = readdirSync(dir).find((f) => f.endsWith(".cpuprofile"));
    if (!file) {
      ctx.results.notes.push(`profile ${run.name}: the node wrote no .cpuprofile (it did not exit through process.exit)`);
      continue;
    }
    const summary = summarizeProfile(join(dir, file), loadStartMs);
    ctx.results.profiles[run.name] = summary;
    ctx.log(`  top self time (${run.name}): ${summary.top.slice(0, 6).map((f) => `${f.name || "(anon)"} ${f.selfPctBusy}%`).join(", ")}`);
  }
}
