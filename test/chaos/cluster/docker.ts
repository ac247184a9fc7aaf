// Docker for the chaos harness: the local images, the labels every container and network carries,
// a GenericContainer with what testcontainers does not offer, and removal (per run, and of runs whose
// process died). Nothing is pulled: images come from deploy/images/build.sh.

import Docker from "dockerode";
import { GenericContainer } from "testcontainers";

process.env.TESTCONTAINERS_RYUK_DISABLED ??= "true";
process.env.TESTCONTAINERS_HOST_OVERRIDE ??= "127.0.0.1";

export const IMAGES = {
  node: "ballast-node:local",
  etcd: "ballast-etcd:local",
  bird: "ballast-bird:local",
  base: "ballast-base:local",
} as const;

export const RUN_LABEL = "ballast.chaos";
export const OWNER_LABEL = "ballast.chaos.owner";

export const docker = new Docker();

// GenericContainer with what the harness needs and testcontainers does not offer: a network chosen
// at create time with aliases and no default bridge (testcontainers' withNetworkAliases attaches the
// default bridge first), further networks connected before start, and sysctls.
export class ChaosContainer extends GenericContainer {
  private extraNetworks: { network: string; aliases: string[]; address?: string }[] = [];

  constructor(image: string, name: string, run: string) {
    super(image);
    this.withName(name).withLabels({ [RUN_LABEL]: run, [OWNER_LABEL]: String(process.pid) });
  }

  onNetwork(network: string, aliases: string[] = []): this {
    this.networkMode = network;
    this.createOpts.NetworkingConfig = { EndpointsConfig: { [network]: { Aliases: aliases } } };
    return this;
  }

  /** Also attached to `network`; at a fixed `address` when given (else docker picks one). */
  alsoOn(network: string, aliases: string[] = [], address?: string): this {
    this.extraNetworks.push({ network, aliases, address });
    return this;
  }

  inNetworkNamespaceOf(containerId: string): this {
    this.networkMode = `container:${containerId}`;
    return this;
  }

  withSysctls(sysctls: Record<string, string>): this {
    this.hostConfig.Sysctls = { ...this.hostConfig.Sysctls, ...sysctls };
    return this;
  }

  protected override async containerCreated(containerId: string): Promise<void> {
    for (const { network, aliases, address } of this.extraNetworks) {
      await docker.getNetwork(network).connect({ Container: containerId, EndpointConfig: { Aliases: aliases, ...(address ? { IPAMConfig: { IPv4Address: address } } : {}) } });
    }
  }
}

export async function createNetwork(name: string, run: string, subnet: string, ipRange?: string): Promise<void> {
  await docker.createNetwork({
    Name: name,
    Driver: "bridge",
    Internal: true,
    CheckDuplicate: true,
    Labels: { [RUN_LABEL]: run, [OWNER_LABEL]: String(process.pid) },
    IPAM: { Config: [{ Subnet: subnet, IPRange: ipRange }] },
  });
}

/** Strips docker's 8-byte stream headers from a non-TTY log. */
export function demuxDockerLog(buf: Buffer): string {
  const out: Buffer[] = [];
  let i = 0;
  while (i + 8 <= buf.length) {
    const len = buf.readUInt32BE(i + 4);
    out.push(buf.subarray(i + 8, i + 8 + len));
    i += 8 + len;
  }
  return Buffer.concat(out).toString("utf8");
}

/** Removes containers (running or not, with volumes) and then networks carrying a label. */
export async function removeLabelled(label: string): Promise<number> {
  const containers = await docker.listContainers({ all: true, filters: { label: [label] } });
  // Announcers live in their node's network namespace: they go first.
  const remove = async (info: Docker.ContainerInfo) => {
    const c = docker.getContainer(info.Id);
    if (info.State === "paused") await c.unpause().catch(() => {});
    await c.remove({ force: true, v: true }).catch(() => {});
  };
  const inOthersNamespace = (info: Docker.ContainerInfo) => info.HostConfig?.NetworkMode?.startsWith("container:") ?? false;
  await Promise.all(containers.filter(inOthersNamespace).map(remove));
  await Promise.all(containers.filter((i) => !inOthersNamespace(i)).map(remove));
  const networks = await docker.listNetworks({ filters: { label: [label] } });
  for (const n of networks) await docker.getNetwork(n.Id).remove().catch(() => {});
  return containers.length + networks.length;
}

/** Removes what earlier runs left behind when their process died (owner pid gone). */
export async function sweepOrphans(): Promise<number> {
  const alive = (pid: number) => {
    try {
      process.kill(pid, 0);
      return true;
    } catch {
      return false;
    }
  };
  const owners = new Set<string>();
  for (const c of await docker.listContainers({ all: true, filters: { label: [OWNER_LABEL] } })) owners.add(c.Labels[OWNER_LABEL]);
  for (const n of await docker.listNetworks({ filters: { label: [OWNER_LABEL] } })) owners.add(n.Labels?.[OWNER_LABEL] ?? "");
  let removed = 0;
  for (const owner of owners) {
    if (owner && Number(owner) !== process.pid && !alive(Number(owner))) removed += await removeLabelled(`${OWNER_LABEL}=${owner}`);
  }
  return removed;
}
