// The result of one bench run: raw samples per round, medians, ratios, and the markdown table.
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type { ProfileSummary } from "./profile.js";
import { profileMarkdown } from "./profile.js";
import { median, ratio } from "./stats.js";
import type { MachineFacts } from "./tools.js";

export const TARGETS = ["direct", "haproxy", "ballast", "ballast-log", "ballast-nolog", "ballast-affinity", "ballast-nat", "ballast-dsr", "haproxy-2t", "ballast-w2"] as const;
export type Target = (typeof TARGETS)[number];

export const TARGET_LABELS: Record<Target, string> = {
  direct: "direct",
  haproxy: "HAProxy",
  ballast: "Ballast proxy",
  "ballast-log": "Ballast proxy (own node, access log on)",
  "ballast-nolog": "Ballast proxy (own node, access log off)",
  "ballast-affinity": "Ballast proxy (affinity)",
  "ballast-nat": "Ballast NAT",
  "ballast-dsr": "Ballast DSR",
  "haproxy-2t": "HAProxy, nbthread 2",
  "ballast-w2": "Ballast proxy, workers: 2",
};

/** The Ballast paths compared with HAProxy and direct in the ratio table. */
export const COMPARED = ["ballast", "ballast-nat", "ballast-dsr"] as const;
type Compared = (typeof COMPARED)[number];

/** Data-plane metrics; each holds one value per round and target. */
export const METRICS = {
  "ka.rps": { label: "keep-alive req/s (c=64)", unit: "rps", higherIsBetter: true },
  "ka.p50": { label: "keep-alive p50 ms (c=64)", unit: "ms", higherIsBetter: false },
  "ka.p99": { label: "keep-alive p99 ms (c=64)", unit: "ms", higherIsBetter: false },
  "ka.cpuUsPerReq": { label: "balancer process CPU µs per request (keep-alive; with its children, e.g. nft)", unit: "us", higherIsBetter: false },
  "ka.machineUsPerReq": { label: "whole-machine CPU µs per request (keep-alive; incl. wrk, nginx, softirq)", unit: "us", higherIsBetter: false },
  "ka.rssMiB": { label: "balancer process RSS MiB under keep-alive load (max)", unit: "MiB", higherIsBetter: false },
  "lat.p50": { label: "light-load p50 ms (c=4)", unit: "ms", higherIsBetter: false },
  "lat.p99": { label: "light-load p99 ms (c=4)", unit: "ms", higherIsBetter: false },
  "nc.rps": { label: "new connections/s (Connection: close, c=32)", unit: "rps", higherIsBetter: true },
  "nc.p99": { label: "new-connection p99 ms", unit: "ms", higherIsBetter: false },
  "nc.synRetransPct": { label: "client SYN retransmits per 100 new connections (each waited ≥ 1 s)", unit: "pct", higherIsBetter: false },
  "nc.cpuUsPerConn": { label: "balancer process CPU µs per new connection", unit: "us", higherIsBetter: false },
  "nc.machineUsPerConn": { label: "whole-machine CPU µs per new connection", unit: "us", higherIsBetter: false },
  "bulk.gbps": { label: "bulk throughput Gbit/s (iperf3, 1 stream)", unit: "gbps", higherIsBetter: true },
  "bulk.cpuMsPerGB": { label: "balancer process CPU ms per GB relayed (bulk)", unit: "us", higherIsBetter: false },
  // The download direction (iperf3 -R): the other half of the proxy's relay (backend → client reads).
  "bulkRev.gbps": { label: "bulk throughput Gbit/s, backend → client (iperf3 -R, 1 stream)", unit: "gbps", higherIsBetter: true },
  "bulkRev.cpuMsPerGB": { label: "balancer process CPU ms per GB relayed (bulk, backend → client)", unit: "us", higherIsBetter: false },
  "udp.rate": { label: "UDP datagrams/s echoed (loopback; 4 flows × 32 in flight)", unit: "rps", higherIsBetter: true },
  "udp.loss": { label: "UDP loss % (loopback)", unit: "pct", higherIsBetter: false },
  "udp.cpuUsPerDgram": { label: "proxy CPU µs per echoed datagram, both ways (loopback)", unit: "us", higherIsBetter: false },
} as const;

/**
 * Targets from the issues, as ratios from the same run (the median of per-round ratios, pairedRatio): issue 7 (proxy vs HAProxy),
 * issue 12 (NAT vs HAProxy and direct), issue 14 (DSR vs direct). Never asserted in tests.
 */
