// HAProxy 2.6, the performance peer: one thread, mode tcp, the same backends and health checks as Ballast.
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { inNs } from "./backends.js";
import { waitTcp } from "./net.js";
import type { Proc, ProcessGroup } from "./procs.js";

export interface Frontend {
  name: string;
  port: number;
  /** Address to bind (default 127.0.0.1). */
  bind?: string;
  servers: { name: string; port: number; address?: string; checkPort?: number }[];
}

export const HAPROXY_MAXCONN = 8000;

/** With `ns`, HAProxy runs inside that network namespace and `waitListening` checks its ports there. */
export async function startHaproxy(group: ProcessGroup, runDir: string, frontends: Frontend[], at?: { ns: string; waitListening: (port: number) => Promise<void> }, threads = 1): Promise<Proc> {
  const sections = frontends
    .map(
      (f) => `frontend fe_${f.name}
  bind ${f.bind ?? "127.0.0.1"}:${f.port}
  default_backend be_${f.name}

backend be_${f.name}
  balance roundrobin
${f.servers.map((s) => `  server ${s.name} ${s.address ?? "127.0.0.1"}:${s.port} check inter 2s${s.checkPort ? ` port ${s.checkPort}` : ""}`).join("\n")}
`,
    )
    .join("\n");
  const cfg = `global
  nbthread ${threads}
  maxconn ${HAPROXY_MAXCONN}

defaults
  mode tcp
  maxconn ${HAPROXY_MAXCONN}
  timeout connect 3s
  timeout client 5m
  timeout server 5m

${sections}`;
  const file = join(runDir, threads === 1 ? "haproxy.cfg" : `haproxy-${threads}t.cfg`);
  writeFileSync(file, cfg);
  const proc = group.start(threads === 1 ? "haproxy" : `haproxy-${threads}t`, ...inNs(at?.ns, "haproxy", ["-db", "-f", file]));
  for (const f of frontends) await (at ? at.waitListening(f.port) : waitTcp(f.port, 10_000, "haproxy"));
  return proc;
}
