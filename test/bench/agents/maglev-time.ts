// Times buildMaglevTable for several backend counts in a fresh process (no harness heap around it).
import { pathToFileURL } from "node:url";
import { parseArgs, report } from "./args.js";

const args = parseArgs(process.argv.slice(2));
const mod = (await import(pathToFileURL(args.module).href)) as {
  buildMaglevTable?: (ids: string[], weights: number[], m: number) => Int32Array;
  maglevTableSize?: (n: number) => number;
};
if (typeof mod.buildMaglevTable !== "function" || typeof mod.maglevTableSize !== "function") {
  report({ error: "module does not export buildMaglevTable and maglevTableSize" });
  process.exit(0);
}
const repeats = Number(args.repeats ?? 5);
for (const n of (args.sizes ?? "100,1000,10000").split(",").map(Number)) {
  const ids = Array.from({ length: n }, (_, i) => `backend-${String(i).padStart(6, "0")}`);
  const weights = ids.map(() => 1);
  const m = mod.maglevTableSize(n);
  mod.buildMaglevTable(ids, weights, m); // warm-up: JIT, not the figure
  const times: number[] = [];
  for (let r = 0; r < repeats; r++) {
    const t = process.hrtime.bigint();
    mod.buildMaglevTable(ids, weights, m);
    times.push(Number(process.hrtime.bigint() - t) / 1e6);
  }
  times.sort((a, b) => a - b);
  report({ backends: n, tableSize: m, medianMs: times[Math.floor(times.length / 2)], minMs: times[0], maxMs: times[times.length - 1] });
}
