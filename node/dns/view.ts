// The DNS view: a pure function from the cluster's `dns` record, the registered nodes and the
// snapshot's services to the names the responder answers for. Built once per change (like the
// snapshot), swapped by reference, read per query. Same inputs → same view on every node.
import net from "node:net";
import type { NodeRecord } from "../../shared/codec.js";
import type { DnsRecordSpec, Locality } from "../../shared/schema.js";
import { CidrList } from "../model/access.js";

/** One address of a live node: what an A/AAAA answer carries. */
export interface DnsAddress {
  readonly node: string;
  readonly zone: string;
  readonly address: string;
}

/** Addresses of one family, split per client zone so a query only rotates ready-made arrays. */
export interface AddressSet {
  /** Every live node's addresses, sorted by node id then address. */
  readonly all: readonly DnsAddress[];
  /** Client zone → [that zone's addresses, everyone else's] (only for `prefer-zone` names). */
  readonly byZone: ReadonlyMap<string, readonly [readonly DnsAddress[], readonly DnsAddress[]]>;
}

export interface DnsName {
  /** Lower case, no trailing dot. */
  readonly fqdn: string;
  /** The service it publishes; "" for a nameserver name (every live node). */
  readonly service: string;
  readonly ttl: number;
  readonly answers: number;
  readonly locality: Locality;
  readonly v4: AddressSet;
  readonly v6: AddressSet;
}

export interface DnsNodeView {
  readonly id: string;
  readonly zone: string;
  readonly addresses: readonly string[];
  /** In the answers: registered, ready, not draining, with a public address. */
  readonly live: boolean;
  /** Why not live ("not ready", "draining", "no public address"); "" when live. */
  readonly why: string;
  /** Services the node says it cannot carry (its listener failed to bind…): left out of their answers. */
  readonly unserved: readonly string[];
}

export interface DnsView {
  /** Lower case, no trailing dot. */
  readonly zone: string;
  readonly serial: number;
  readonly ttl: number;
  readonly negativeTtl: number;
  readonly soa: { mname: string; rname: string; serial: number; refresh: number; retry: number; expire: number; minimum: number };
  readonly nameservers: readonly string[];
  readonly names: ReadonlyMap<string, DnsName>;
  /** Names that exist only as parents of other names (answer NODATA, not NXDOMAIN). */
  readonly emptyNonTerminals: ReadonlySet<string>;
  /** Client zones in name order: the first whose subnets hold the client wins. */
  readonly clientZones: readonly { readonly zone: string; readonly cidrs: CidrList }[];
  readonly nodes: readonly DnsNodeView[];
  /** Services skipped, with the reason (a clash of names, an invalid clientZones entry). */
  readonly problems: readonly string[];
}

const byString = (a: string, b: string) => (a < b ? -1 : a > b ? 1 : 0);

export function normalizeName(name: string): string {
  const lower = name.toLowerCase();
  return lower.endsWith(".") ? lower.slice(0, -1) : lower;
}

/** "www" → "www.lb.example"; names already inside the zone (or fully qualified with a dot) are kept. */
function qualify(name: string, zone: string): string {
  const n = normalizeName(name);
  if (name.endsWith(".") || n === zone || n.endsWith(`.${zone}`)) return n;
  return `${n}.${zone}`;
}

/** Services a node record says it cannot carry (peer-written: anything that is not a string is ignored). */
function unservedOf(r: NodeRecord): string[] {
  return Array.isArray(r.unserved) ? r.unserved.filter((s): s is string => typeof s === "string") : [];
}

/** Public addresses of a node record (peer-written: anything that is not an IP is ignored). */
function publicOf(r: NodeRecord): string[] {
  const out: string[] = [];
  if (!Array.isArray(r.public)) return out;
  for (const a of r.public) if (typeof a === "string" && net.isIP(a) !== 0 && !out.includes(a)) out.push(a);
  return out.sort(byString);
}

function addressSet(addrs: readonly DnsAddress[], zones: readonly string[], locality: Locality): AddressSet {
  const byZone = new Map<string, readonly [readonly DnsAddress[], readonly DnsAddress[]]>();
  if (locality === "prefer-zone") {
    for (const z of zones) byZone.set(z, [addrs.filter((a) => a.zone === z), addrs.filter((a) => a.zone !== z)]);
  }
  return { all: addrs, byZone };
}

