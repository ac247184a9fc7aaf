// The result of one bench run: raw samples per round, medians, ratios, and the markdown table.
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type { ProfileSummary } from "./profile.js";
import { profileMarkdown } from "./profile.js";
import { median, ratio } from "./stats.js";
import type { MachineFacts } from "./tools.js";

export const TARGETS = ["direct", "haproxy", "ballast", "ballast-affinity"] as const;
export type Target = (typeof TARGETS)[number];

/** Data-plane metrics; each holds one value per round and target. */
export const METRICS = {
  "ka.rps": { label: "keep-alive req/s (c=64)", unit: "rps", higherIsBetter: true, target: "≥ 1.0× HAProxy" },
  "ka.p50": { label: "keep-alive p50 ms (c=64)", unit: "ms", higherIsBetter: false },
  "ka.p99": { label: "keep-alive p99 ms (c=64)", unit: "ms", higherIsBetter: false },
  "ka.cpuUsPerReq": { label: "proxy CPU µs per request (keep-alive)", unit: "us", higherIsBetter: false },
  "ka.rssMiB": { label: "proxy RSS MiB under keep-alive load (max)", unit: "MiB", higherIsBetter: false },
  "lat.p50": { label: "light-load p50 ms (c=4)", unit: "ms", higherIsBetter: false },
  "lat.p99": { label: "light-load p99 ms (c=4)", unit: "ms", higherIsBetter: false },
  "nc.rps": { label: "new connections/s (Connection: close, c=32)", unit: "rps", higherIsBetter: true, target: "≥ 0.8× HAProxy" },
  "nc.p99": { label: "new-connection p99 ms", unit: "ms", higherIsBetter: false },
  "nc.cpuUsPerConn": { label: "proxy CPU µs per new connection", unit: "us", higherIsBetter: false },
  "bulk.gbps": { label: "bulk throughput Gbit/s (iperf3, 1 stream)", unit: "gbps", higherIsBetter: true, target: "≥ 1.0× HAProxy" },
  "bulk.cpuMsPerGB": { label: "proxy CPU ms per GB relayed (bulk)", unit: "us", higherIsBetter: false },
  "udp.rate": { label: "UDP datagrams/s echoed (4 flows × 32 in flight)", unit: "rps", higherIsBetter: true },
  "udp.loss": { label: "UDP loss %", unit: "pct", higherIsBetter: false },
  "udp.cpuUsPerDgram": { label: "proxy CPU µs per echoed datagram (both ways)", unit: "us", higherIsBetter: false },
} as const;
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
  samples: Partial<Record<MetricKey, Partial<Record<Target, number[]>>>>;
  runs: Record<string, unknown>[];
  memory: MemoryResult;
  controlPlane: Figure[];
  profiles: Record<string, ProfileSummary>;
  notes: string[];
  error?: string;
}

export function newResults(mode: "quick" | "full", options: Record<string, unknown>): Results {
  return { started: new Date().toISOString(), mode, options, ballast: { available: false, note: "" }, samples: {}, runs: [], memory: {}, controlPlane: [], profiles: {}, notes: [] };
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

export interface DerivedFigures {
  addedP99: { haproxy: number; ballast: number; ratio: number };
}

/** Added light-load p99 over direct, paired per round (same minute), then the median over rounds. */
export function derive(r: Results): DerivedFigures {
  const p99 = r.samples["lat.p99"] ?? {};
  const added = (t: Target) => median((p99[t] ?? []).map((x, i) => x - (p99.direct?.[i] ?? Number.NaN)));
  const h = added("haproxy");
  const b = added("ballast");
  return { addedP99: { haproxy: h, ballast: b, ratio: ratio(b, h) } };
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
  out.push(
    "| figure | direct | HAProxy | Ballast | Ballast (affinity) | Ballast/HAProxy | per-round Ballast/HAProxy | Ballast/direct | target |",
    "|---|---:|---:|---:|---:|---:|---|---:|---|",
  );
  for (const [key, meta] of Object.entries(METRICS) as [MetricKey, (typeof METRICS)[MetricKey]][]) {
    if (!r.samples[key]) continue;
    const v = (t: Target) => med(r, key, t);
    const b = v("ballast");
    const h = v("haproxy");
    const dd = v("direct");
    const tgt = "target" in meta ? meta.target : "";
    let mark = "";
    if (tgt && Number.isFinite(b) && Number.isFinite(h)) {
      const need = key === "nc.rps" ? 0.8 : 1.0;
      mark = ` ${meetsMark(b / h >= need)}`;
    }
    // Rounds are interleaved, so round i of Ballast and of HAProxy ran in the same minute: their ratio
    // per round shows how much of the difference is noise.
    const bs = r.samples[key]?.ballast ?? [];
    const hs = r.samples[key]?.haproxy ?? [];
    const perRound = bs.map((x, i) => ratio(x, hs[i])).filter(Number.isFinite);
    const spread = perRound.length > 1 ? `${Math.min(...perRound).toFixed(2)}–${Math.max(...perRound).toFixed(2)}` : "";
    out.push(
      `| ${meta.label} | ${fmt(dd, meta.unit)} | ${fmt(h, meta.unit)} | ${fmt(b, meta.unit)} | ${fmt(v("ballast-affinity"), meta.unit)} | ${fmtRatio(ratio(b, h))} | ${spread} | ${fmtRatio(ratio(b, dd))} | ${tgt}${mark} |`,
    );
  }
  const d = derive(r);
  if (Number.isFinite(d.addedP99.haproxy)) {
    // A negative "added" latency means the direct p99 was noisier than a proxied one: no verdict.
    const ok = d.addedP99.haproxy > 0 && d.addedP99.ballast > 0 ? ` ${meetsMark(d.addedP99.ballast <= 1.5 * d.addedP99.haproxy)}` : " (noise: no verdict)";
    out.push(`| added p99 ms over direct (light load, per-round pairs) | 0 | ${fmt(d.addedP99.haproxy, "ms")} | ${fmt(d.addedP99.ballast, "ms")} |  | ${fmtRatio(d.addedP99.ratio)} |  |  | ≤ 1.5× HAProxy's${ok} |`);
  }
  out.push("");
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
