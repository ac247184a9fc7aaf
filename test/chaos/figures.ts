// Figures the chaos scenarios measure: each scenario records them as it goes (one JSON line each, in
// a file shared by all test files), prints its own table, and the global teardown prints them all.
import { appendFileSync, existsSync, readFileSync } from "node:fs";
import { resolve } from "node:path";

export const FIGURES_FILE = resolve(process.cwd(), "test-artifacts/chaos/figures.jsonl");

export interface Figure {
  scenario: string;
  figure: string;
  value: number | string;
  unit?: string;
  /** The bound the scenario asserts, as text ("≤ 3000 ms", "= 0"), when there is one. */
  bound?: string;
}

const recorded: Figure[] = [];

export function recordFigure(f: Figure): void {
  recorded.push(f);
  appendFileSync(FIGURES_FILE, `${JSON.stringify(f)}\n`);
}

/** The figures recorded so far by this test file, optionally only one scenario's. */
export function figures(scenario?: string): Figure[] {
  return scenario ? recorded.filter((f) => f.scenario === scenario) : [...recorded];
}

export function readFiguresFile(path = FIGURES_FILE): Figure[] {
  if (!existsSync(path)) return [];
  return readFileSync(path, "utf8")
    .split("\n")
    .filter((l) => l.trim() !== "")
    .map((l) => JSON.parse(l) as Figure);
}

function cell(f: Figure): string {
  const v = typeof f.value === "number" ? (Number.isInteger(f.value) ? String(f.value) : f.value.toFixed(2)) : f.value;
  return f.unit ? `${v} ${f.unit}` : v;
}

/** An aligned text table: scenario, figure, value, bound. */
export function formatFigures(rows: Figure[]): string {
  if (rows.length === 0) return "(no figures)\n";
  const table = rows.map((f) => [f.scenario, f.figure, cell(f), f.bound ?? ""]);
  const head = ["SCENARIO", "FIGURE", "VALUE", "BOUND"];
  const width = head.map((h, i) => Math.max(h.length, ...table.map((r) => r[i].length)));
  const line = (r: string[]) => r.map((c, i) => c.padEnd(width[i])).join("  ").trimEnd();
  return `${[line(head), line(width.map((w) => "-".repeat(w))), ...table.map(line)].join("\n")}\n`;
}
