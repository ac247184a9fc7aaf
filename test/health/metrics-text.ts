// Reads one sample out of Prometheus text exposition, whatever the label order.

/** The value of `name` with (at least) these labels; null when no such sample exists. */
export function metricValue(text: string, name: string, labels: Record<string, string> = {}): number | null {
  const want = Object.entries(labels).map(([k, v]) => `${k}="${v}"`);
  for (const line of text.split("\n")) {
    if (!line.startsWith(`${name}{`) && !line.startsWith(`${name} `)) continue;
    const close = line.lastIndexOf("}");
    const labelText = close > 0 ? line.slice(name.length + 1, close) : "";
    const have = new Set(labelText.split(",").filter((s) => s !== ""));
    if (want.every((w) => have.has(w))) return Number(line.slice(close > 0 ? close + 1 : name.length).trim());
  }
  return null;
}
