// Small loopback and process helpers: free ports, waiting for listeners, HTTP to admin APIs, RSS and CPU time.
import { readdirSync, readFileSync } from "node:fs";
import dgram from "node:dgram";
import http from "node:http";
import net from "node:net";

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

// Below the kernel's ephemeral range (32768+), so source ports of the load tools never take them.
let nextPort = 20000 + Math.floor(Math.random() * 10000);

function canBind(port: number, kind: "tcp" | "udp"): Promise<boolean> {
  return new Promise((resolve) => {
    if (kind === "tcp") {
      const srv = net.createServer();
      srv.once("error", () => resolve(false));
      srv.listen(port, "127.0.0.1", () => srv.close(() => resolve(true)));
    } else {
      const sock = dgram.createSocket("udp4");
      sock.once("error", () => {
        sock.close();
        resolve(false);
      });
      sock.bind(port, "127.0.0.1", () => sock.close(() => resolve(true)));
    }
  });
}

/** A port free for both TCP and UDP on 127.0.0.1 that this run has not handed out before. */
export async function freePort(): Promise<number> {
  for (let i = 0; i < 200; i++) {
    const port = nextPort++;
    if (nextPort >= 32000) nextPort = 20000;
    if ((await canBind(port, "tcp")) && (await canBind(port, "udp"))) return port;
  }
  throw new Error("no free port in 20000-32000");
}

export function tcpConnects(port: number, host = "127.0.0.1", timeoutMs = 500): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect({ port, host });
    const done = (ok: boolean) => {
      s.destroy();
      resolve(ok);
    };
    s.setTimeout(timeoutMs, () => done(false));
    s.once("connect", () => done(true));
    s.once("error", () => done(false));
  });
}

export async function waitTcp(port: number, timeoutMs: number, what: string, host = "127.0.0.1"): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (Date.now() < end) {
    if (await tcpConnects(port, host)) return;
    await sleep(50);
  }
  throw new Error(`${what}: nothing listening on ${host}:${port} after ${timeoutMs} ms`);
}

const agent = new http.Agent({ keepAlive: true, maxSockets: 16 });

export interface HttpResult {
  status: number;
  body: string;
}

/** GET (or other method) with a timeout; network errors come back as status 0. */
export function httpRequest(url: string, opts: { method?: string; body?: string; timeoutMs?: number; headers?: Record<string, string> } = {}): Promise<HttpResult> {
  return new Promise((resolve) => {
    const req = http.request(url, { method: opts.method ?? "GET", agent, headers: opts.headers, timeout: opts.timeoutMs ?? 2000 }, (res) => {
      const chunks: Buffer[] = [];
      res.on("data", (c: Buffer) => chunks.push(c));
      res.on("end", () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString("utf8") }));
      res.on("error", () => resolve({ status: 0, body: "" }));
    });
    req.on("timeout", () => req.destroy(new Error("timeout")));
    req.on("error", (err) => resolve({ status: 0, body: err.message }));
    if (opts.body !== undefined) req.write(opts.body);
    req.end();
  });
}

export function httpGet(url: string, timeoutMs = 2000): Promise<HttpResult> {
  return httpRequest(url, { timeoutMs });
}

/** Resident set size of a process in bytes (VmRSS), or NaN when it is gone. */
export function rssBytes(pid: number): number {
  try {
    const status = readFileSync(`/proc/${pid}/status`, "utf8");
    const m = /VmRSS:\s+(\d+) kB/.exec(status);
    return m ? Number(m[1]) * 1024 : Number.NaN;
  } catch {
    return Number.NaN;
  }
}

/** Open file descriptors of a process (entries in /proc/PID/fd), NaN when unreadable. */
export function fdCount(pid: number): number {
  try {
    return readdirSync(`/proc/${pid}/fd`).length;
  } catch {
    return Number.NaN;
  }
}

/** `pid` and its descendants, parents first (from /proc/PID/task/PID/children). */
export function processTree(pid: number): number[] {
  const out = [pid];
  try {
    for (const c of readFileSync(`/proc/${pid}/task/${pid}/children`, "utf8").trim().split(/\s+/)) if (c !== "") out.push(...processTree(Number(c)));
  } catch {
    // gone
  }
  return out;
}

/**
 * CPU seconds of `pid` and of its live descendants (each with its own reaped children). A child that
 * exits between two readings moves from its own count into its parent's: the sum stays continuous.
 */
export function treeCpuSeconds(pid: number): number {
  return processTree(pid).reduce((a, p) => a + (cpuSeconds(p) || 0), 0);
}

/**
 * CPU time (user + system) a process has used, in seconds, including its children that have exited
 * and been waited for (a Ballast node runs `nft` and `conntrack` as short-lived children: that work is
 * the node's); NaN when the process is gone.
 */
export function cpuSeconds(pid: number): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    // Fields after the command name (which may contain spaces) start at state: utime is 14th overall,
    // then stime, cutime, cstime.
    const rest = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return (Number(rest[11]) + Number(rest[12]) + Number(rest[13]) + Number(rest[14])) / 100;
  } catch {
    return Number.NaN;
  }
}

/**
 * CPU time the whole machine spent busy (all cores: user, nice, system, irq, softirq, steal), in
 * seconds. Kernel forwarding does its work in softirq, charged to no process: this is where it shows.
 */
export function machineBusySeconds(): number {
  try {
    const cpu = readFileSync("/proc/stat", "utf8").split("\n")[0].trim().split(/\s+/).slice(1).map(Number);
    // user nice system idle iowait irq softirq steal (guest time is already inside user)
    const busy = cpu[0] + cpu[1] + cpu[2] + cpu[5] + cpu[6] + (cpu[7] ?? 0);
    return busy / 100;
  } catch {
    return Number.NaN;
  }
}
