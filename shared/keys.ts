// The etcd key schema, in one place. Every key lives under /ballast/<cluster>/ (or a configured prefix).
//
//   services/<service>                 JSON ServiceInput, written by people (etcdctl, `ballast service put`)
//   backends/<service>/<id>            JSON BackendInput or "address:port", written by people
//   nodes/<node-id>                    msgpack NodeRecord, leased to the node (gone within lease TTL of its death)
//   members/<node-id>                  JSON MemberRecord (shared/members.ts), written by the node at start, not leased:
//                                      a member without a live nodes/ record is down (`ballast node forget` removes it)
//   health/election/…                  etcd3 election keys of the health-check leader
//   health/heartbeat                   msgpack HealthHeartbeat, written by the leader (fenced)
//   health/verdicts/<service>/<id>     msgpack Verdict, written by the leader (fenced), only on change
//   health/observations/<service>/<node>  msgpack Observation, leased to the observer node, only on change
//   affinity/<service>/<node>/<seq>    msgpack AffinityBatch, leased for the affinity TTL (not to the writer)
//   dns                                JSON DnsRecordInput (zone, TTL, names), written by people (`ballast dns set`)
//   events/<node>/<ms>-<seq>           JSON event (node/events.ts), leased for an hour
//   rollout/drains/<node>              JSON DrainRequest (shared/rollout.ts): the node drains while it exists
//   rollout/guard                      JSON, rewritten in the same transaction as every drain/undrain (the drain guard)
//   rollout/state                      JSON RolloutState, written by `ballast rollout restart`
//   rollout/lock                       the running `ballast rollout` CLI's key, leased to it

export function clusterPrefix(cluster: string, prefix?: string): string {
  if (prefix) return prefix.endsWith("/") ? prefix : `${prefix}/`;
  return `/ballast/${cluster}/`;
}

/**
 * What a key segment may hold, the same rules the schema applies to names in values: names open
 * listeners, label metrics and show in logs and the status page, so newlines, bidi overrides or
 * 2000-character names must never get that far.
 */
export const SERVICE_NAME = /^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$/;
export const BACKEND_ID = /^[a-zA-Z0-9][a-zA-Z0-9_.:-]{0,127}$/;
export const NODE_ID = /^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$/;
/** Affinity batch sequence: the writer's millisecond clock, strictly increasing. */
const SEQ = /^[0-9]{1,20}$/;

export type KeyKind = "service" | "backend" | "node" | "heartbeat" | "verdict" | "observation" | "affinity" | "election" | "dns" | "event" | "drain" | "rollout" | "member";
/** Event key suffix: the writer's millisecond clock and a sequence number. */
const EVENT_SEQ = /^[0-9]{1,15}-[0-9]{1,10}$/;

export interface ParsedKey {
  kind: KeyKind;
  service?: string;
  id?: string;
  node?: string;
  seq?: string;
}

/** Shown for a segment that breaks its rule; the segment itself is quoted with escapes, cut short. */
function badSegment(what: string, value: string, rule: string): string {
  const shown = value.length > 40 ? `${JSON.stringify(value.slice(0, 40))}… (${value.length} characters)` : JSON.stringify(value);
  return `${what} ${shown} is not ${rule}`;
}
const SERVICE_RULE = "1-63 characters of letters, digits, '_', '.', '-'";
const BACKEND_RULE = "1-128 characters of letters, digits, '_', '.', ':', '-'";

export class KeySchema {
  constructor(readonly prefix: string) {}

  static forCluster(cluster: string, prefix?: string): KeySchema {
    return new KeySchema(clusterPrefix(cluster, prefix));
  }

  get services(): string { return `${this.prefix}services/`; }
  get backends(): string { return `${this.prefix}backends/`; }
  get nodes(): string { return `${this.prefix}nodes/`; }
  get members(): string { return `${this.prefix}members/`; }
  get health(): string { return `${this.prefix}health/`; }
  get verdicts(): string { return `${this.prefix}health/verdicts/`; }
  get election(): string { return `${this.prefix}health/election/`; }
  get observations(): string { return `${this.prefix}health/observations/`; }
  get heartbeat(): string { return `${this.prefix}health/heartbeat`; }
  get affinity(): string { return `${this.prefix}affinity/`; }
  get dns(): string { return `${this.prefix}dns`; }
  get events(): string { return `${this.prefix}events/`; }
  get drains(): string { return `${this.prefix}rollout/drains/`; }
  get drainGuard(): string { return `${this.prefix}rollout/guard`; }
  get rolloutState(): string { return `${this.prefix}rollout/state`; }
  get rolloutLock(): string { return `${this.prefix}rollout/lock`; }

