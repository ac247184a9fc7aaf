// An etcd member container: its health, its view of the raft leader, and etcd's JSON gateway.

import type { StartedTestContainer } from "testcontainers";
import type { ChaosCluster } from "./chaos-cluster.js";
import { Member } from "./member.js";

export class EtcdMember extends Member {
  constructor(
    cluster: ChaosCluster,
    name: string,
    container: StartedTestContainer,
    readonly memberName: string,
  ) {
    super(cluster, "etcd", name, container);
  }

  get clientUrl(): string {
    return `http://${this.ip("ctl")}:2379`;
  }

  protected override aliases(): string[] {
    return [this.memberName];
  }

  async healthy(): Promise<boolean> {
    const res = await fetch(`${this.clientUrl}/health`, { signal: AbortSignal.timeout(1000) });
    return res.ok && ((await res.json()) as { health?: string }).health === "true";
  }

  /** Member id and the leader's id as this member sees them (decimal strings). */
  async status(timeoutMs = 3000): Promise<{ memberId: string; leader: string }> {
    const s = (await this.gateway("/v3/maintenance/status", {}, timeoutMs)) as { header: { member_id: string }; leader: string };
    return { memberId: s.header.member_id, leader: s.leader };
  }

  /** etcd's JSON gateway (grpc-gateway): keys and values base64. */
  async gateway(path: string, body: unknown, timeoutMs = 3000): Promise<unknown> {
    const res = await fetch(`${this.clientUrl}${path}`, {
      method: "POST",
      body: JSON.stringify(body),
      headers: { "content-type": "application/json" },
      signal: AbortSignal.timeout(timeoutMs),
    });
    if (!res.ok) throw new Error(`${this.name} ${path}: ${res.status} ${await res.text()}`);
    return res.json();
  }
}
