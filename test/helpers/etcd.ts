// Real etcd processes for tests: free loopback ports, readiness by polling /health, kill/pause/
// restart for fault injection, and etcdctl-backed put/get/del/compact acting as "another client".
// Every process started here is killed when the test process exits.

import { type ChildProcess, execFile, spawn } from "node:child_process";
import { accessSync, constants, mkdtempSync, rmSync } from "node:fs";
import http from "node:http";
import net from "node:net";
import { tmpdir } from "node:os";
import { delimiter, join } from "node:path";

export interface StartEtcdOptions {
  /** Use (and keep) this data directory instead of a fresh temporary one. */
  dataDir?: string;
  /**
   * Serve clients over TLS with this certificate (PEM files); `ca` set: clients must present a
   * certificate signed by it. Health is then polled on a separate plain-HTTP metrics port.
   */
  tls?: { cert: string; key: string; ca?: string };
  /** More etcd flags, e.g. `--max-request-bytes=8388608` to write values above the 1.5 MiB default. */
  extraArgs?: string[];
}

export interface EtcdProcess {
  /** "http://127.0.0.1:P" */
  readonly endpoint: string;
  readonly clientPort: number;
  readonly peerPort: number;
  readonly dataDir: string;
  /** Pid of the running process, undefined while stopped. */
  readonly pid: number | undefined;
  /** Sends `signal` (default SIGKILL) and waits for the process to exit; the data dir is kept. */
  kill(signal?: NodeJS.Signals): Promise<void>;
  /** Stops the process (SIGTERM, then SIGKILL) and removes the data dir if this harness created it. */
  stop(): Promise<void>;
  /** Stops the process if it runs, then starts it again on the same data dir and ports; resolves when healthy. */
  restart(): Promise<void>;
  /** SIGSTOP: the process keeps its sockets but answers nothing (a hung or partitioned server). */
  pause(): void;
  /** SIGCONT after pause(). */
  resume(): void;
  /** Current store revision. */
  revision(): Promise<number>;
  /** Compacts history up to `revision` (default: the current revision), physically; returns that revision. */
  compact(revision?: number): Promise<number>;
  /** Puts through etcdctl (a client independent of the code under test); returns the new revision. */
  put(key: string, value: string): Promise<number>;
  get(key: string): Promise<string | null>;
  /** Deletes one key; returns how many keys were deleted (0 or 1). */
  del(key: string): Promise<number>;
  /** Runs etcdctl against this server and returns its stdout. */
  etcdctl(...args: string[]): Promise<string>;
}

const HEALTH_TIMEOUT_MS = 30_000;
const STOP_GRACE_MS = 5_000;
const PORT_ATTEMPTS = 5;

// Processes and owned data dirs alive right now; the exit hook reaps whatever a test left behind.
const liveChildren = new Set<ChildProcess>();
const ownedDirs = new Set<string>();
process.once("exit", () => {
  for (const child of liveChildren) {
    try {
      child.kill("SIGKILL");
    } catch {
      // already gone
    }
  }
  for (const dir of ownedDirs) {
    try {
      rmSync(dir, { recursive: true, force: true });
    } catch {
      // best effort at exit
    }
  }
});

function onPath(command: string): string | null {
  for (const dir of (process.env.PATH ?? "").split(delimiter)) {
    if (dir === "") continue;
    const candidate = join(dir, command);
    try {
      accessSync(candidate, constants.X_OK);
      return candidate;
    } catch {
      // not here
    }
  }
  return null;
}

function requireBinary(command: string): string {
  const found = onPath(command);
  if (found === null) {
    throw new Error(
      `${command} is not on PATH: run \`apt-get install etcd-server etcd-client\` (Debian) to get etcd and etcdctl`,
    );
  }
  return found;
}

