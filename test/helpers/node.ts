// Ballast nodes for tests: in-process (fast, inspectable) or as child processes of the compiled CLI
// (for signals: SIGTERM drain, SIGKILL, SIGSTOP). Config objects go through the real schema.
import { type ChildProcess, spawn } from "node:child_process";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll } from "vitest";
import { stringify } from "yaml";
import { nodeConfigSchema } from "../../shared/schema.js";
import { createLogger } from "../../node/log.js";
import { BallastNode } from "../../node/node.js";
import { waitFor } from "./wait.js";

const running = new Set<BallastNode>();

export async function startNode(config: Record<string, unknown>, opts: { waitForSnapshot?: boolean } = {}): Promise<BallastNode> {
  // The access log is on by default and writes to stdout; in-process nodes keep the test output clean
  // unless a test turns it on (with a file) or BALLAST_TEST_LOG asks for logs.
  const quiet = process.env.BALLAST_TEST_LOG === undefined ? { accessLog: { enabled: false } } : {};
  const parsed = nodeConfigSchema.parse({ admin: { listen: "127.0.0.1:0" }, ...quiet, ...config });
  const node = new BallastNode({ config: parsed, log: createLogger(process.env.BALLAST_TEST_LOG ?? "silent", { node: parsed.node.id }) });
  running.add(node);
  await node.start(opts);
  return node;
}

export async function stopAllNodes(): Promise<void> {
  await Promise.all([...running].map((n) => n.close()));
  running.clear();
}

/** The bound port of a service's listener (services listen on port 0 in tests). */
export function portOf(node: BallastNode, service: string): number {
  const l = node.plane.listenerOf(service);
  if (!l || l.boundPort === 0) throw new Error(`service ${service} is not listening on node ${node.id}`);
  return l.boundPort;
}

const repo = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
export const CLI = join(repo, "dist/node/cli.js");

export interface NodeProcess {
  child: ChildProcess;
  admin: string;
  /** The config file the node runs from (tests rewrite it, then send SIGHUP). */
  file: string;
  logs: string[];
  exited: Promise<number | null>;
  kill(signal?: NodeJS.Signals): void;
}

const children = new Set<ChildProcess>();
process.on("exit", () => {
  for (const c of children) c.kill("SIGKILL");
});
// A test file's child nodes end with the file: vitest may end its worker without an "exit" event,
// and a node a test forgot (or could not) stop would otherwise live on with its parent gone.
afterAll(async () => {
  const left = [...children];
  await Promise.all(left.map((c) => new Promise<void>((r) => {
    if (c.exitCode !== null || c.signalCode !== null) return r();
    c.once("exit", () => r());
    c.kill("SIGKILL");
  })));
});

/** Writes a node config file as spawnNode does (admin on port 0, info logs), for a reload. */
export function writeNodeConfig(file: string, config: Record<string, unknown>): void {
  writeFileSync(file, stringify({ admin: { listen: "127.0.0.1:0" }, log: { level: "info" }, ...config }));
}

export interface SpawnOptions {
  /** Options for the node binary before the script (e.g. `--import preload.mjs`). */
  nodeArgs?: string[];
  /** Command run in front of node, e.g. `["prlimit", "--nofile=256:256", "--"]`. */
  wrapper?: string[];
  env?: Record<string, string>;
  /** More arguments after `node --config FILE` (e.g. `--watch`). */
  args?: string[];
}

/** Runs `ballast node --config` as a child process (needs `npm run build`); resolves once its admin API listens. */
export async function spawnNode(config: Record<string, unknown>, opts: SpawnOptions = {}): Promise<NodeProcess> {
  const dir = mkdtempSync(join(tmpdir(), "ballast-node-"));
  const file = join(dir, "ballast.yaml");
  writeNodeConfig(file, config);
  const argv = [...(opts.nodeArgs ?? []), CLI, "node", "--config", file, ...(opts.args ?? [])];
  const wrapper = opts.wrapper ?? [];
  const child = spawn(wrapper[0] ?? process.execPath, wrapper.length > 0 ? [...wrapper.slice(1), process.execPath, ...argv] : argv, {
    stdio: ["ignore", "pipe", "pipe"],
    env: { ...process.env, ...opts.env },
  });
  children.add(child);
  const logs: string[] = [];
  let admin = "";
  let buf = "";
  child.stdout!.on("data", (d: Buffer) => {
    buf += d.toString();
    let nl = buf.indexOf("\n");
    while (nl >= 0) {
      const line = buf.slice(0, nl);
      buf = buf.slice(nl + 1);
      logs.push(line);
      try {
        const j = JSON.parse(line) as { msg?: string; address?: string };
        if (j.msg === "admin listening" && j.address) admin = j.address;
      } catch {
        // not JSON: kept in logs
      }
      nl = buf.indexOf("\n");
    }
  });
  child.stderr!.on("data", (d: Buffer) => logs.push(d.toString()));
  const exited = new Promise<number | null>((r) =>
    child.on("exit", (code) => {
      children.delete(child);
      r(code);
    }),
  );
  let dead = false;
  void exited.then(() => (dead = true));
  await waitFor(() => {
    if (dead) throw new Error(`node exited:\n${logs.join("\n")}`);
    return admin !== "";
  }, { timeoutMs: 45_000, message: "node admin listening" });
  return { child, admin, file, logs, exited, kill: (sig = "SIGKILL") => child.kill(sig) };
}

export async function getJson<T = Record<string, unknown>>(admin: string, path: string): Promise<T> {
  const res = await fetch(`http://${admin}${path}`);
  return (await res.json()) as T;
}
