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

export async function startHttpBackends(group: ProcessGroup, runDir: string, nginx: string | null, count: number): Promise<HttpBackends> {
  const ports: number[] = [];
  for (let i = 0; i < count; i++) ports.push(await freePort());
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
${ports.map((p) => `    listen 127.0.0.1:${p} backlog=4096;`).join("\n")}
    location / { default_type text/plain; return 200 "ok"; }
  }
}
`;
    writeFileSync(join(dir, "nginx.conf"), conf);
    const proc = group.start("nginx", nginx, ["-e", join(dir, "error.log"), "-p", dir, "-c", join(dir, "nginx.conf"), "-g", "daemon off;"]);
    for (const p of ports) await waitTcp(p, 10_000, "nginx");
    return { kind: "nginx", ports, proc };
  }
  const proc = group.start("http-backend", process.execPath, [agentPath("http-backend"), "--ports", ports.join(",")]);
  await proc.waitForLine(/"ready":true/, 10_000);
  return { kind: "node", ports, proc };
}

export async function startIperfServer(group: ProcessGroup): Promise<{ port: number; proc: Proc }> {
  const port = await freePort();
  const proc = group.start("iperf3-server", "iperf3", ["-s", "-B", "127.0.0.1", "-p", String(port), "--forceflush"]);
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
export async function startTcpSink(group: ProcessGroup, name: string, count = 1, given?: number[]): Promise<{ ports: number[]; proc: Proc }> {
  const ports: number[] = given ? [...given] : [];
  for (let i = ports.length; i < count; i++) ports.push(await freePort());
  const proc = group.start(name, process.execPath, [agentPath("tcp-sink"), "--ports", ports.join(",")], { nofile: 1_000_000 });
  await proc.waitForLine(/"ready":true/, 10_000);
  return { ports, proc };
}

/** The sink's latest count of open connections. */
export function sinkOpen(proc: Proc): number {
  const lines = proc.jsonLines().filter((j) => typeof j.open === "number");
  return lines.length ? (lines[lines.length - 1].open as number) : 0;
}