  service(name: string): string { return `${this.services}${name}`; }
  backend(service: string, id: string): string { return `${this.backends}${service}/${id}`; }
  backendsOf(service: string): string { return `${this.backends}${service}/`; }
  node(id: string): string { return `${this.nodes}${id}`; }
  member(id: string): string { return `${this.members}${id}`; }
  drain(node: string): string { return `${this.drains}${node}`; }
  verdict(service: string, id: string): string { return `${this.verdicts}${service}/${id}`; }
  observation(service: string, node: string): string { return `${this.observations}${service}/${node}`; }
  affinityBatch(service: string, node: string, seq: number | string): string { return `${this.affinity}${service}/${node}/${seq}`; }

  /**
   * Classifies a key under this prefix; null for a key outside the prefix or one this version does not
   * recognise (`reason` says why: callers list such keys as invalid rather than ignore them silently).
   */
  parse(key: string): ParsedKey | null {
    const r = this.classify(key);
    return typeof r === "string" ? null : r;
  }

  /** Why a key under the prefix is not recognised; null when it is (or is not under the prefix). */
  reason(key: string): string | null {
    const r = this.classify(key);
    return typeof r === "string" && r !== "" ? r : null;
  }

  private classify(key: string): ParsedKey | string {
    if (!key.startsWith(this.prefix)) return "";
    const parts = key.slice(this.prefix.length).split("/");
    const shape = (n: number, form: string) => (parts.length === n ? null : `unrecognised key: expected ${form}`);
    const service = (s: string) => (SERVICE_NAME.test(s) ? null : badSegment("service name", s, SERVICE_RULE));
    const backend = (s: string) => (BACKEND_ID.test(s) ? null : badSegment("backend id", s, BACKEND_RULE));
    const node = (s: string) => (NODE_ID.test(s) ? null : badSegment("node id", s, SERVICE_RULE));
    switch (parts[0]) {
      case "services":
        return shape(2, "services/<service>") ?? service(parts[1]) ?? { kind: "service", service: parts[1] };
      case "backends":
        return shape(3, "backends/<service>/<id>") ?? service(parts[1]) ?? backend(parts[2]) ?? { kind: "backend", service: parts[1], id: parts[2] };
      case "nodes":
        return shape(2, "nodes/<node>") ?? node(parts[1]) ?? { kind: "node", node: parts[1] };
      case "members":
        return shape(2, "members/<node>") ?? node(parts[1]) ?? { kind: "member", node: parts[1] };
      case "health":
        if (parts[1] === "heartbeat") return shape(2, "health/heartbeat") ?? { kind: "heartbeat" };
        if (parts[1] === "verdicts") return shape(4, "health/verdicts/<service>/<id>") ?? service(parts[2]) ?? backend(parts[3]) ?? { kind: "verdict", service: parts[2], id: parts[3] };
        if (parts[1] === "observations") return shape(4, "health/observations/<service>/<node>") ?? service(parts[2]) ?? node(parts[3]) ?? { kind: "observation", service: parts[2], node: parts[3] };
        // etcd3's election keys: their names are the library's, not ours to judge.
        if (parts[1] === "election") return { kind: "election" };
        return "unrecognised key: expected health/heartbeat, health/verdicts/…, health/observations/… or health/election/…";
      case "dns":
        return shape(1, "dns") ?? { kind: "dns" };
      case "affinity":
        return (
          shape(4, "affinity/<service>/<node>/<seq>") ??
          service(parts[1]) ??
          node(parts[2]) ??
          (SEQ.test(parts[3]) ? null : badSegment("batch sequence", parts[3], "1-20 digits")) ?? { kind: "affinity", service: parts[1], node: parts[2], seq: parts[3] }
        );
      case "events":
        return shape(3, "events/<node>/<ms>-<seq>") ?? node(parts[1]) ?? (EVENT_SEQ.test(parts[2]) ? null : badSegment("event sequence", parts[2], "<ms>-<seq> digits")) ?? { kind: "event", node: parts[1] };
      case "rollout":
        // `id` is which rollout key: "state", "lock" or "guard".
        if (parts[1] === "drains") return shape(3, "rollout/drains/<node>") ?? node(parts[2]) ?? { kind: "drain", node: parts[2] };
        if (parts.length === 2 && (parts[1] === "state" || parts[1] === "lock" || parts[1] === "guard")) return { kind: "rollout", id: parts[1] };
        return "unrecognised key: expected rollout/drains/<node>, rollout/state, rollout/lock or rollout/guard";
      default:
        return `unrecognised key: ${JSON.stringify(parts[0].slice(0, 40))} is not one of services, backends, nodes, members, health, affinity, dns, events, rollout`;
    }
  }
}