export const RATIO_TARGETS: Partial<Record<MetricKey, Partial<Record<Compared, { haproxy?: number; direct?: number }>>>> = {
  "ka.rps": { ballast: { haproxy: 1.0 }, "ballast-nat": { haproxy: 1.3, direct: 0.9 }, "ballast-dsr": { direct: 0.95 } },
  "nc.rps": { ballast: { haproxy: 0.8 }, "ballast-nat": { haproxy: 1.5, direct: 0.9 }, "ballast-dsr": { direct: 0.95 } },
  "bulk.gbps": { ballast: { haproxy: 1.0 }, "ballast-nat": { haproxy: 2.0, direct: 0.9 }, "ballast-dsr": { direct: 0.95 } },
};
export type MetricKey = keyof typeof METRICS;

export interface Figure {
  name: string;
  value: string;
  target?: string;
  /** true/false against the target; null when there is no target or no value. */
  meets: boolean | null;
  note?: string;
  data?: unknown;
}

export interface MemoryStep {
  connections: number;
  rssMiB: number;
  backendOpen: number;
  /** JS heap in use at this step (Ballast only, from /metrics). */
  heapMiB?: number;
}

export interface MemoryResult {
  ballast?: {
    idleFreshMiB: number;
    idleAfterLoadMiB?: number;
    steps: MemoryStep[];
    perConnectionKiB?: number;
    maxReachable: number;
    fdLimit: number;
    note: string;
  };
  haproxy?: { idleMiB: number; steps: MemoryStep[]; perConnectionKiB?: number; note: string };
}

export interface Results {
  started: string;
  finished?: string;
  mode: "quick" | "full";
  options: Record<string, unknown>;
  machine?: MachineFacts;
  backend?: { kind: "nginx" | "node"; note: string };
  ballast: { available: boolean; note: string };
  /** How the data-plane paths were wired (namespaces, addresses), for the report's header. */
  topology?: string;
  /** Load average (1 min) when the TCP rounds began and ended: the machine is shared, figures come with it. */
  dataPlaneLoad?: { before: number; after: number };
  /** RSS of each process of a path at the end of its last keep-alive run (the primary first, then its workers), MiB. */
  processRssMiB?: Partial<Record<Target, number[]>>;
  /** CPU the Ballast node process used while no test ran (health checks, metrics, etcd), ms per second. */
  nodeIdleCpuMsPerS?: number;
  /** Paths that were not measured, with why ("skipped — not built yet: …"). */
  skipped: Partial<Record<Target, string>>;
  samples: Partial<Record<MetricKey, Partial<Record<Target, number[]>>>>;
  runs: Record<string, unknown>[];
  memory: MemoryResult;
  controlPlane: Figure[];
  profiles: Record<string, ProfileSummary>;
  notes: string[];
  error?: string;
}

export function newResults(mode: "quick" | "full", options: Record<string, unknown>): Results {
  return { started: new Date().toISOString(), mode, options, ballast: { available: false, note: "" }, skipped: {}, samples: {}, runs: [], memory: {}, controlPlane: [], profiles: {}, notes: [] };
}

export function addSample(r: Results, metric: MetricKey, target: Target, value: number): void {
  r.samples[metric] ??= {};
  const m = r.samples[metric]!;
  m[target] ??= [];
  m[target]!.push(value);
}

export function med(r: Results, metric: MetricKey, target: Target): number {
  return median(r.samples[metric]?.[target] ?? []);
}

function fmt(v: number, unit: string): string {
  if (!Number.isFinite(v)) return "–";
  switch (unit) {
    case "rps":
      return Math.round(v).toLocaleString("en-US");
    case "ms":
      return v < 10 ? v.toFixed(2) : v.toFixed(1);
    case "us":
      return v.toFixed(1);
    case "gbps":
      return v.toFixed(2);
    case "pct":
      return `${(v * 100).toFixed(2)}%`;
    case "MiB":
      return v.toFixed(1);
    default:
      return String(v);
  }
}

const fmtRatio = (x: number) => (Number.isFinite(x) ? `${x.toFixed(2)}×` : "–");

/** Added light-load p99 over direct, paired per round (same minute), then the median over rounds. */
export function addedP99(r: Results, t: Target): number {
  const p99 = r.samples["lat.p99"] ?? {};
  return median((p99[t] ?? []).map((x, i) => x - (p99.direct?.[i] ?? Number.NaN)));
}

