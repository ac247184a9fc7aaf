// The measured rounds: for each test, every path one after another (interleaved), so drift of the
// machine hits all of them alike. TCP paths run from the client namespace; UDP runs on loopback.
import os from "node:os";
import type { Context } from "./context.js";
import { type Dest, iperf, synRetransmits, udpBlast, wrk } from "./load.js";
import { machineBusySeconds, processTree, rssBytes, sleep, treeCpuSeconds } from "./net.js";
import { addSample, TARGET_LABELS, type Target } from "./report.js";
import { median } from "./stats.js";

export interface Paths {
  /** Where each path's HTTP runs connect. */
  http: Partial<Record<Target, Dest>>;
  /** Where each path's iperf3 runs connect (control and data connection reach the same backend). */
  bulk: Partial<Record<Target, Dest>>;
  /** Process whose CPU and RSS are charged to each path (none for direct). */
  pid: Partial<Record<Target, () => number>>;
}

/** Samples a process's RSS until stopped; returns the maximum in MiB. */
function rssSampler(pid: number | undefined): () => number {
  if (!pid) return () => Number.NaN;
  let max = rssBytes(pid);
  const timer = setInterval(() => {
    const v = rssBytes(pid);
    if (v > max) max = v;
  }, 250);
  return () => {
    clearInterval(timer);
    return max / 2 ** 20;
  };
}

/**
 * CPU seconds of `pid` with its children (a node's workers, its nft runs; NaN without a pid) and of the
 * whole machine, from now until the returned function is called.
 */
function cpuMeter(pid: number | undefined): () => { proc: number; machine: number } {
  const p0 = pid ? treeCpuSeconds(pid) : Number.NaN;
  const m0 = machineBusySeconds();
  return () => ({ proc: pid ? treeCpuSeconds(pid) - p0 : Number.NaN, machine: machineBusySeconds() - m0 });
}

const label = (t: Target) => TARGET_LABELS[t].padEnd(26);