/** Distinct free loopback ports: all listeners are held open together so they cannot repeat. */
async function freePorts(count: number): Promise<number[]> {
  const servers: net.Server[] = [];
  try {
    for (let i = 0; i < count; i++) {
      const server = net.createServer();
      servers.push(server);
      await new Promise<void>((resolve, reject) => {
        server.once("error", reject);
        server.listen(0, "127.0.0.1", () => resolve());
      });
    }
    return servers.map((s) => (s.address() as net.AddressInfo).port);
  } finally {
    await Promise.all(servers.map((s) => new Promise<void>((resolve) => s.close(() => resolve()))));
  }
}

function healthy(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const req = http.get(
      { host: "127.0.0.1", port, path: "/health", agent: false, timeout: 1_000 },
      (res) => {
        let body = "";
        res.setEncoding("utf8");
        res.on("data", (chunk: string) => {
          body += chunk;
        });
        res.on("end", () => resolve(res.statusCode === 200 && body.includes('"health":"true"')));
        res.on("error", () => resolve(false));
      },
    );
    req.on("timeout", () => req.destroy());
    req.on("error", () => resolve(false));
  });
}

class EtcdStartError extends Error {
  constructor(
    message: string,
    readonly addressInUse: boolean,
  ) {
    super(message);
  }
}

class EtcdHarnessProcess implements EtcdProcess {
  private child: ChildProcess | null = null;
  private exited: Promise<void> = Promise.resolve();
  private paused = false;
  private stderrTail = "";
  private removed = false;

  constructor(
    private readonly etcdBin: string,
    private readonly etcdctlBin: string,
    readonly clientPort: number,
    readonly peerPort: number,
    readonly dataDir: string,
    private readonly ownsDataDir: boolean,
    private readonly extraArgs: readonly string[] = [],
    private readonly tls?: { cert: string; key: string; ca?: string },
    private readonly metricsPort = 0,
    /** A member of a multi-member cluster: its name and the whole --initial-cluster. */
    private readonly member?: { name: string; initialCluster: string },
  ) {}

  get endpoint(): string {
    return `${this.tls ? "https" : "http"}://127.0.0.1:${this.clientPort}`;
  }

  get pid(): number | undefined {
    return this.child?.pid;
  }

  /** Spawns etcd and resolves once /health says true; rejects (process reaped) if it exits first. */
  async launch(): Promise<void> {
    const client = this.endpoint;
    const peer = `http://127.0.0.1:${this.peerPort}`;
    const args = [
      `--name=${this.member?.name ?? "ballast-test"}`,
      `--data-dir=${this.dataDir}`,
      `--listen-client-urls=${client}`,
      `--advertise-client-urls=${client}`,
      `--listen-peer-urls=${peer}`,
      `--initial-advertise-peer-urls=${peer}`,
      `--initial-cluster=${this.member?.initialCluster ?? `ballast-test=${peer}`}`,
      "--initial-cluster-state=new",
      // Single member: short raft ticks only speed up (re)starts, and bring etcd's minimum lease
      // TTL (1.5 election timeouts) down to 1 s so tests can use 1-second leases. Several members
      // keep etcd's defaults (100/1000 ms): a loaded test machine must not make them flap.
      ...(this.member === undefined ? ["--heartbeat-interval=50", "--election-timeout=500"] : []),
      "--logger=zap",
      "--log-level=error",
      ...this.extraArgs,
    ];
    if (this.tls) {
      args.push(`--cert-file=${this.tls.cert}`, `--key-file=${this.tls.key}`, `--listen-metrics-urls=http://127.0.0.1:${this.metricsPort}`);
      if (this.tls.ca) args.push(`--trusted-ca-file=${this.tls.ca}`, "--client-cert-auth");
    }
    // PR_SET_PDEATHSIG through setpriv: etcd dies with this process even when the test runner is
    // killed by a signal and the exit hook never runs.
    const setpriv = onPath("setpriv");
    const [command, argv] =
      setpriv === null ? [this.etcdBin, args] : [setpriv, ["--pdeathsig", "SIGKILL", "--", this.etcdBin, ...args]];
    const child = spawn(command, argv, { stdio: ["ignore", "ignore", "pipe"] });
    this.child = child;
    this.paused = false;
    this.stderrTail = "";
    liveChildren.add(child);
    child.stderr?.setEncoding("utf8");
    child.stderr?.on("data", (chunk: string) => {
      this.stderrTail = (this.stderrTail + chunk).slice(-8_192);
    });
    let hasExited = false;
    this.exited = new Promise<void>((resolve) => {
      child.once("exit", () => {
        hasExited = true;
        liveChildren.delete(child);
        if (this.child === child) this.child = null;
        resolve();
      });
      child.once("error", () => {
        // spawn failure: "exit" may never come
        hasExited = true;
        liveChildren.delete(child);
        if (this.child === child) this.child = null;
        resolve();
      });
    });

    const deadline = Date.now() + HEALTH_TIMEOUT_MS;
    while (!hasExited) {
      if (await healthy(this.tls ? this.metricsPort : this.clientPort)) return;
      if (Date.now() > deadline) {
        await this.kill("SIGKILL");
        throw new EtcdStartError(`etcd did not become healthy in ${HEALTH_TIMEOUT_MS} ms: ${this.stderrTail}`, false);
      }
      await new Promise((resolve) => setTimeout(resolve, 25));
    }
    const addressInUse = /address already in use/i.test(this.stderrTail);
    throw new EtcdStartError(`etcd exited during startup: ${this.stderrTail.trim()}`, addressInUse);
  }