/**
 * Median of the per-round ratios a/b and their range: rounds are interleaved, so round i of both ran
 * in the same minute, and a ratio within a round cancels what drifts between rounds (another
 * process's burst, the machine's memory scanner). The ratio of the two medians does not: in a quiet
 * 3-round run NAT/direct keep-alive was 1.11, 0.44 and 0.97 per round (median 0.97), but 0.81 as a
 * ratio of medians, because NAT's median came from the round where direct was slow and direct's from
 * another. `ofMedians` keeps that figure for the JSON.
 */
export function pairedRatio(r: Results, metric: MetricKey, a: Target, b: Target): { median: number; min: number; max: number; n: number; ofMedians: number } {
  const as = r.samples[metric]?.[a] ?? [];
  const bs = r.samples[metric]?.[b] ?? [];
  const per = as.map((x, i) => ratio(x, bs[i] ?? Number.NaN)).filter(Number.isFinite);
  return { median: per.length ? median(per) : Number.NaN, min: per.length ? Math.min(...per) : Number.NaN, max: per.length ? Math.max(...per) : Number.NaN, n: per.length, ofMedians: ratio(med(r, metric, a), med(r, metric, b)) };
}

function meetsMark(m: boolean | null): string {
  return m === null ? "" : m ? "✓" : "✗";
}

