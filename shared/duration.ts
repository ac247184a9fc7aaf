// Durations as operators type them ("500ms", "5s", "2m", "1h") or as plain milliseconds.

const UNIT_MS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 };
const DURATION_RE = /^(\d+(?:\.\d+)?)(ms|s|m|h)$/;

/** Parses a duration into milliseconds; returns NaN for anything else so the schema can name the field. */
export function parseDuration(input: unknown): number {
  if (typeof input === "number") return Number.isFinite(input) && input >= 0 ? input : Number.NaN;
  if (typeof input !== "string") return Number.NaN;
  const m = DURATION_RE.exec(input.trim());
  if (!m) return Number.NaN;
  return Math.round(Number(m[1]) * UNIT_MS[m[2]]);
}

export function formatDuration(ms: number): string {
  if (ms % 3_600_000 === 0 && ms > 0) return `${ms / 3_600_000}h`;
  if (ms % 60_000 === 0 && ms > 0) return `${ms / 60_000}m`;
  if (ms % 1000 === 0 && ms > 0) return `${ms / 1000}s`;
  return `${ms}ms`;
}