export async function tcpRounds(ctx: Context, paths: Paths, targets: Target[]): Promise<void> {
  const { opts, results, log } = ctx;
  const d = opts.durationS;
  const short = Math.max(1, Math.round(d / 2));
  // Warm-up, not recorded: JIT of the Node processes, ARP and conntrack entries, nginx's first
  // connections. Without it whichever path runs first (direct) pays for all of them.
  // --quick warms the backend only (through direct), which is what skewed the first path most.
  log("warm-up (not recorded) …");
  for (const target of opts.quick ? targets.slice(0, 1) : targets) await wrk(paths.http[target]!, { connections: 8, durationS: opts.quick ? 1 : 2, close: false });
  // Pauses between runs let TIME_WAIT and queues drain; --quick proves the plumbing and keeps them short.
  const pause = (ms: number) => sleep(opts.quick ? Math.min(ms, 200) : ms);
  const all = targets;
  for (let round = 1; round <= opts.rounds; round++) {
    log(`round ${round}/${opts.rounds}`);
    // Each round starts one path later: no path always runs first after a pause or right after the
    // same neighbour (the first keep-alive run of a round came after the bulk runs' TIME_WAIT and
    // page-cache churn, and that was always direct).
    const targets = all.map((_, i) => all[(i + round - 1) % all.length]);
    for (const target of targets) {
      const pid = paths.pid[target]?.();
      const cpu = cpuMeter(pid);
      const nodeCpu = cpuMeter(paths.pid.ballast?.());
      const stopRss = rssSampler(pid);
      const ka = await wrk(paths.http[target]!, { connections: 64, durationS: d, close: false });
      const used = cpu();
      const rss = stopRss();
      addSample(results, "ka.rps", target, ka.rps);
      addSample(results, "ka.p50", target, ka.p50Ms);
      addSample(results, "ka.p99", target, ka.p99Ms);
      addSample(results, "ka.machineUsPerReq", target, (used.machine * 1e6) / Math.max(1, ka.requests));
      if (pid) addSample(results, "ka.cpuUsPerReq", target, (used.proc * 1e6) / Math.max(1, ka.requests));
      if (pid) addSample(results, "ka.rssMiB", target, rss);
      if (pid) {
        results.processRssMiB ??= {};
        results.processRssMiB[target] = processTree(pid).map((p) => rssBytes(p) / 2 ** 20);
      }
      results.runs.push({ round, test: "keep-alive", target, rps: ka.rps, p50Ms: ka.p50Ms, p99Ms: ka.p99Ms, errors: ka.errors, cpuS: used.proc, machineCpuS: used.machine, nodeCpuS: nodeCpu().proc });
      log(`  keep-alive   ${label(target)} ${Math.round(ka.rps).toString().padStart(7)} req/s  p50 ${ka.p50Ms.toFixed(2)} ms  p99 ${ka.p99Ms.toFixed(2)} ms${ka.errors ? `  errors ${ka.errors}` : ""}`);
      if (ka.requests === 0) throw new Error(`keep-alive through ${target} served no request:\n${ka.raw}`);
      await pause(500);
    }
    for (const target of targets) {
      const lat = await wrk(paths.http[target]!, { connections: 4, durationS: short, close: false });
      addSample(results, "lat.p50", target, lat.p50Ms);
      addSample(results, "lat.p99", target, lat.p99Ms);
      results.runs.push({ round, test: "light-load", target, rps: lat.rps, p50Ms: lat.p50Ms, p99Ms: lat.p99Ms, errors: lat.errors });
      log(`  light load   ${label(target)} p50 ${lat.p50Ms.toFixed(3)} ms  p99 ${lat.p99Ms.toFixed(3)} ms`);
      await pause(300);
    }
    // New connections run in 1-second slices, every path once per slice in a rotating order, and a
    // path's figure for the round sums its slices. New connections/s on this machine drift by 20–40 %
    // over tens of seconds (seen in runs of the same path a minute apart), more than the differences
    // measured; paths measured within seconds of each other see the same drift, so the per-round
    // ratios (the targets) compare like with like. 1-second slices of the same two paths gave paired
    // ratios within ±5 % of their median, against ±20 % for 5-second runs a round apart.
    // wrk gets a thread per core (up to 4) for new connections: with one thread the client itself was
    // the limit of the fast paths. Measured here (2 cores, alternating 1-second runs, medians of 8):
    // direct 11,199 conn/s with -t1 and 14,017 with -t2, NAT 11,046 and 13,259, HAProxy 7,827 and
    // 7,680 (HAProxy is limited by its own CPU either way, so the second thread takes nothing from it).
    const threads = Math.max(1, Math.min(4, os.cpus().length));
    const slices = Math.max(1, Math.round(d));
    const sliceS = 1;
    type Acc = { requests: number; seconds: number; errors: number; proc: number; machine: number; node: number; syn: number | null; p50: number[]; p99: number[] };
    const acc = new Map<Target, Acc>(targets.map((t) => [t, { requests: 0, seconds: 0, errors: 0, proc: 0, machine: 0, node: 0, syn: 0, p50: [], p99: [] }]));
    for (let slice = 0; slice < slices; slice++) {
      for (const target of targets.map((_, i) => targets[(i + slice) % targets.length])) {
        const a = acc.get(target)!;
        const pid = paths.pid[target]?.();
        const cpu = cpuMeter(pid);
        const nodeCpu = cpuMeter(paths.pid.ballast?.());
        const syn0 = await synRetransmits(paths.http[target]!.ns);
        const nc = await wrk(paths.http[target]!, { connections: 32, durationS: sliceS, close: true, threads });
        const used = cpu();
        const syn1 = await synRetransmits(paths.http[target]!.ns);
        a.syn = syn0 !== null && syn1 !== null && a.syn !== null ? a.syn + syn1 - syn0 : null;
        a.requests += nc.requests;
        a.seconds += nc.rps > 0 ? nc.requests / nc.rps : sliceS;
        a.errors += nc.errors;
        a.proc += used.proc;
        a.machine += used.machine;
        a.node += nodeCpu().proc;
        a.p50.push(nc.p50Ms);
        a.p99.push(nc.p99Ms);
        if (nc.requests === 0) throw new Error(`new connections through ${target} served no request:\n${nc.raw}`);
        await pause(200);
      }
    }
    for (const target of targets) {
      const a = acc.get(target)!;
      const pid = paths.pid[target]?.();
      const rps = a.requests / Math.max(1e-9, a.seconds);
      // Latency percentiles do not add up across runs: the median of the slices' own p50 and p99.
      const p50 = median(a.p50);
      const p99 = median(a.p99);
      if (a.syn !== null) addSample(results, "nc.synRetransPct", target, (a.syn * 100) / Math.max(1, a.requests));
      addSample(results, "nc.rps", target, rps);
      addSample(results, "nc.p99", target, p99);
      addSample(results, "nc.machineUsPerConn", target, (a.machine * 1e6) / Math.max(1, a.requests));
      if (pid) addSample(results, "nc.cpuUsPerConn", target, (a.proc * 1e6) / Math.max(1, a.requests));
      results.runs.push({ round, test: "new-connections", target, slices, threads, rps, p50Ms: p50, p99Ms: p99, errors: a.errors, cpuS: a.proc, machineCpuS: a.machine, nodeCpuS: a.node });
      log(`  new conns    ${label(target)} ${Math.round(rps).toString().padStart(7)} conn/s p99 ${p99.toFixed(2)} ms (${slices} slices)${a.errors ? `  errors ${a.errors}` : ""}`);
    }
    // TIME_WAIT of the closed connections drains before the bulk runs.
    await pause(1000);
    for (const target of targets) {
      const dest = paths.bulk[target];
      if (!dest) continue;
      const pid = paths.pid[target]?.();
      const cpu = cpuMeter(pid);
      const r = await iperf(dest, short);
      const used = cpu();
      addSample(results, "bulk.gbps", target, r.gbps);
      if (pid && r.bytes > 0) addSample(results, "bulk.cpuMsPerGB", target, (used.proc * 1000) / (r.bytes / 1e9));
      results.runs.push({ round, test: "bulk", target, gbps: r.gbps, error: r.error, cpuS: used.proc, machineCpuS: used.machine });
      log(`  bulk         ${label(target)} ${Number.isFinite(r.gbps) ? r.gbps.toFixed(2) : "–"} Gbit/s${r.error ? `  (${r.error})` : ""}`);
      if (!(r.bytes > 0)) throw new Error(`bulk through ${target}: iperf3 moved nothing (${r.error ?? "no result"})`);
      await pause(500);
    }
    for (const target of targets) {
      const dest = paths.bulk[target];
      if (!dest) continue;
      const pid = paths.pid[target]?.();
      const cpu = cpuMeter(pid);
      const r = await iperf(dest, short, true);
      const used = cpu();
      addSample(results, "bulkRev.gbps", target, r.gbps);
      if (pid && r.bytes > 0) addSample(results, "bulkRev.cpuMsPerGB", target, (used.proc * 1000) / (r.bytes / 1e9));
      results.runs.push({ round, test: "bulk-reverse", target, gbps: r.gbps, error: r.error, cpuS: used.proc, machineCpuS: used.machine });
      log(`  bulk reverse ${label(target)} ${Number.isFinite(r.gbps) ? r.gbps.toFixed(2) : "–"} Gbit/s${r.error ? `  (${r.error})` : ""}`);
      if (!(r.bytes > 0)) throw new Error(`bulk (reverse) through ${target}: iperf3 moved nothing (${r.error ?? "no result"})`);
      await pause(500);
    }
  }
}

