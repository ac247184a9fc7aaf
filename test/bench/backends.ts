// The backends every path shares: an HTTP server (nginx, or the Node fallback), an iperf3 server, a UDP
// echo, and a TCP sink for idle connections. All on 127.0.0.1, all started through the ProcessGroup.
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { freePort, waitTcp } from "./net.js";
import type { Proc, ProcessGroup } from "./procs.js";

export const agentPath = (name: string) => fileURLToPath(new URL(`./agents/${name}.js`, import.meta.url));

export interface HttpBackends {
  kind: "nginx" | "node";
  ports: number[];
  proc: Proc;
}

/**
 * Where a backend runs when not on loopback: inside network namespace `ns`, listening on `host` (0.0.0.0:
 * every address of the namespace, which a DSR backend's VIP on lo needs), on given ports; `waitListening`
 * replaces the loopback connect check the host namespace cannot make.
 */
export interface Placement {
  ns: string;
  host: string;
  ports: number[];
  waitListening: (port: number) => Promise<void>;
}

/** `cmd args` inside the placement's namespace, or as is. */
export const inNs = (ns: string | undefined, cmd: string, args: string[]): [string, string[]] => (ns ? ["ip", ["netns", "exec", ns, cmd, ...args]] : [cmd, args]);

export async function startHttpBackends(group: ProcessGroup, runDir: string, nginx: string | null, count: number, at?: Placement): Promise<HttpBackends> {
  const ports: number[] = at ? at.ports.slice(0, count) : [];
  for (let i = ports.length; i < count; i++) ports.push(await freePort());
  const host = at?.host ?? "127.0.0.1";
  const wait = (p: number, what: string) => (at ? at.waitListening(p) : waitTcp(p, 10_000, what));
  if (nginx) {
    const dir = join(runDir, "nginx");
    mkdirSync(join(dir, "tmp"), { recursive: true });
    // One worker: the same single core budget the proxies get; keep-alive for as long as a run lasts.
    const conf = `worker_processes 1;
worker_rlimit_nofile 19000;
pid ${dir}/nginx.pid;
error_log ${dir}/error.log warn;
events { worker_connections 16000; multi_accept on; }
http {
  access_log off;
  client_body_temp_path ${dir}/tmp/body;
  proxy_temp_path ${dir}/tmp/proxy;
  fastcgi_temp_path ${dir}/tmp/fastcgi;
  uwsgi_temp_path ${dir}/tmp/uwsgi;
  scgi_temp_path ${dir}/tmp/scgi;
  keepalive_requests 100000000;
  keepalive_timeout 300s;
  server {
${ports.map((p) => `    listen ${host}:${p} backlog=4096;`).join("\n")}
    location / { default_type text/plain; return 200 "ok"; }
  }
}
`;
    writeFileSync(join(dir, "nginx.conf"), conf);
    const proc = group.start("nginx", ...inNs(at?.ns, nginx, ["-e", join(dir, "error.log"), "-p", dir, "-c", join(dir, "nginx.conf"), "-g", "daemon off;"]));
    for (const p of ports) await wait(p, "nginx");
    return { kind: "nginx", ports, proc };
  }
  const proc = group.start("http-backend", ...inNs(at?.ns, process.execPath, [agentPath("http-backend"), "--ports", ports.join(","), "--host", host]));
  await proc.waitForLine(/"ready":true/, 10_000);
  return { kind: "node", ports, proc };
}

export async function startIperfServer(group: ProcessGroup, at?: Placement): Promise<{ port: number; proc: Proc }> {
  const port = at ? at.ports[0] : await freePort();
  // In a namespace: every address (a DSR backend answers on the VIP it holds on lo).
  const bind = at ? [] : ["-B", "127.0.0.1"];
  const proc = group.start("iperf3-server", ...inNs(at?.ns, "iperf3", ["-s", ...bind, "-p", String(port), "--forceflush"]));
  await proc.waitForLine(/Server listening/, 10_000);
  return { port, proc };
}

export async function startUdpEcho(group: ProcessGroup): Promise<{ port: number; proc: Proc }> {
  const port = await freePort();
  const proc = group.start("udp-echo", process.execPath, [agentPath("udp-echo"), "--ports", String(port)]);
  await proc.waitForLine(/"ready":true/, 10_000);
  return { port, proc };
}

/** A TCP sink on `count` new ports, or on the given ports (to bring a killed backend back). */
export async function startTcpSink(group: ProcessGroup, name: string, count = 1, given?: number[], at?: Placement): Promise<{ ports: number[]; proc: Proc }> {
  const ports: number[] = given ? [...given] : at ? at.ports.slice(0, count) : [];
  for (let i = ports.length; i < count; i++) ports.push(await freePort());
  const proc = group.start(name, ...inNs(at?.ns, process.execPath, [agentPath("tcp-sink"), "--ports", ports.join(","), "--host", at?.host ?? "127.0.0.1"]), { nofile: 1_000_000 });
  await proc.waitForLine(/"ready":true/, 10_000);
  return { ports, proc };
}

/** The sink's latest count of open connections. */
export function sinkOpen(proc: Proc): number {
  const lines = proc.jsonLines().filter((j) => typeof j.open === "number");
  return lines.length ? (lines[lines.length - 1].open as number) : 0;
}