  async kill(signal: NodeJS.Signals = "SIGKILL"): Promise<void> {
    const child = this.child;
    if (child === null) return;
    if (this.paused && signal !== "SIGKILL") this.resume(); // a stopped process would not act on it
    child.kill(signal);
    await this.exited;
  }

  async stop(): Promise<void> {
    const child = this.child;
    if (child !== null) {
      if (this.paused) this.resume();
      child.kill("SIGTERM");
      const timer = setTimeout(() => child.kill("SIGKILL"), STOP_GRACE_MS);
      await this.exited;
      clearTimeout(timer);
    }
    if (this.ownsDataDir && !this.removed) {
      this.removed = true;
      rmSync(this.dataDir, { recursive: true, force: true });
      ownedDirs.delete(this.dataDir);
    }
  }

  async restart(): Promise<void> {
    if (this.removed) throw new Error("restart() after stop(): the data dir is gone");
    if (this.child !== null) await this.kill("SIGTERM");
    // The ports were ours a moment ago; if something grabbed them in between, wait for it to let go.
    const deadline = Date.now() + HEALTH_TIMEOUT_MS;
    for (;;) {
      try {
        await this.launch();
        return;
      } catch (err) {
        if (!(err instanceof EtcdStartError && err.addressInUse) || Date.now() > deadline) throw err;
        await new Promise((resolve) => setTimeout(resolve, 100));
      }
    }
  }

  pause(): void {
    if (this.child === null) throw new Error("pause(): etcd is not running");
    this.child.kill("SIGSTOP");
    this.paused = true;
  }

  resume(): void {
    if (this.child === null) return;
    this.child.kill("SIGCONT");
    this.paused = false;
  }

  etcdctl(...args: string[]): Promise<string> {
    return new Promise((resolve, reject) => {
      execFile(
        this.etcdctlBin,
        [`--endpoints=${this.endpoint}`, "--dial-timeout=3s", "--command-timeout=5s", ...args],
        { env: { ...process.env, ETCDCTL_API: "3" } },
        (err, stdout, stderr) => {
          if (err) reject(new Error(`etcdctl ${args.join(" ")} failed: ${stderr.trim() || err.message}`));
          else resolve(stdout);
        },
      );
    });
  }

  async revision(): Promise<number> {
    const out = JSON.parse(await this.etcdctl("endpoint", "status", "-w", "json")) as {
      Status: { header: { revision: number } };
    }[];
    return Number(out[0].Status.header.revision);
  }

