// Three real node processes of one cluster on a test's etcd (dist/: `npm run build` first), for the
// rollout and membership tests: spawn, kill, act as each node's supervisor (a node that exits
// RESTART_EXIT_CODE is started again), read the node, drain and member records, run the CLI, and
// explain a failure with every process's exit code and last log lines.
import { execFile } from "node:child_process";
import { promisify } from "node:util";
import type { NodeRecord } from "../../shared/api.js";
import { parseNodeRecord } from "../../shared/codec.js";
import { KeySchema } from "../../shared/keys.js";
import { parseMember } from "../../shared/members.js";
import { RESTART_EXIT_CODE } from "../../shared/rollout.js";
import type { EtcdStore } from "../../node/control/etcd-store.js";
import { CLI, type NodeProcess, spawnNode } from "./node.js";

const run = promisify(execFile);

export interface NodeClusterOptions {
  etcdEndpoint: string;
  /** The test's own etcd client, for reading records. */
  store: EtcdStore;
  /** The node's config (spawnNode adds the admin listener and info logs). */
  config(id: string): Record<string, unknown>;
  /** Start a node again when it exits RESTART_EXIT_CODE (its supervisor). Settable later. */
  supervise?: boolean;
}

export class NodeCluster {
  readonly keys: KeySchema;
  readonly procs = new Map<string, NodeProcess>();
  supervise: boolean;
  /** Exits of processes the test did not kill, in order. */
  readonly exits: Array<{ id: string; code: number | null }> = [];
  /** Every process started, with how it ended: what a failed rollout is explained with. */
  private readonly started: Array<{ id: string; logs: string[]; code?: number | null }> = [];

  constructor(
    readonly name: string,
    private readonly opts: NodeClusterOptions,
  ) {
    this.keys = KeySchema.forCluster(name);
    this.supervise = opts.supervise ?? false;
  }

  async spawn(id: string): Promise<NodeProcess> {
    const p = await spawnNode(this.opts.config(id));
    this.procs.set(id, p);
    const entry: { id: string; logs: string[]; code?: number | null } = { id, logs: p.logs };
    this.started.push(entry);
    void p.exited.then((code) => {
      entry.code = code;
      if (this.procs.get(id) !== p) return; // killed by the test
      this.exits.push({ id, code });
      this.procs.delete(id);
      if (this.supervise && code === RESTART_EXIT_CODE) {
        void this.spawn(id).catch((err: Error) => this.started.push({ id, logs: [`supervisor: starting ${id} again failed: ${err.message}`], code: null }));
      }
    });
    return p;
  }

  async kill(id: string): Promise<void> {
    const p = this.procs.get(id);
    if (!p) return;
    this.procs.delete(id);
    p.kill("SIGKILL");
    await p.exited;
  }

  async stop(): Promise<void> {
    await Promise.all([...this.procs.keys()].map((id) => this.kill(id)));
  }

  /** The processes started so far with their exit codes and last log lines. */
  history(lines = 15): string {
    return this.started.map((e) => `--- ${e.id} (exit ${e.code === undefined ? "running" : e.code}):\n${e.logs.slice(-lines).join("\n")}`).join("\n");
  }

  async records(): Promise<NodeRecord[]> {
    const { kvs } = await this.opts.store.list(this.keys.nodes);
    return kvs.map((kv) => parseNodeRecord(kv.key.slice(this.keys.nodes.length), kv.value));
  }

  async record(id: string): Promise<NodeRecord | undefined> {
    return (await this.records()).find((r) => r.id === id);
  }

  async drains(): Promise<string[]> {
    const { kvs } = await this.opts.store.list(this.keys.drains);
    return kvs.map((kv) => kv.key.slice(this.keys.drains.length)).sort();
  }

  /** Ids of the valid member records (a malformed one is skipped). */
  async members(): Promise<string[]> {
    const { kvs } = await this.opts.store.list(this.keys.members);
    const out: string[] = [];
    for (const kv of kvs) {
      try {
        out.push(parseMember(kv.key.slice(this.keys.members.length), kv.value).id);
      } catch {
        // a malformed record (a test may write one on purpose)
      }
    }
    return out.sort();
  }

  async readyz(id: string): Promise<number> {
    const p = this.procs.get(id)!;
    const res = await fetch(`http://${p.admin}/readyz`);
    return res.status;
  }

  cli(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
    return run(process.execPath, [CLI, "--etcd", this.opts.etcdEndpoint, "--cluster", this.name, ...args]).then(
      (r) => ({ code: 0, stdout: r.stdout, stderr: r.stderr }),
      (e: { code: number; stdout: string; stderr: string }) => ({ code: e.code, stdout: e.stdout, stderr: e.stderr }),
    );
  }
}
