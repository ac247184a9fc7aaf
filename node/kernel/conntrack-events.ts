// New flows as the kernel sees them, from `conntrack -E -e NEW` run as a child process (one per
// node, not per packet): for NAT services with affinity, each new flow tells which backend the
// kernel chose for a client, and becomes an affinity entry that the replicator shares with the
// cluster. The child is restarted (with a delay) if it exits; stop() ends it.
import { type ChildProcess, spawn } from "node:child_process";
import type { Logger } from "pino";

export interface NewFlow {
  protocol: "tcp" | "udp";
  client: string;
  clientPort: number;
  vip: string;
  port: number;
  backend: string;
  backendPort: number;
}

/** Parses one event line: `[NEW] tcp 6 120 SYN_SENT src=C dst=V sport=P dport=80 [UNREPLIED] src=B dst=N sport=8080 dport=P`. */
export function parseNewFlow(line: string): NewFlow | null {
  if (!line.includes("[NEW]")) return null;
  const proto = /\b(tcp|udp)\b/.exec(line)?.[1] as "tcp" | "udp" | undefined;
  if (!proto) return null;
  const src = [...line.matchAll(/\bsrc=(\S+)/g)].map((m) => m[1]);
  const dst = [...line.matchAll(/\bdst=(\S+)/g)].map((m) => m[1]);
  const sport = [...line.matchAll(/\bsport=(\d+)/g)].map((m) => Number(m[1]));
  const dport = [...line.matchAll(/\bdport=(\d+)/g)].map((m) => Number(m[1]));
  if (src.length < 2 || dst.length < 1 || sport.length < 2 || dport.length < 1) return null;
  return { protocol: proto, client: src[0], clientPort: sport[0], vip: dst[0], port: dport[0], backend: src[1], backendPort: sport[1] };
}

const RESTART_MS = 1000;

export class ConntrackEvents {
  private child: ChildProcess | null = null;
  private stopped = false;
  private timer: NodeJS.Timeout | null = null;
  /** Why the watcher is not running (conntrack missing, exited), or null while it runs. */
  error: string | null = null;

  constructor(
    private readonly onFlow: (f: NewFlow) => void,
    private readonly opts: { log: Logger; netns?: string; bin?: string },
  ) {}

  start(): void {
    if (this.child || this.stopped) return;
    const bin = this.opts.bin ?? "conntrack";
    const args = ["-E", "-e", "NEW"];
    const child = this.opts.netns ? spawn("ip", ["netns", "exec", this.opts.netns, bin, ...args], { stdio: ["ignore", "pipe", "pipe"] }) : spawn(bin, args, { stdio: ["ignore", "pipe", "pipe"] });
    this.child = child;
    this.error = null;
    let buf = "";
    child.stdout!.setEncoding("utf8");
    child.stdout!.on("data", (d: string) => {
      buf += d;
      let nl = buf.indexOf("\n");
      while (nl >= 0) {
        const f = parseNewFlow(buf.slice(0, nl));
        buf = buf.slice(nl + 1);
        if (f) this.onFlow(f);
        nl = buf.indexOf("\n");
      }
    });
    let stderr = "";
    child.stderr!.on("data", (d: Buffer) => {
      stderr = (stderr + d.toString()).slice(-500);
    });
    child.on("error", (err) => {
      this.error = err.message;
    });
    child.on("close", (code) => {
      this.child = null;
      if (this.stopped) return;
      this.error = stderr.trim() || this.error || `conntrack -E exited with ${code}`;
      this.opts.log.warn({ err: this.error }, "conntrack event watcher stopped; restarting");
      this.timer = setTimeout(() => {
        this.timer = null;
        this.start();
      }, RESTART_MS);
      this.timer.unref();
    });
  }

  stop(): void {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    this.child?.kill("SIGTERM");
    this.child = null;
  }
}