  async compact(revision?: number): Promise<number> {
    const rev = revision ?? (await this.revision());
    await this.etcdctl("compact", String(rev), "--physical");
    return rev;
  }

  async put(key: string, value: string): Promise<number> {
    const out = JSON.parse(await this.etcdctl("put", "-w", "json", "--", key, value)) as {
      header: { revision: number };
    };
    return Number(out.header.revision);
  }

  async get(key: string): Promise<string | null> {
    const out = JSON.parse(await this.etcdctl("get", "-w", "json", "--", key)) as {
      kvs?: { value?: string }[];
    };
    const kv = out.kvs?.[0];
    if (kv === undefined) return null;
    return Buffer.from(kv.value ?? "", "base64").toString("utf8");
  }

  async del(key: string): Promise<number> {
    const out = JSON.parse(await this.etcdctl("del", "-w", "json", "--", key)) as { deleted?: number };
    return Number(out.deleted ?? 0);
  }
}

/** Starts a single-member etcd on free loopback ports; resolves once it answers /health. */
export async function startEtcd(opts: StartEtcdOptions = {}): Promise<EtcdProcess> {
  const etcdBin = requireBinary("etcd");
  const etcdctlBin = requireBinary("etcdctl");
  let lastError: unknown;
  // Free ports are only probably free (another process may bind them before etcd does): retry,
  // each time in a fresh directory so no half-initialised member remembers the old ports.
  for (let attempt = 0; attempt < PORT_ATTEMPTS; attempt++) {
    const [clientPort, peerPort, metricsPort] = await freePorts(3);
    const ownsDataDir = opts.dataDir === undefined;
    const dataDir = opts.dataDir ?? mkdtempSync(join(tmpdir(), "ballast-etcd-"));
    if (ownsDataDir) ownedDirs.add(dataDir);
    const etcd = new EtcdHarnessProcess(etcdBin, etcdctlBin, clientPort, peerPort, dataDir, ownsDataDir, opts.extraArgs, opts.tls, metricsPort);
    try {
      await etcd.launch();
      return etcd;
    } catch (err) {
      lastError = err;
      await etcd.stop();
      if (!(err instanceof EtcdStartError && err.addressInUse)) break;
    }
  }
  throw lastError;
}

/**
 * Starts an n-member etcd cluster on free loopback ports (etcd's default raft timings); resolves once
 * every member answers /health (which needs a leader). Each member is an EtcdProcess: kill, pause
 * and restart one to take it away from the others.
 */
export async function startEtcdCluster(n = 3): Promise<EtcdProcess[]> {
  const etcdBin = requireBinary("etcd");
  const etcdctlBin = requireBinary("etcdctl");
  let lastError: unknown;
  for (let attempt = 0; attempt < PORT_ATTEMPTS; attempt++) {
    const ports = await freePorts(2 * n);
    const names = Array.from({ length: n }, (_, i) => `m${i + 1}`);
    const initialCluster = names.map((name, i) => `${name}=http://127.0.0.1:${ports[2 * i + 1]}`).join(",");
    const members = names.map((name, i) => {
      const dataDir = mkdtempSync(join(tmpdir(), `ballast-etcd-${name}-`));
      ownedDirs.add(dataDir);
      return new EtcdHarnessProcess(etcdBin, etcdctlBin, ports[2 * i], ports[2 * i + 1], dataDir, true, [], undefined, 0, { name, initialCluster });
    });
    const started = await Promise.allSettled(members.map((m) => m.launch()));
    const failed = started.find((r): r is PromiseRejectedResult => r.status === "rejected");
    if (failed === undefined) return members;
    lastError = failed.reason;
    await Promise.all(members.map((m) => m.stop()));
    if (!started.some((r) => r.status === "rejected" && r.reason instanceof EtcdStartError && r.reason.addressInUse)) break;
  }
  throw lastError;
}
