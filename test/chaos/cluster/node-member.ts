// A Ballast node container (named NodeMember, not BallastNode: that is the product's class in
// node/node.ts): its admin API (/readyz, /api/state typed by shared/api.ts, /api/route, /metrics),
// its JSON log, and its BIRD announcer.

import type { StartedTestContainer } from "testcontainers";
import type { RouteAnswer, StateView } from "../../../shared/api.js";
import type { ChaosCluster } from "./chaos-cluster.js";
import { Member, type NetKey } from "./member.js";

export class NodeMember extends Member {
  /** The BIRD announcer sharing this node's network namespace (anycast only). */
  announcer?: Member;

  constructor(
    cluster: ChaosCluster,
    name: string,
    container: StartedTestContainer,
    readonly nodeId: string,
  ) {
    super(cluster, "node", name, container);
  }

  protected override aliases(net: NetKey): string[] {
    return net === "ctl" ? [this.nodeId] : [];
  }

  /** Admin API over the fabric network (it stays reachable when the node is cut from etcd). */
  get adminUrl(): string {
    return `http://${this.ip("fabric")}:9090`;
  }

  async ready(): Promise<boolean> {
    return (await this.readiness()) === true;
  }

  /** /readyz: true (200), false (any other answer), null (no answer within 2 s: a loaded machine's docker network, not a verdict). */
  async readiness(): Promise<boolean | null> {
    try {
      const res = await fetch(`${this.adminUrl}/readyz`, { signal: AbortSignal.timeout(2000) });
      await res.arrayBuffer();
      return res.status === 200;
    } catch {
      return null;
    }
  }

  async api<T = Record<string, unknown>>(path: string): Promise<T> {
    const res = await fetch(`${this.adminUrl}${path}`, { signal: AbortSignal.timeout(3000) });
    if (!res.ok) throw new Error(`${this.name} ${path}: ${res.status} ${await res.text()}`);
    return (await res.json()) as T;
  }

  state(): Promise<StateView> {
    return this.api<StateView>("/api/state");
  }

  /** One counter or gauge from /metrics (summed over label sets matching `labels`), 0 when absent. */
  async metric(name: string, labels = ""): Promise<number> {
    const text = await this.metrics();
    let sum = 0;
    for (const line of text.split("\n")) {
      if (!line.startsWith(name) || (line[name.length] !== " " && line[name.length] !== "{")) continue;
      if (labels && !line.includes(labels)) continue;
      sum += Number(line.slice(line.lastIndexOf(" ") + 1));
    }
    return sum;
  }

  route(service: string, client: string): Promise<RouteAnswer> {
    return this.api(`/api/route?service=${encodeURIComponent(service)}&client=${encodeURIComponent(client)}`);
  }

  async metrics(): Promise<string> {
    const res = await fetch(`${this.adminUrl}/metrics`, { signal: AbortSignal.timeout(3000) });
    return res.text();
  }

  /** The node's JSON log lines (pino), each with its own `time` as epoch ms; other lines are skipped. */
  async logEvents(): Promise<LogEvent[]> {
    const out: LogEvent[] = [];
    for (const line of (await this.logs()).split("\n")) {
      const brace = line.indexOf("{");
      if (brace < 0) continue;
      try {
        const e = JSON.parse(line.slice(brace)) as Record<string, unknown>;
        out.push({ ...e, at: Date.parse(String(e.time)), level: Number(e.level), msg: String(e.msg ?? "") });
      } catch {
        // not a log record
      }
    }
    return out;
  }

  /** Kill the node and its announcer together, as when the whole machine dies. */
  async killWithAnnouncer(): Promise<void> {
    await Promise.all([this.kill(), this.announcer?.kill()]);
  }
}

export interface LogEvent extends Record<string, unknown> {
  at: number;
  /** pino levels: 30 info, 40 warn, 50 error, 60 fatal */
  level: number;
  msg: string;
}