export function markdown(r: Results): string {
  const out: string[] = [];
  const m = r.machine;
  out.push(`# Ballast benchmark (${r.mode})`, "");
  if (m) {
    out.push(
      `${m.date} · commit ${m.gitCommit} · ${m.cpuModel}, ${m.cores} cores, ${m.memoryGiB} GiB · kernel ${m.kernel} · Node ${m.node} · ${m.haproxy} · ${m.wrk} · ${m.iperf3} · ${m.etcd}` +
        (m.nginx ? ` · ${m.nginx}` : "") +
        ` · open files ${m.nofileSoft}/${m.nofileHard} · load average at start ${m.loadAverage}`,
      "",
    );
  }
  const rounds = Number(r.options.rounds ?? 0);
  out.push(
    `Medians of ${rounds} interleaved round(s). Backend: ${r.backend?.kind ?? "?"} (${r.backend?.note ?? ""}). ` +
      `Ballast: ${r.ballast.available ? "etcd-backed node, health checks and metrics on" : r.ballast.note}.`,
    "",
  );
  out.push("## Data plane", "");
  if (r.topology) out.push(r.topology, "");
  const present = TARGETS.filter((t) => Object.values(r.samples).some((m) => (m?.[t]?.length ?? 0) > 0));
  for (const [t, why] of Object.entries(r.skipped)) out.push(`- **${TARGET_LABELS[t as Target]}**: ${why}`);
  if (Object.keys(r.skipped).length) out.push("");
  out.push(`| figure | ${present.map((t) => TARGET_LABELS[t]).join(" | ")} |`, `|---|${present.map(() => "---:").join("|")}|`);
  for (const [key, meta] of Object.entries(METRICS) as [MetricKey, (typeof METRICS)[MetricKey]][]) {
    if (!r.samples[key]) continue;
    out.push(`| ${meta.label} | ${present.map((t) => fmt(med(r, key, t), meta.unit)).join(" | ")} |`);
  }
  if (present.includes("direct") && present.length > 1) {
    out.push(`| added p99 ms over direct (light load, per-round pairs) | ${present.map((t) => (t === "direct" ? "0" : fmt(addedP99(r, t), "ms"))).join(" | ")} |`);
  }
  out.push("");
  const compared = COMPARED.filter((t) => present.includes(t));
  if (compared.length && (present.includes("haproxy") || present.includes("direct"))) {
    out.push(
      "### Ratios (same run; median of rounds, per-round range in brackets; ✓/✗ against the issue's target)",
      "",
      `| figure | ${compared.flatMap((t) => [`${TARGET_LABELS[t]} / HAProxy`, `${TARGET_LABELS[t]} / direct`]).join(" | ")} |`,
      `|---|${compared.flatMap(() => ["---", "---"]).join("|")}|`,
    );
    const cell = (key: MetricKey, t: Compared, peer: "haproxy" | "direct"): string => {
      const x = pairedRatio(r, key, t, peer);
      if (!Number.isFinite(x.median)) return "–";
      const range = x.n > 1 ? ` (${x.min.toFixed(2)}–${x.max.toFixed(2)})` : "";
      const need = RATIO_TARGETS[key]?.[t]?.[peer];
      return `${fmtRatio(x.median)}${range}${need !== undefined ? ` ${meetsMark(x.median >= need)} ≥ ${need}` : ""}`;
    };
    for (const key of ["ka.rps", "nc.rps", "bulk.gbps", "bulkRev.gbps", "lat.p99", "ka.cpuUsPerReq", "nc.cpuUsPerConn", "ka.machineUsPerReq", "nc.machineUsPerConn"] as MetricKey[]) {
      if (!r.samples[key]) continue;
      out.push(`| ${METRICS[key].label} | ${compared.flatMap((t) => [cell(key, t, "haproxy"), key.includes("cpuUs") ? "" : cell(key, t, "direct")]).join(" | ")} |`);
    }
    if (present.includes("haproxy")) {
      const h = addedP99(r, "haproxy");
      out.push(
        `| added p99 over direct | ${compared
          .flatMap((t) => {
            const b = addedP99(r, t);
            // A negative "added" latency means the direct p99 was noisier than a proxied one: no verdict.
            if (!(h > 0 && b > 0)) return ["noise: no verdict", ""];
            return [`${fmtRatio(ratio(b, h))}${t === "ballast" ? ` ${meetsMark(b <= 1.5 * h)} ≤ 1.5` : ""}`, ""];
          })
          .join(" | ")} |`,
      );
    }
    out.push(
      "",
      "For rates higher is better; for latency and CPU a ratio > 1 means the path costs more. Balancer CPU for NAT and DSR is the Ballast node process's own CPU (with its nft/conntrack children): the kernel forwards in softirq, charged to no process; the whole-machine row shows that work.",
      "",
    );
    const idle = r.nodeIdleCpuMsPerS;
    if (idle !== undefined && Number.isFinite(idle)) {
      const per = (t: Target) => {
        const rps = med(r, "ka.rps", t);
        return Number.isFinite(rps) && rps > 0 ? `${TARGET_LABELS[t]}'s keep-alive rate that alone is ${((idle * 1000) / rps).toFixed(1)} µs per request` : "";
      };
      const at = (["ballast-nat", "ballast-dsr"] as Target[]).map(per).filter(Boolean);
      out.push(
        `The Ballast node process uses ${idle.toFixed(1)} ms of CPU per second with no test running (health checks, metric scrapes, etcd, and its nft children reading counters)${at.length ? `; at ${at.join(", at ")}` : ""}: the kernel paths' per-request process CPU is that baseline, not forwarding work.`,
        "",
      );
    }
  }
  out.push(...accessLogSection(r, present));
  out.push(...workersSection(r, present));
  const mem = r.memory;
  if (mem.ballast || mem.haproxy) {
    out.push("## Memory (idle connections)", "", "| | idle | " + "connections → RSS MiB | per connection | 10k | 50k | note |", "|---|---:|---|---:|---:|---:|---|");
    if (mem.ballast) {
      const b = mem.ballast;
      const steps = b.steps.map((s) => `${s.connections.toLocaleString("en-US")} → ${s.rssMiB.toFixed(1)}`).join(", ");
      const at = (n: number) => {
        const s = b.steps.find((x) => x.connections === n);
        if (s) return `${s.rssMiB.toFixed(1)} MiB`;
        if (b.perConnectionKiB === undefined || b.steps.length === 0) return "–";
        const last = b.steps[b.steps.length - 1];
        return `≈ ${(last.rssMiB + ((n - last.connections) * b.perConnectionKiB) / 1024).toFixed(0)} MiB (extrapolated)`;
      };
      out.push(`| Ballast | ${b.idleFreshMiB.toFixed(1)} MiB${b.idleAfterLoadMiB ? ` (${b.idleAfterLoadMiB.toFixed(1)} after load)` : ""} | ${steps} | ${b.perConnectionKiB?.toFixed(1) ?? "–"} KiB | ${at(10_000)} | ${at(50_000)} | ${b.note} |`);
    }
    if (mem.haproxy) {
      const h = mem.haproxy;
      const steps = h.steps.map((s) => `${s.connections.toLocaleString("en-US")} → ${s.rssMiB.toFixed(1)}`).join(", ");
      out.push(`| HAProxy | ${h.idleMiB.toFixed(1)} MiB | ${steps} | ${h.perConnectionKiB?.toFixed(1) ?? "–"} KiB | | | ${h.note} |`);
    }
    out.push("", "Target: 50k idle connections ≤ 1 GiB RSS.", "");
  }
  if (r.controlPlane.length) {
    out.push("## Control plane", "", "| figure | value | target | note |", "|---|---|---|---|");
    for (const f of r.controlPlane) out.push(`| ${f.name} | ${f.value} | ${f.target ?? ""} ${meetsMark(f.meets)} | ${f.note ?? ""} |`);
    out.push("");
  }
  for (const [name, p] of Object.entries(r.profiles)) out.push(profileMarkdown(`CPU profile: ${name}`, p));
  if (r.notes.length) out.push("## Notes", "", ...r.notes.map((n) => `- ${n}`), "");
  if (r.error) out.push(`**Run failed:** ${r.error}`, "");
  return out.join("\n");
}

