// Finds the external programs the bench drives (installing missing Debian packages when root) and
// collects the machine facts printed with every result.
import { spawnSync } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import os from "node:os";

export interface Tool {
  name: string;
  /** Debian package that provides it. */
  pkg: string;
  required: boolean;
}

const TOOLS: Tool[] = [
  { name: "haproxy", pkg: "haproxy", required: true },
  { name: "wrk", pkg: "wrk", required: true },
  { name: "iperf3", pkg: "iperf3", required: true },
  { name: "etcd", pkg: "etcd-server", required: true },
  { name: "etcdctl", pkg: "etcd-client", required: false },
  { name: "ss", pkg: "iproute2", required: false },
];

export function which(name: string): string | null {
  for (const dir of (process.env.PATH ?? "/usr/local/bin:/usr/bin:/bin").split(":").concat(["/usr/sbin", "/sbin"])) {
    const p = `${dir}/${name}`;
    if (existsSync(p)) return p;
  }
  return null;
}

const isRoot = () => typeof process.getuid === "function" && process.getuid() === 0;

function aptInstall(pkgs: string[], log: (s: string) => void): boolean {
  log(`installing ${pkgs.join(" ")} with apt-get …`);
  const env = { ...process.env, DEBIAN_FRONTEND: "noninteractive" };
  let r = spawnSync("apt-get", ["install", "-y", "--no-install-recommends", ...pkgs], { env, stdio: "ignore", timeout: 300_000 });
  if (r.status !== 0) {
    spawnSync("apt-get", ["update"], { env, stdio: "ignore", timeout: 300_000 });
    r = spawnSync("apt-get", ["install", "-y", "--no-install-recommends", ...pkgs], { env, stdio: "ignore", timeout: 300_000 });
  }
  return r.status === 0;
}

/** Resolves every tool's path; installs what is missing when root. Throws naming what is still missing. */
export function ensureTools(log: (s: string) => void): Record<string, string | null> {
  const paths: Record<string, string | null> = {};
  for (const t of TOOLS) paths[t.name] = which(t.name);
  const missing = TOOLS.filter((t) => !paths[t.name]);
  if (missing.length > 0 && isRoot()) {
    aptInstall([...new Set(missing.map((t) => t.pkg))], log);
    for (const t of TOOLS) paths[t.name] = which(t.name);
  }
  const stillMissing = TOOLS.filter((t) => t.required && !paths[t.name]);
  if (stillMissing.length > 0) {
    const pkgs = [...new Set(stillMissing.map((t) => t.pkg))].join(" ");
    throw new Error(
      `missing tools: ${stillMissing.map((t) => t.name).join(", ")}. ` +
        (isRoot() ? `apt-get install -y ${pkgs} failed.` : `run as root, or: sudo apt-get install -y ${pkgs}`),
    );
  }
  return paths;
}

/** nginx for the fast C backend: found, or installed when root and `install` is set. */
export function ensureNginx(install: boolean, log: (s: string) => void): string | null {
  let p = which("nginx");
  if (!p && install && isRoot()) {
    if (aptInstall(["nginx-light"], log) || aptInstall(["nginx"], log)) p = which("nginx");
  }
  return p;
}

function firstLine(cmd: string, args: string[]): string {
  // Some tools print their version on stderr (nginx -v) or exit non-zero (wrk -v).
  const r = spawnSync(cmd, args, { encoding: "utf8", timeout: 5000 });
  const text = `${r.stdout ?? ""}\n${r.stderr ?? ""}`.trim();
  return text.split("\n")[0]?.trim() || "unknown";
}

export interface MachineFacts {
  cpuModel: string;
  cores: number;
  memoryGiB: number;
  kernel: string;
  node: string;
  haproxy: string;
  wrk: string;
  iperf3: string;
  etcd: string;
  nginx: string | null;
  nofileSoft: number;
  nofileHard: number;
  date: string;
  gitCommit: string;
  /** 1-minute load average when the run started: other work on the machine skews every figure. */
  loadAverage: string;
}

export function ulimitNofile(): { soft: number; hard: number } {
  const soft = Number(firstLine("bash", ["-c", "ulimit -Sn"]));
  const hard = Number(firstLine("bash", ["-c", "ulimit -Hn"]));
  return { soft: Number.isFinite(soft) ? soft : 1024, hard: Number.isFinite(hard) ? hard : Number.POSITIVE_INFINITY };
}

export function machineFacts(nginx: string | null): MachineFacts {
  let cpuModel = os.cpus()[0]?.model ?? "unknown";
  try {
    const m = /model name\s*:\s*(.+)/.exec(readFileSync("/proc/cpuinfo", "utf8"));
    if (m) cpuModel = m[1].trim();
  } catch {
    // keep os.cpus()
  }
  const lim = ulimitNofile();
  return {
    cpuModel,
    cores: os.cpus().length,
    memoryGiB: Math.round((os.totalmem() / 2 ** 30) * 10) / 10,
    kernel: os.release(),
    node: process.version,
    haproxy: firstLine("haproxy", ["-v"]).replace(/ - https?:.*/, ""),
    wrk: firstLine("wrk", ["-v"]).replace(/ Copyright.*/, ""),
    iperf3: firstLine("iperf3", ["-v"]),
    etcd: firstLine("etcd", ["--version"]),
    nginx: nginx ? firstLine(nginx, ["-v"]) : null,
    nofileSoft: lim.soft,
    nofileHard: lim.hard,
    date: new Date().toISOString(),
    gitCommit: firstLine("git", ["rev-parse", "--short", "HEAD"]),
    loadAverage: os.loadavg()[0].toFixed(2),
  };
}
