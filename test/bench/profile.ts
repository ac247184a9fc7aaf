// Reads a V8 .cpuprofile (node --cpu-prof) and ranks functions by self time, grouped by who owns the code.
import { readFileSync } from "node:fs";
import { SourceMap } from "node:module";
import { fileURLToPath } from "node:url";

interface CallFrame {
  functionName: string;
  url: string;
  lineNumber: number;
  columnNumber: number;
}

interface ProfileNode {
  id: number;
  callFrame: CallFrame;
  children?: number[];
}

interface CpuProfile {
  nodes: ProfileNode[];
  samples: number[];
  timeDeltas: number[];
}

export interface FunctionCost {
  name: string;
  where: string;
  owner: string;
  selfPct: number;
  selfPctBusy: number;
}

export interface ProfileSummary {
  file: string;
  samples: number;
  durationMs: number;
  busyPct: number;
  byOwner: Record<string, number>;
  top: FunctionCost[];
  /** Ballast's own functions by inclusive time (self + callees): which of our code paths the cost sits under. */
  ballastInclusive: { name: string; where: string; inclusivePctBusy: number }[];
}

function owner(cf: CallFrame): string {
  if (cf.functionName === "(idle)") return "idle";
  if (cf.functionName === "(garbage collector)") return "gc";
  if (cf.functionName === "(program)" || cf.url === "") return cf.functionName.startsWith("(") ? "v8/native" : "native";
  if (cf.url.startsWith("node:")) return "node core";
  const nm = /node_modules\/((?:@[^/]+\/)?[^/]+)/.exec(cf.url);
  if (nm) return `npm:${nm[1]}`;
  if (/\/dist\/(node|shared)\//.test(cf.url)) return "ballast";
  return "other";
}

const maps = new Map<string, SourceMap | null>();

/** "node/data/tcp.ts:204" for compiled Ballast code (through the .js.map next to it), else the compiled place. */
function where(cf: CallFrame): string {
  if (!cf.url) return "";
  if (cf.url.startsWith("file://") && /\/dist\/(node|shared)\//.test(cf.url)) {
    const file = fileURLToPath(cf.url);
    let map = maps.get(file);
    if (map === undefined) {
      try {
        map = new SourceMap(JSON.parse(readFileSync(`${file}.map`, "utf8")));
      } catch {
        map = null;
      }
      maps.set(file, map);
    }
    const e = map?.findEntry(cf.lineNumber, cf.columnNumber) as { originalSource?: string; originalLine?: number } | undefined;
    if (e?.originalSource && e.originalLine !== undefined) {
      const src = e.originalSource.replace(/^.*?\/((node|shared)\/)/, "$1");
      return `${src}:${e.originalLine + 1}`;
    }
  }
  return `${shortUrl(cf.url)}:${cf.lineNumber + 1}`;
}

function shortUrl(url: string): string {
  const i = url.indexOf("/dist/");
  if (i >= 0) return url.slice(i + 6);
  const nm = url.lastIndexOf("node_modules/");
  if (nm >= 0) return url.slice(nm + 13);
  return url.replace(/^file:\/\//, "");
}

/** `skipMs`: leave out the first part of the profile (node start-up: module loading, config, first sync). */
export function summarizeProfile(file: string, skipMs = 0, topN = 20): ProfileSummary {
  const prof = JSON.parse(readFileSync(file, "utf8")) as CpuProfile;
  const byId = new Map<number, ProfileNode>();
  for (const n of prof.nodes) byId.set(n.id, n);
  // Time of sample i is the delta to the next sample.
  const selfUs = new Map<number, number>();
  let total = 0;
  let at = 0;
  let counted = 0;
  for (let i = 0; i < prof.samples.length; i++) {
    at += Math.max(prof.timeDeltas[i] ?? 0, 0);
    if (at < skipMs * 1000) continue;
    counted++;
    const dt = prof.timeDeltas[i + 1] ?? prof.timeDeltas[i] ?? 0;
    const us = Math.max(dt, 0);
    selfUs.set(prof.samples[i], (selfUs.get(prof.samples[i]) ?? 0) + us);
    total += us;
  }
  const byFn = new Map<string, { cf: CallFrame; us: number }>();
  const byOwner: Record<string, number> = {};
  let idle = 0;
  for (const [id, us] of selfUs) {
    const cf = byId.get(id)?.callFrame;
    if (!cf) continue;
    const o = owner(cf);
    byOwner[o] = (byOwner[o] ?? 0) + us;
    if (o === "idle") idle += us;
    const key = `${cf.functionName}|${cf.url}|${cf.lineNumber}`;
    const e = byFn.get(key);
    if (e) e.us += us;
    else byFn.set(key, { cf, us });
  }
  const busy = total - idle;
  const pct = (us: number, of: number) => (of > 0 ? Math.round((us / of) * 1000) / 10 : 0);
  const top = [...byFn.values()]
    .filter((e) => owner(e.cf) !== "idle")
    .sort((a, b) => b.us - a.us)
    .slice(0, topN)
    .map((e) => ({
      name: e.cf.functionName || "(anonymous)",
      where: where(e.cf),
      owner: owner(e.cf),
      selfPct: pct(e.us, total),
      selfPctBusy: pct(e.us, busy),
    }));
  // Inclusive time of Ballast functions: walk each sampled node's stack once per distinct function.
  const parent = new Map<number, number>();
  for (const n of prof.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
  const inclusive = new Map<string, { cf: CallFrame; us: number }>();
  for (const [id, us] of selfUs) {
    if (byId.get(id)?.callFrame.functionName === "(idle)") continue;
    const seen = new Set<string>();
    for (let cur: number | undefined = id; cur !== undefined; cur = parent.get(cur)) {
      const cf = byId.get(cur)?.callFrame;
      if (!cf || owner(cf) !== "ballast") continue;
      const key = `${cf.functionName}|${cf.url}|${cf.lineNumber}`;
      if (seen.has(key)) continue;
      seen.add(key);
      const e = inclusive.get(key);
      if (e) e.us += us;
      else inclusive.set(key, { cf, us });
    }
  }
  const ballastInclusive = [...inclusive.values()]
    .sort((a, b) => b.us - a.us)
    .slice(0, 12)
    .map((e) => ({ name: e.cf.functionName || "(anonymous)", where: where(e.cf), inclusivePctBusy: pct(e.us, busy) }));
  const owners: Record<string, number> = {};
  for (const [k, v] of Object.entries(byOwner)) owners[k] = pct(v, total);
  return { file, samples: counted, durationMs: Math.round(total / 1000), busyPct: pct(busy, total), byOwner: owners, top, ballastInclusive };
}

export function profileMarkdown(title: string, s: ProfileSummary): string {
  const lines = [
    `### ${title}`,
    "",
    `${s.samples} samples over ${s.durationMs} ms; busy ${s.busyPct}% of the time. Self time by owner: ` +
      Object.entries(s.byOwner)
        .sort((a, b) => b[1] - a[1])
        .map(([k, v]) => `${k} ${v}%`)
        .join(", "),
    "",
    "| function | where | owner | self % (all) | self % (busy) |",
    "|---|---|---|---:|---:|",
    ...s.top.map((f) => `| \`${f.name}\` | ${f.where} | ${f.owner} | ${f.selfPct} | ${f.selfPctBusy} |`),
    "",
    "Ballast functions by inclusive time (their own work plus everything they call), % of busy time: " +
      s.ballastInclusive.map((f) => `\`${f.name}\` (${f.where}) ${f.inclusivePctBusy}%`).join(", "),
    "",
  ];
  return lines.join("\n");
}
