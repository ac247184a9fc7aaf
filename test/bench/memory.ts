// Memory: Ballast RSS idle and with many idle proxied connections open (HAProxy alongside for reference).
// Connections come from several loopback source addresses; each proxied connection costs the proxy two
// file descriptors, so the process's open-file limit caps what can be reached and is reported.
import { readFileSync } from "node:fs";
import { agentPath, sinkOpen } from "./backends.js";
import { type BallastNode, heapUsedMiB } from "./ballast.js";
import type { Context } from "./context.js";
import { HAPROXY_MAXCONN } from "./haproxy.js";
import { fdCount, rssBytes, sleep } from "./net.js";
import type { Proc } from "./procs.js";
import type { MemoryStep } from "./report.js";

const PER_AGENT = 15_000;
const SOURCES_PER_AGENT = 8;

function openFileLimit(pid: number): number {
  try {
    const m = /Max open files\s+(\d+)/.exec(readFileSync(`/proc/${pid}/limits`, "utf8"));
    return m ? Number(m[1]) : Number.NaN;
  } catch {
    return Number.NaN;
  }
}

/** Steps up to `max`, with `max` itself added when a wanted step lies beyond it. */
function reachableSteps(wanted: number[], max: number): number[] {
  const steps = wanted.filter((s) => s <= max);
  if (wanted.some((s) => s > max) && (steps.length === 0 || steps[steps.length - 1] < max)) steps.push(max);
  return steps;
}

async function holdSteps(
  ctx: Context,
  label: string,
  port: number,
  pid: number,
  sink: Proc,
  steps: number[],
  heap?: () => Promise<number>,
): Promise<MemoryStep[]> {
  const max = steps[steps.length - 1];
  const agents = Math.max(1, Math.ceil(max / PER_AGENT));
  const share = (n: number) => Math.ceil(n / agents);
  const procs: Proc[] = [];
  for (let a = 0; a < agents; a++) {
    procs.push(
      ctx.group.start(`conn-hold-${label}-${a}`, process.execPath, [
        agentPath("conn-hold"),
        "--port", String(port),
        "--steps", steps.map(share).join(","),
        "--sources", String(SOURCES_PER_AGENT),
        "--sourceOffset", String(a * SOURCES_PER_AGENT),
        "--timeoutMs", "180000",
      ], { nofile: PER_AGENT + 1000 }),
    );
  }
  const out: MemoryStep[] = [];
  try {
    for (const step of steps) {
      const s = share(step);
      const lines = await Promise.all(procs.map((p) => p.waitForLine(new RegExp(`"step":${s},|"done":true`), 200_000)));
      const parsed = lines.map((l) => JSON.parse(l) as { open: number; failed: number; lastError: string; done?: boolean });
      const open = parsed.reduce((a, p) => a + p.open, 0);
      await sleep(1500);
      const rss = rssBytes(pid) / 2 ** 20;
      const backendOpen = sinkOpen(sink);
      const heapMiB = heap ? await heap() : undefined;
      out.push({ connections: open, rssMiB: rss, backendOpen, heapMiB });
      const failed = parsed.reduce((a, p) => a + p.failed, 0);
      ctx.log(`  ${label}: ${open} idle connections open (backend sees ${backendOpen}) → RSS ${rss.toFixed(1)} MiB${heapMiB ? ` (JS heap ${heapMiB.toFixed(1)} MiB)` : ""}${failed ? `, ${failed} failed (${parsed.find((p) => p.lastError)?.lastError})` : ""}`);
      if (parsed.some((p) => p.done) || open < step * 0.98) break;
      for (const p of procs) p.signal("SIGUSR2");
    }
  } finally {
    await Promise.all(procs.map((p) => p.stop(2000)));
  }
  // Let both sides close before the next measurement.
  const end = Date.now() + 15_000;
  while (Date.now() < end && sinkOpen(sink) > 0) await sleep(250);
  return out;
}

function perConnectionKiB(steps: MemoryStep[]): number | undefined {
  if (steps.length < 2) return undefined;
  const a = steps[0];
  const b = steps[steps.length - 1];
  if (b.connections <= a.connections) return undefined;
  return ((b.rssMiB - a.rssMiB) * 1024) / (b.connections - a.connections);
}

export interface MemoryInputs {
  /** Restarts the Ballast node fresh; returns RSS before (after load) and after (fresh, idle). Absent without Ballast. */
  restart?: () => Promise<{ afterLoadMiB: number; freshMiB: number; node: BallastNode }>;
  ballastPort: number;
  haproxyPid: number;
  haproxyPort: number;
  sink: Proc;
}

export async function runMemory(ctx: Context, o: MemoryInputs): Promise<void> {
  const wanted = ctx.opts.quick ? [500, 2000] : [1000, 5000, 10_000, 50_000];
  ctx.log("memory: idle connections …");
  // HAProxy first (reference), with its maxconn as the ceiling.
  const hpSteps = reachableSteps(ctx.opts.quick ? wanted : [1000, 5000, 10_000], HAPROXY_MAXCONN - 100);
  const hpIdle = rssBytes(o.haproxyPid) / 2 ** 20;
  const hp = await holdSteps(ctx, "haproxy", o.haproxyPort, o.haproxyPid, o.sink, hpSteps);
  ctx.results.memory.haproxy = { idleMiB: hpIdle, steps: hp, perConnectionKiB: perConnectionKiB(hp), note: `maxconn ${HAPROXY_MAXCONN}` };

  if (!o.restart) return;
  const { afterLoadMiB, freshMiB, node } = await o.restart();
  const limit = openFileLimit(node.pid);
  const used = fdCount(node.pid);
  const maxReachable = Math.max(0, Math.floor((limit - used - 64) / 2));
  const steps = reachableSteps(wanted, maxReachable);
  const heapIdle = await heapUsedMiB(node);
  ctx.log(`  Ballast: fresh idle RSS ${freshMiB.toFixed(1)} MiB (was ${afterLoadMiB.toFixed(1)} after the load runs); open-file limit ${limit} → at most ${maxReachable} proxied connections`);
  const b = await holdSteps(ctx, "ballast", o.ballastPort, node.pid, o.sink, steps, () => heapUsedMiB(node));
  const notes: string[] = [];
  const last = b[b.length - 1];
  if (Number.isFinite(heapIdle) && last?.heapMiB !== undefined) {
    notes.push(`JS heap in use ${heapIdle.toFixed(1)} MiB idle, ${last.heapMiB.toFixed(1)} MiB at ${last.connections} connections (from /metrics)`);
  }
  if (wanted.some((s) => s > maxReachable)) {
    notes.push(`open-file limit ${limit} (hard limit; raising it needs CAP_SYS_RESOURCE) allows ~${maxReachable} proxied connections; larger counts extrapolated from the measured per-connection cost`);
  }
  ctx.results.memory.ballast = {
    idleFreshMiB: freshMiB,
    idleAfterLoadMiB: afterLoadMiB,
    steps: b,
    perConnectionKiB: perConnectionKiB(b),
    maxReachable,
    fdLimit: limit,
    note: notes.join("; "),
  };
}
