// The layering, checked from the imports: no import circles in node/ and shared/ (a pair of files
// whose one direction is type-only is allowed), and no arrow from a lower layer to a higher one
// (shared → lb → model → control | data | health | affinity → the composition root on top).
import { readdirSync, readFileSync } from "node:fs";
import { dirname, join, relative, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";

const repo = resolve(dirname(fileURLToPath(import.meta.url)), "../..");

interface Edge {
  to: string;
  typeOnly: boolean;
}

function sources(dir: string): string[] {
  const out: string[] = [];
  for (const e of readdirSync(join(repo, dir), { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) out.push(...sources(p));
    else if (e.name.endsWith(".ts") && !e.name.endsWith(".d.ts")) out.push(p);
  }
  return out;
}

const IMPORT = /^\s*(import|export)\s+(type\s+)?([^'";]*?)\s*from\s+["'](\.[^"']+)["']/gm;

function graph(): Map<string, Edge[]> {
  const files = [...sources("node"), ...sources("shared")];
  const g = new Map<string, Edge[]>();
  for (const f of files) {
    const text = readFileSync(join(repo, f), "utf8");
    const edges: Edge[] = [];
    for (const m of text.matchAll(IMPORT)) {
      const to = relative(repo, resolve(repo, dirname(f), m[4])).replace(/\.js$/, ".ts");
      // `import { type A, type B }` is type-only too.
      const names = m[3].replace(/^\{|\}$/g, "").split(",").map((s) => s.trim()).filter((s) => s !== "");
      const typeOnly = m[2] !== undefined || (names.length > 0 && names.every((n) => n.startsWith("type ")));
      edges.push({ to, typeOnly });
    }
    g.set(f, edges);
  }
  return g;
}

/** Strongly connected components with more than one file (Tarjan). */
function circles(g: Map<string, Edge[]>, valueOnly: boolean): string[][] {
  let index = 0;
  const idx = new Map<string, number>();
  const low = new Map<string, number>();
  const stack: string[] = [];
  const on = new Set<string>();
  const out: string[][] = [];
  const visit = (v: string) => {
    idx.set(v, index);
    low.set(v, index++);
    stack.push(v);
    on.add(v);
    for (const e of g.get(v) ?? []) {
      if (valueOnly && e.typeOnly) continue;
      if (!g.has(e.to)) continue;
      if (!idx.has(e.to)) {
        visit(e.to);
        low.set(v, Math.min(low.get(v)!, low.get(e.to)!));
      } else if (on.has(e.to)) low.set(v, Math.min(low.get(v)!, idx.get(e.to)!));
    }
    if (low.get(v) === idx.get(v)) {
      const scc: string[] = [];
      let w: string;
      do {
        w = stack.pop()!;
        on.delete(w);
        scc.push(w);
      } while (w !== v);
      if (scc.length > 1) out.push(scc.sort());
    }
  };
  for (const v of g.keys()) if (!idx.has(v)) visit(v);
  return out;
}

/** Layer of a file; a file may import only from its own layer or lower ones. */
function layer(f: string): number {
  if (f.startsWith("shared/")) return 0;
  if (f.startsWith("node/lb/") || f === "node/log.ts" || f === "node/collect.ts") return 1;
  if (f.startsWith("node/model/")) return 2;
  if (/^node\/(control|data|health|affinity|kernel)\//.test(f)) return 3;
  return 4; // node.ts, state.ts, metrics.ts, admin/, cli.ts: the composition root and what sits on it
}

/** Folders of one layer that must not import each other's values (types are the contracts between them). */
const SIBLINGS = /^node\/(control|data|health|affinity|kernel)\//;

describe("layering", () => {
  const g = graph();

  it("has no import circles, except pairs where one direction is type-only", () => {
    const bad = circles(g, false).filter((scc) => {
      if (scc.length !== 2) return true;
      const [a, b] = scc;
      const ab = g.get(a)!.filter((e) => e.to === b);
      const ba = g.get(b)!.filter((e) => e.to === a);
      return !(ab.every((e) => e.typeOnly) || ba.every((e) => e.typeOnly));
    });
    expect(bad).toEqual([]);
    expect(circles(g, true)).toEqual([]);
  });

  it("has no arrow from a lower layer to a higher one", () => {
    const up: string[] = [];
    for (const [f, edges] of g) for (const e of edges) if (g.has(e.to) && layer(e.to) > layer(f)) up.push(`${f} → ${e.to}`);
    expect(up).toEqual([]);
  });

  it("control, data, health and affinity share values only through the model below them", () => {
    const across: string[] = [];
    for (const [f, edges] of g) {
      const mine = SIBLINGS.exec(f)?.[1];
      if (mine === undefined) continue;
      for (const e of edges) {
        const theirs = SIBLINGS.exec(e.to)?.[1];
        if (theirs !== undefined && theirs !== mine && !e.typeOnly) across.push(`${f} → ${e.to}`);
      }
    }
    expect(across).toEqual([]);
  });
});
