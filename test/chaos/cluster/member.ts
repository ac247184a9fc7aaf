// One container of a chaos cluster and the faults it can suffer (kill, stop, pause, network cut),
// with its addresses, exit times, exec and log. Etcd members, nodes and the client extend it.

import type Docker from "dockerode";
import type { StartedTestContainer } from "testcontainers";
import type { ChaosCluster } from "./chaos-cluster.js";
import { demuxDockerLog, docker } from "./docker.js";

/** The cluster's two networks: control (etcd and nodes) and fabric (nodes, backends, router, client). */
export type NetKey = "ctl" | "fabric";

export interface NetworkInfo {
  name: string;
  subnet: string;
  /** First three octets of the address range containers get, e.g. "10.140.0". */
  base: string;
}

export interface ExecResult {
  exitCode: number;
  stdout: string;
  stderr: string;
}

/** One container and the faults it can suffer. */
export class Member {
  private addresses = new Map<string, string>();

  constructor(
    readonly cluster: ChaosCluster,
    readonly role: string,
    readonly name: string,
    readonly container: StartedTestContainer,
  ) {}

  get id(): string {
    return this.container.getId();
  }

  private get handle(): Docker.Container {
    return docker.getContainer(this.id);
  }

  /** Address on a network (as of the last start/connect). */
  ip(net: NetKey): string {
    const ip = this.addresses.get(this.cluster.networks[net].name);
    if (!ip) throw new Error(`${this.name} has no address on ${net}`);
    return ip;
  }

  async refresh(): Promise<void> {
    const info = await this.handle.inspect();
    this.addresses.clear();
    for (const [net, ep] of Object.entries(info.NetworkSettings.Networks ?? {})) if (ep.IPAddress) this.addresses.set(net, ep.IPAddress);
  }

  /** SIGKILL (or another signal); the container stays, start() brings it back. */
  async kill(signal = "SIGKILL"): Promise<void> {
    await this.handle.kill({ signal });
  }

  /** docker stop: SIGTERM, then SIGKILL after `graceSeconds`; resolves when the container has exited. */
  async stop(graceSeconds = 30): Promise<void> {
    await this.handle.stop({ t: graceSeconds });
  }

  /** Sends SIGTERM and returns at once (the scenario watches the drain). */
  async terminate(): Promise<void> {
    await this.kill("SIGTERM");
  }

  async start(): Promise<void> {
    await this.handle.start();
    await this.refresh();
  }

  async pause(): Promise<void> {
    await this.handle.pause();
  }

  async unpause(): Promise<void> {
    await this.handle.unpause();
  }

  /** Cuts the container from a network; it keeps its address there for connect(). */
  async disconnect(net: NetKey): Promise<void> {
    await docker.getNetwork(this.cluster.networks[net].name).disconnect({ Container: this.id, Force: true });
  }

  async connect(net: NetKey): Promise<void> {
    const network = this.cluster.networks[net].name;
    const ip = this.addresses.get(network);
    await docker.getNetwork(network).connect({
      Container: this.id,
      EndpointConfig: { IPAMConfig: ip ? { IPv4Address: ip } : undefined, Aliases: this.aliases(net) },
    });
  }

  protected aliases(_net: NetKey): string[] {
    return [];
  }

  async running(): Promise<boolean> {
    const info = await this.handle.inspect();
    return info.State.Running && !info.State.Paused;
  }

  async inspect(): Promise<Docker.ContainerInspectInfo> {
    return this.handle.inspect();
  }

  /** When the container's process last started and last ended (epoch ms, docker's own clock = host's). */
  async times(): Promise<{ startedAt: number; finishedAt: number; running: boolean; paused: boolean; exitCode: number }> {
    const s = (await this.handle.inspect()).State;
    return { startedAt: Date.parse(s.StartedAt), finishedAt: Date.parse(s.FinishedAt), running: s.Running, paused: s.Paused, exitCode: s.ExitCode };
  }

  /** Networks the container is attached to now (names). */
  async attached(): Promise<string[]> {
    return Object.keys((await this.handle.inspect()).NetworkSettings.Networks ?? {});
  }

  async exitCode(): Promise<number | null> {
    const info = await this.handle.inspect();
    return info.State.Running ? null : info.State.ExitCode;
  }

  async exec(cmd: string[], opts: { user?: string } = {}): Promise<ExecResult> {
    const r = await this.container.exec(cmd, opts.user ? { user: opts.user } : undefined);
    return { exitCode: r.exitCode, stdout: r.stdout, stderr: r.stderr };
  }

  /** Runs a command and fails with its output when it exits non-zero. */
  async sh(script: string): Promise<string> {
    const r = await this.exec(["/bin/sh", "-c", script]);
    if (r.exitCode !== 0) throw new Error(`${this.name}: \`${script}\` exited ${r.exitCode}: ${r.stderr || r.stdout}`);
    return r.stdout;
  }

  /** The container's log (stdout and stderr), each line prefixed with docker's RFC 3339 timestamp. */
  async logs(): Promise<string> {
    const buf = (await this.handle.logs({ stdout: true, stderr: true, timestamps: true, follow: false })) as unknown as Buffer;
    return demuxDockerLog(buf);
  }
}