/**
 * The access log's cost: the same proxied service on two nodes alike but for the switch, one with the
 * access log on (the default: a line per finished connection, at most 1000 lines/s, batched every
 * 200 ms to stdout) and one with it off, in the same interleaved rounds.
 */
function accessLogSection(r: Results, present: readonly Target[]): string[] {
  if (!present.includes("ballast-log") || !present.includes("ballast-nolog")) return [];
  const rows: Array<[string, MetricKey]> = [
    ["keep-alive req/s (c=64)", "ka.rps"],
    ["new connections/s (c=32)", "nc.rps"],
    ["process CPU µs per request (keep-alive)", "ka.cpuUsPerReq"],
    ["process CPU µs per new connection", "nc.cpuUsPerConn"],
  ];
  const out = [
    "### Access log cost (Ballast proxy: two nodes with the same service and backends, alike but for `accessLog.enabled`)",
    "",
    "| access log | keep-alive req/s | new conn/s | CPU µs per request | CPU µs per new connection |",
    "|---|---:|---:|---:|---:|",
  ];
  for (const [label, t] of [["on (default: ≤ 1000 lines/s, batched)", "ballast-log"], ["off (`accessLog.enabled: false`)", "ballast-nolog"]] as const) {
    out.push(`| ${label} | ${rows.map(([, k]) => fmt(med(r, k, t), METRICS[k].unit)).join(" | ")} |`);
  }
  const ratios = rows.map(([name, k]) => `${name} ${fmtRatio(pairedRatio(r, k, "ballast-log", "ballast-nolog").median)}`);
  const load = r.dataPlaneLoad;
  out.push(
    "",
    `On / off: ${ratios.join(", ")}. Keep-alive runs hold 64 connections, so they log ~64 lines; every new connection is a line, over 1000/s counted in \`ballast_access_log_suppressed_total\` instead of written.` +
      (load ? ` Load average (1 min) ${load.before.toFixed(2)} when the rounds began, ${load.after.toFixed(2)} when they ended (${r.machine?.cores ?? "?"} cores; other work on the machine competes with both nodes alike).` : ""),
    "",
  );
  return out;
}

/**
 * Issue 18: Ballast `workers: 2` against HAProxy `nbthread 2` next to the 1-worker / 1-thread pair
 * (`ballast`, `haproxy`), from the same interleaved rounds, with the issue's targets as ratios.
 */
