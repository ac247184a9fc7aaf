// The kernel's connection table, through the `conntrack` tool: it pins established flows to their
// backend while the maps change, so Ballast only removes flows on purpose (a backend down, or past
// its drain timeout) and counts them. Only flows to a service's own address and port are touched.
import { execFile } from "node:child_process";

export interface FlowFilter {
  protocol: "tcp" | "udp";
  vip: string;
  port: number;
  /** The backend the flow was sent to (the reply direction's source). */
  backend?: { address: string; port: number };
}

export interface ConntrackTool {
  /** Removes the matching tracked flows; resolves with how many were removed (0 when none, or on error). */
  deleteFlows(f: FlowFilter): Promise<{ removed: number; error: string | null }>;
  /** Counts the matching tracked flows; null when conntrack cannot be run. */
  countFlows(f: FlowFilter): Promise<number | null>;
  /** Tracked flows of a service per backend ("address|port" of the reply's source); null when conntrack cannot be run. */
  flowsByBackend(f: FlowFilter): Promise<Map<string, number> | null>;
}

function args(f: FlowFilter): string[] {
  const family = f.vip.includes(":") ? "ipv6" : "ipv4";
  const a = ["-f", family, "-p", f.protocol, "--orig-dst", f.vip, "--orig-port-dst", String(f.port)];
  if (f.backend) a.push("--reply-src", f.backend.address, "--reply-port-src", String(f.backend.port));
  return a;
}

function run(bin: string, a: string[], netns?: string): Promise<{ code: number; stdout: string; stderr: string }> {
  const [file, argv] = netns ? ["ip", ["netns", "exec", netns, bin, ...a]] : [bin, a];
  return new Promise((resolve) => {
    execFile(file, argv, { timeout: 30_000, maxBuffer: 256 * 1024 * 1024 }, (err, stdout, stderr) => {
      const code = err ? (typeof (err as { code?: unknown }).code === "number" ? (err as { code: number }).code : -1) : 0;
      resolve({ code, stdout: String(stdout), stderr: String(stderr) || (err && code === -1 ? err.message : "") });
    });
  });
}

/** "N flow entries have been deleted." on stderr. */
const COUNT = /(\d+) flow entries/;

/** The tool in the node's own namespace (or in `netns`: tests). */
export function conntrackTool(opts: { bin?: string; netns?: string } = {}): ConntrackTool {
  const bin = opts.bin ?? "conntrack";
  return {
    async deleteFlows(f) {
      const r = await run(bin, ["-D", ...args(f)], opts.netns);
      const n = Number(COUNT.exec(r.stderr)?.[1] ?? 0);
      // conntrack exits 1 when nothing matched: not an error.
      if (r.code !== 0 && n === 0 && !/0 flow entries/.test(r.stderr)) return { removed: 0, error: r.stderr.trim() || `exit ${r.code}` };
      return { removed: n, error: null };
    },
    async flowsByBackend(f) {
      const r = await run(bin, ["-L", ...args(f)], opts.netns);
      if (r.code !== 0 && !COUNT.test(r.stderr)) return null;
      const out = new Map<string, number>();
      for (const line of r.stdout.split("\n")) {
        // A TCP flow that ended (reset, or closed and waiting out TIME_WAIT) is not open any more.
        if (/ (TIME_WAIT|CLOSE) /.test(line)) continue;
        // The second src=/sport= pair is the reply direction's source: the backend.
        const src = [...line.matchAll(/\bsrc=(\S+)/g)];
        const sport = [...line.matchAll(/\bsport=(\d+)/g)];
        if (src.length < 2 || sport.length < 2) continue;
        const key = `${src[1][1]}|${sport[1][1]}`;
        out.set(key, (out.get(key) ?? 0) + 1);
      }
      return out;
    },
    async countFlows(f) {
      const r = await run(bin, ["-L", ...args(f)], opts.netns);
      if (r.code !== 0 && !COUNT.test(r.stderr)) return null;
      return Number(COUNT.exec(r.stderr)?.[1] ?? 0);
    },
  };
}
