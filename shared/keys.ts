// The etcd key schema, in one place. Every key lives under /ballast/<cluster>/ (or a configured prefix).
//
//   services/<service>                 JSON ServiceInput, written by people (etcdctl, `ballast service put`)
//   backends/<service>/<id>            JSON BackendInput or "address:port", written by people
//   nodes/<node-id>                    msgpack NodeRecord, leased to the node (gone within lease TTL of its death)
//   health/election/…                  etcd3 election keys of the health-check leader
//   health/heartbeat                   msgpack HealthHeartbeat, written by the leader (fenced)
//   health/verdicts/<service>/<id>     msgpack Verdict, written by the leader (fenced), only on change
//   affinity/<service>/<node>/<seq>    msgpack AffinityBatch, leased for the affinity TTL (not to the writer)
//   dns                                JSON DnsRecordInput (zone, TTL, names), written by people (`ballast dns set`)

export function clusterPrefix(cluster: string, prefix?: string): string {
  if (prefix) return prefix.endsWith("/") ? prefix : `${prefix}/`;
  return `/ballast/${cluster}/`;
}

export type KeyKind = "service" | "backend" | "node" | "heartbeat" | "verdict" | "affinity" | "election" | "dns";

export interface ParsedKey {
  kind: KeyKind;
  service?: string;
  id?: string;
  node?: string;
  seq?: string;
}

export class KeySchema {
  constructor(readonly prefix: string) {}

  static forCluster(cluster: string, prefix?: string): KeySchema {
    return new KeySchema(clusterPrefix(cluster, prefix));
  }

  get services(): string { return `${this.prefix}services/`; }
  get backends(): string { return `${this.prefix}backends/`; }
  get nodes(): string { return `${this.prefix}nodes/`; }
  get health(): string { return `${this.prefix}health/`; }
  get verdicts(): string { return `${this.prefix}health/verdicts/`; }
  get election(): string { return `${this.prefix}health/election/`; }
  get heartbeat(): string { return `${this.prefix}health/heartbeat`; }
  get affinity(): string { return `${this.prefix}affinity/`; }
  get dns(): string { return `${this.prefix}dns`; }

  service(name: string): string { return `${this.services}${name}`; }
  backend(service: string, id: string): string { return `${this.backends}${service}/${id}`; }
  backendsOf(service: string): string { return `${this.backends}${service}/`; }
  node(id: string): string { return `${this.nodes}${id}`; }
  verdict(service: string, id: string): string { return `${this.verdicts}${service}/${id}`; }
  affinityBatch(service: string, node: string, seq: number | string): string { return `${this.affinity}${service}/${node}/${seq}`; }

  /** Classifies a key under this prefix; null for keys this version does not know (they are ignored, not errors). */
  parse(key: string): ParsedKey | null {
    if (!key.startsWith(this.prefix)) return null;
    const parts = key.slice(this.prefix.length).split("/");
    switch (parts[0]) {
      case "services":
        return parts.length === 2 && parts[1] ? { kind: "service", service: parts[1] } : null;
      case "backends":
        return parts.length === 3 && parts[1] && parts[2] ? { kind: "backend", service: parts[1], id: parts[2] } : null;
      case "nodes":
        return parts.length === 2 && parts[1] ? { kind: "node", node: parts[1] } : null;
      case "health":
        if (parts[1] === "heartbeat" && parts.length === 2) return { kind: "heartbeat" };
        if (parts[1] === "verdicts" && parts.length === 4 && parts[2] && parts[3]) return { kind: "verdict", service: parts[2], id: parts[3] };
        if (parts[1] === "election") return { kind: "election" };
        return null;
      case "dns":
        return parts.length === 1 ? { kind: "dns" } : null;
      case "affinity":
        return parts.length === 4 && parts[1] && parts[2] && parts[3] ? { kind: "affinity", service: parts[1], node: parts[2], seq: parts[3] } : null;
      default:
        return null;
    }
  }
}