export function buildDnsView(spec: DnsRecordSpec | null, nodes: Iterable<NodeRecord>, services: Iterable<string>, revision: number): DnsView | null {
  if (spec === null) return null;
  const zone = normalizeName(spec.zone);
  const problems: string[] = [];

  const nodeViews: DnsNodeView[] = [];
  const v4: DnsAddress[] = [];
  const v6: DnsAddress[] = [];
  /** Service → live nodes that cannot carry it (usually empty: then every name shares v4/v6). */
  const unservedBy = new Map<string, Set<string>>();
  for (const r of [...nodes].sort((a, b) => byString(String(a.id), String(b.id)))) {
    const addresses = publicOf(r);
    const zoneOf = typeof r.zone === "string" ? r.zone : "";
    let why = "";
    if (r.draining === true) why = "draining";
    else if (r.ready !== true) why = "not ready";
    else if (addresses.length === 0) why = "no public address";
    const unserved = unservedOf(r);
    nodeViews.push({ id: String(r.id), zone: zoneOf, addresses, live: why === "", why, unserved });
    if (why !== "") continue;
    for (const service of unserved) {
      const set = unservedBy.get(service) ?? new Set<string>();
      set.add(String(r.id));
      unservedBy.set(service, set);
    }
    for (const address of addresses) (net.isIPv4(address) ? v4 : v6).push({ node: String(r.id), zone: zoneOf, address });
  }

  const clientZones: { zone: string; cidrs: CidrList }[] = [];
  for (const z of Object.keys(spec.clientZones).sort(byString)) {
    try {
      clientZones.push({ zone: z, cidrs: new CidrList(spec.clientZones[z], `clientZones.${z}`) });
    } catch (err) {
      problems.push((err as Error).message);
    }
  }
  const zoneNames = [...new Set([...clientZones.map((c) => c.zone), ...v4.map((a) => a.zone), ...v6.map((a) => a.zone)])].sort(byString);

  const names = new Map<string, DnsName>();
  const nameservers = (spec.nameservers ?? [`ns.${zone}.`]).map((n) => qualify(n, zone));
  // Nameserver names inside the zone answer with every live node: each node is a nameserver.
  for (const ns of nameservers) {
    if (ns !== zone && !ns.endsWith(`.${zone}`)) continue;
    names.set(ns, { fqdn: ns, service: "", ttl: spec.ttl, answers: spec.answers, locality: "none", v4: addressSet(v4, [], "none"), v6: addressSet(v6, [], "none") });
  }
  for (const service of [...services].sort(byString)) {
    const s = spec.services[service];
    if (s && !s.publish) continue;
    const fqdn = qualify(s?.name ?? service, zone);
    if (fqdn !== zone && !fqdn.endsWith(`.${zone}`)) {
      problems.push(`service ${service}: name ${fqdn} is outside zone ${zone}`);
      continue;
    }
    if (fqdn === zone) {
      problems.push(`service ${service}: name ${fqdn} is the zone apex`);
      continue;
    }
    const owner = names.get(fqdn);
    if (owner) {
      problems.push(`service ${service}: name ${fqdn} already used by ${owner.service || "a nameserver"}`);
      continue;
    }
    const locality = s?.locality ?? "none";
    // A node that cannot carry the service (its listener failed to bind) must not be named for it.
    const without = unservedBy.get(service);
    const serving = (list: DnsAddress[]) => (without === undefined ? list : list.filter((a) => !without.has(a.node)));
    names.set(fqdn, {
      fqdn,
      service,
      ttl: s?.ttl ?? spec.ttl,
      answers: s?.answers ?? spec.answers,
      locality,
      v4: addressSet(serving(v4), zoneNames, locality),
      v6: addressSet(serving(v6), zoneNames, locality),
    });
  }
  const emptyNonTerminals = new Set<string>();
  for (const fqdn of names.keys()) {
    let parent = fqdn.slice(fqdn.indexOf(".") + 1);
    while (parent !== zone && parent.endsWith(`.${zone}`) && !names.has(parent)) {
      emptyNonTerminals.add(parent);
      parent = parent.slice(parent.indexOf(".") + 1);
    }
  }

  const serial = revision % 0x1_0000_0000;
  const negativeTtl = spec.soa.minimum ?? spec.ttl;
  return {
    zone,
    serial,
    ttl: spec.ttl,
    negativeTtl,
    soa: {
      mname: nameservers[0] ?? `ns.${zone}`,
      rname: spec.soa.rname ? normalizeName(spec.soa.rname) : `hostmaster.${zone}`,
      serial,
      refresh: spec.soa.refresh,
      retry: spec.soa.retry,
      expire: spec.soa.expire,
      minimum: negativeTtl,
    },
    nameservers,
    names,
    emptyNonTerminals,
    clientZones,
    nodes: nodeViews,
    problems,
  };
}

/** The client zone of an address (first match in zone-name order), or "" when none matches. */
export function clientZoneOf(view: DnsView, ip: string): string {
  for (const c of view.clientZones) if (c.cidrs.contains(ip)) return c.zone;
  return "";
}

/**
 * The addresses to answer, in order: for `prefer-zone` names, the client zone's nodes first; within
 * each group the list is rotated by a hash of the client, so one client always sees the same order
 * and different clients spread over the nodes. At most `limit` entries.
 */
export function orderAnswers(set: AddressSet, clientZone: string, clientHash: number, limit: number): DnsAddress[] {
  const out: DnsAddress[] = [];
  const split = clientZone === "" ? undefined : set.byZone.get(clientZone);
  if (split === undefined) {
    rotateInto(out, set.all, clientHash, limit);
    return out;
  }
  rotateInto(out, split[0], clientHash, limit);
  rotateInto(out, split[1], clientHash, limit);
  return out;
}

/**
 * Everything orderAnswers' result (and the reply around it) depends on besides the set: the client
 * zone and the rotation start of each group. Two clients with the same key get the same answer, so
 * it keys the responder's reply cache.
 */
export function rotationKey(set: AddressSet, clientZone: string, clientHash: number): string {
  const split = clientZone === "" ? undefined : set.byZone.get(clientZone);
  if (split === undefined) return `${clientZone}|${set.all.length === 0 ? 0 : clientHash % set.all.length}`;
  return `${clientZone}|${split[0].length === 0 ? 0 : clientHash % split[0].length}|${split[1].length === 0 ? 0 : clientHash % split[1].length}`;
}

function rotateInto(out: DnsAddress[], list: readonly DnsAddress[], hash: number, limit: number): void {
  const n = list.length;
  if (n === 0) return;
  const start = hash % n;
  for (let i = 0; i < n && out.length < limit; i++) out.push(list[(start + i) % n]);
}