/** UDP on loopback: direct (the echo itself) and Ballast proxy; HAProxy has no UDP. */
export async function udpRounds(ctx: Context, ports: Partial<Record<Target, number>>, pids: Partial<Record<Target, () => number>>): Promise<void> {
  const { opts, results, log, group } = ctx;
  const short = Math.max(1, Math.round(opts.durationS / 2));
  const targets = (Object.keys(ports) as Target[]).filter((t) => ports[t]);
  for (let round = 1; round <= opts.rounds; round++) {
    for (const target of targets) {
      const pid = pids[target]?.();
      const cpu = cpuMeter(pid);
      const u = await udpBlast(group, ports[target]!, short * 1000);
      const used = cpu();
      addSample(results, "udp.rate", target, u.rate);
      addSample(results, "udp.loss", target, u.loss);
      if (pid && u.received > 0) addSample(results, "udp.cpuUsPerDgram", target, (used.proc * 1e6) / u.received);
      results.runs.push({ round, test: "udp", target, ...u });
      log(`  udp          ${label(target)} ${Math.round(u.rate).toString().padStart(7)} dgram/s  loss ${(u.loss * 100).toFixed(2)}%${u.error ? `  (${u.error})` : ""}`);
      if (u.received === 0) throw new Error(`UDP through ${target}: nothing echoed (${u.error ?? "no reply"})`);
      await sleep(300);
    }
  }
}