function workersSection(r: Results, present: readonly Target[]): string[] {
  if (!present.includes("ballast-w2") || !present.includes("haproxy-2t")) return [];
  const pairs = [
    ["1 worker / 1 thread", "ballast", "haproxy"],
    ["2 workers / 2 threads", "ballast-w2", "haproxy-2t"],
  ] as const;
  const rows: Array<[string, MetricKey]> = [
    ["keep-alive req/s", "ka.rps"],
    ["new conn/s", "nc.rps"],
    ["bulk Gbit/s (1 stream)", "bulk.gbps"],
    ["CPU µs per request", "ka.cpuUsPerReq"],
    ["CPU µs per new connection", "nc.cpuUsPerConn"],
    ["CPU ms per GB (bulk)", "bulk.cpuMsPerGB"],
  ];
  const rss = (t: Target) => (r.processRssMiB?.[t] ?? []).map((x) => x.toFixed(0)).join(" + ") || "–";
  const out = [
    "### Workers (issue 18: Ballast `workers: 2` vs HAProxy `nbthread 2`, same rounds; CPU summed over the proxy's processes)",
    "",
    `| | ${rows.map(([l]) => l).join(" | ")} | added p99 ms (c=4) | RSS per process MiB (primary + workers) |`,
    `|---|${rows.map(() => "---:").join("|")}|---:|---|`,
  ];
  for (const [, b, h] of pairs) {
    for (const t of [h, b]) out.push(`| ${TARGET_LABELS[t]} | ${rows.map(([, k]) => fmt(med(r, k, t), METRICS[k].unit)).join(" | ")} | ${fmt(addedP99(r, t), "ms")} | ${rss(t)} |`);
  }
  const mark = (x: number, ok: (x: number) => boolean, rule: string) => (Number.isFinite(x) ? `${fmtRatio(x)} ${meetsMark(ok(x))} ${rule}` : "–");
  out.push("", "| ratio | 1 worker / 1 thread | 2 workers / 2 threads |", "|---|---|---|");
  const perPair = (f: (b: Target, h: Target) => string) => pairs.map(([, b, h]) => f(b, h)).join(" | ");
  out.push(`| Ballast ÷ HAProxy, CPU per keep-alive request | ${perPair((b, h) => mark(pairedRatio(r, "ka.cpuUsPerReq", b, h).median, (x) => x <= 1.4, "≤ 1.4"))} |`);
  out.push(`| Ballast ÷ HAProxy, CPU per new connection | ${perPair((b, h) => mark(pairedRatio(r, "nc.cpuUsPerConn", b, h).median, (x) => x <= 2.0, "≤ 2.0"))} |`);
  out.push(`| Ballast ÷ HAProxy, CPU per GB relayed | ${perPair((b, h) => mark(pairedRatio(r, "bulk.cpuMsPerGB", b, h).median, (x) => x <= 1.5, "≤ 1.5"))} |`);
  out.push(`| Ballast ÷ HAProxy, bulk Gbit/s | ${mark(pairedRatio(r, "bulk.gbps", "ballast", "haproxy").median, (x) => x >= 0.8, "≥ 0.8")} | ${fmtRatio(pairedRatio(r, "bulk.gbps", "ballast-w2", "haproxy-2t").median)} |`);
  out.push(`| Ballast ÷ HAProxy, keep-alive req/s | ${perPair((b, h) => fmtRatio(pairedRatio(r, "ka.rps", b, h).median))} |`);
  out.push(`| Ballast ÷ HAProxy, new conn/s | ${perPair((b, h) => fmtRatio(pairedRatio(r, "nc.rps", b, h).median))} |`);
  out.push("", "| 2 ÷ 1 | keep-alive req/s | new conn/s | bulk Gbit/s (1 stream: one connection is one worker's) |", "|---|---|---|---|");
  for (const [name, two, one] of [["Ballast workers: 2 ÷ 1", "ballast-w2", "ballast"], ["HAProxy nbthread 2 ÷ 1", "haproxy-2t", "haproxy"]] as const) {
    const x = (k: MetricKey) => pairedRatio(r, k, two, one).median;
    const target = (k: MetricKey) => (two === "ballast-w2" ? mark(x(k), (v) => v >= 1.6, "≥ 1.6") : fmtRatio(x(k)));
    out.push(`| ${name} | ${target("ka.rps")} | ${target("nc.rps")} | ${fmtRatio(x("bulk.gbps"))} |`);
  }
  const load = r.dataPlaneLoad;
  out.push(
    "",
    `wrk, iperf3, nginx and the proxies share the machine's ${r.machine?.cores ?? "?"} cores, so a second worker competes with the load generator and the backends: the 2 ÷ 1 ratios are what this machine allows, not what the proxy would do on cores of its own.` +
      (load ? ` Load average (1 min) ${load.before.toFixed(2)} when the rounds began, ${load.after.toFixed(2)} when they ended.` : "") +
      " The 1-worker Ballast is the main node (its CPU includes its nft children for the kernel paths; see the idle CPU above).",
    "",
  );
  return out;
}

export function writeResults(dir: string, r: Results): { json: string; md: string } {
  mkdirSync(dir, { recursive: true });
  const stamp = r.started.replace(/[:.]/g, "-");
  const json = join(dir, `bench-${r.mode}-${stamp}.json`);
  const md = join(dir, `bench-${r.mode}-${stamp}.md`);
  writeFileSync(json, `${JSON.stringify(r, (_k, v) => (typeof v === "number" && !Number.isFinite(v) ? null : v), 2)}\n`);
  const text = markdown(r);
  writeFileSync(md, text);
  writeFileSync(join(dir, `latest-${r.mode}.md`), text);
  writeFileSync(join(dir, `latest-${r.mode}.json`), `${JSON.stringify(r, (_k, v) => (typeof v === "number" && !Number.isFinite(v) ? null : v), 2)}\n`);
  return { json, md };
}
