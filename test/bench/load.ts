// Runs the load generators (wrk, iperf3, the UDP blaster agent) and parses their output into numbers.
import { type ChildProcess, spawn } from "node:child_process";
import { createWriteStream, type WriteStream } from "node:fs";
import { fileURLToPath } from "node:url";
import type { ProcessGroup } from "./procs.js";

export interface WrkResult {
  rps: number;
  p50Ms: number;
  p99Ms: number;
  requests: number;
  /** connect + read + write + timeout socket errors, plus non-2xx/3xx responses. */
  errors: number;
}

/** Load tools running now, so an interrupted bench can stop them too. */
const running = new Set<ChildProcess>();

export function killLoadTools(): void {
  for (const c of running) c.kill("SIGKILL");
}

/** Where a load tool connects to, and the network namespace it runs in (the client's; none on loopback). */
export interface Dest {
  host: string;
  port: number;
  ns?: string;
}

export const loopback = (port: number): Dest => ({ host: "127.0.0.1", port });

const hostPort = (d: Dest) => (d.host.includes(":") ? `[${d.host}]:${d.port}` : `${d.host}:${d.port}`);

function run(cmd: string, args: string[], timeoutMs: number, ns?: string): Promise<{ code: number | null; out: string }> {
  return new Promise((resolve) => {
    // `ip netns exec` execs the tool, so the pid (and SIGKILL on interrupt) is the tool's own.
    const child = ns ? spawn("ip", ["netns", "exec", ns, cmd, ...args], { stdio: ["ignore", "pipe", "pipe"] }) : spawn(cmd, args, { stdio: ["ignore", "pipe", "pipe"] });
    running.add(child);
    let out = "";
    child.stdout.on("data", (c: Buffer) => {
      out += c.toString();
    });
    child.stderr.on("data", (c: Buffer) => {
      out += c.toString();
    });
    const timer = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
    child.on("exit", (code) => {
      clearTimeout(timer);
      running.delete(child);
      resolve({ code, out });
    });
    child.on("error", (err) => {
      clearTimeout(timer);
      running.delete(child);
      resolve({ code: -1, out: err.message });
    });
  });
}

function toMs(value: string, unit: string): number {
  const v = Number(value);
  switch (unit) {
    case "us":
      return v / 1000;
    case "ms":
      return v;
    case "s":
      return v * 1000;
    case "m":
      return v * 60_000;
    default:
      return Number.NaN;
  }
}

export function parseWrk(out: string): WrkResult {
  const num = (re: RegExp) => {
    const m = re.exec(out);
    return m ? Number(m[1]) : 0;
  };
  const lat = (pct: string) => {
    const m = new RegExp(`^\\s*${pct}%\\s+([\\d.]+)(us|ms|s|m)\\s*$`, "m").exec(out);
    return m ? toMs(m[1], m[2]) : Number.NaN;
  };
  const sock = /Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)/.exec(out);
  const sockErrors = sock ? Number(sock[1]) + Number(sock[2]) + Number(sock[3]) + Number(sock[4]) : 0;
  return {
    rps: num(/Requests\/sec:\s+([\d.]+)/),
    p50Ms: lat("50"),
    p99Ms: lat("99"),
    requests: num(/(\d+) requests in/),
    errors: sockErrors + num(/Non-2xx or 3xx responses: (\d+)/),
  };
}

let toolLog: WriteStream | null = null;

/** Keeps every load tool's raw output in `file` (for looking into an odd figure afterwards). */
export function logLoadToolsTo(file: string): void {
  toolLog = createWriteStream(file, { flags: "a" });
}

/**
 * The client's SYN retransmits so far (TcpExtTCPSynRetrans of its namespace); null when nstat is
 * missing. Each is a connection that waited ≥ 1 s for its handshake: what makes a path's new
 * connections/s fall while its per-request latency stays low.
 */
export async function synRetransmits(ns?: string): Promise<number | null> {
  const { code, out } = await run("nstat", ["-az", "TcpExtTCPSynRetrans"], 5000, ns);
  const m = /TcpExtTCPSynRetrans\s+(\d+)/.exec(out);
  return code === 0 && m ? Number(m[1]) : null;
}

export async function wrk(dest: Dest, o: { connections: number; durationS: number; close: boolean; threads?: number }): Promise<WrkResult & { raw: string }> {
  const args = [`-t${o.threads ?? 1}`, `-c${o.connections}`, `-d${o.durationS}s`, "--latency", "--timeout", "5s"];
  if (o.close) args.push("-H", "Connection: close");
  args.push(`http://${hostPort(dest)}/`);
  const { out } = await run("wrk", args, (o.durationS + 30) * 1000, dest.ns);
  toolLog?.write(`\n=== ${new Date().toISOString()} ${dest.ns ? `[netns ${dest.ns}] ` : ""}wrk ${args.join(" ")}\n${out}`);
  return { ...parseWrk(out), raw: out };
}

export interface IperfResult {
  gbps: number;
  bytes: number;
  error?: string;
}

/** `reverse`: the server sends (iperf3 -R), i.e. backend → client through the balancer. */
export async function iperf(dest: Dest, durationS: number, reverse = false): Promise<IperfResult> {
  // iperf3 3.12 leaves the server busy for a moment after a test; retry "busy" once.
  for (let attempt = 0; attempt < 3; attempt++) {
    const args = ["-c", dest.host, "-p", String(dest.port), "-t", String(durationS), "-J", "--connect-timeout", "3000", ...(reverse ? ["-R"] : [])];
    const { out } = await run("iperf3", args, (durationS + 20) * 1000, dest.ns);
    toolLog?.write(`\n=== ${new Date().toISOString()} ${dest.ns ? `[netns ${dest.ns}] ` : ""}iperf3 ${args.join(" ")}\n${out}`);
    try {
      const j = JSON.parse(out) as { error?: string; end?: { sum_received?: { bits_per_second?: number; bytes?: number } } };
      if (j.error) {
        if (/busy/i.test(j.error) && attempt < 2) {
          await new Promise((r) => setTimeout(r, 1000));
          continue;
        }
        return { gbps: Number.NaN, bytes: 0, error: j.error };
      }
      return { gbps: (j.end?.sum_received?.bits_per_second ?? Number.NaN) / 1e9, bytes: j.end?.sum_received?.bytes ?? 0 };
    } catch {
      return { gbps: Number.NaN, bytes: 0, error: out.slice(0, 200) };
    }
  }
  return { gbps: Number.NaN, bytes: 0, error: "server busy" };
}

export interface UdpResult {
  rate: number;
  loss: number;
  sent: number;
  received: number;
  error?: string;
}

export async function udpBlast(group: ProcessGroup, port: number, durationMs: number): Promise<UdpResult> {
  const script = fileURLToPath(new URL("./agents/udp-blast.js", import.meta.url));
  const p = group.start("udp-blast", process.execPath, [script, "--port", String(port), "--durationMs", String(durationMs), "--sockets", "4", "--window", "32"]);
  await p.exited;
  const r = p.jsonLines().find((j) => "rate" in j) as UdpResult | undefined;
  return r ?? { rate: Number.NaN, loss: Number.NaN, sent: 0, received: 0, error: p.tail(3) };
}
