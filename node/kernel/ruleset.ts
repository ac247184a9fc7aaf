// The nftables ruleset Ballast owns: one `inet` table per cluster (IPv4 and IPv6 in one table), and
// per NAT service a chain, a slot map (the service's Maglev table) and its access/limit objects.
// Pure functions: a model of what should be programmed, its full rendering (a table replaced in one
// transaction) and the delta between two models (only the slots and affinity elements that
// changed, when the service's shape is unchanged). Nothing here runs nft or reads any table.
import { hashString } from "../lb/hash.js";

export type Family = 4 | 6;

/** Everything one NAT service needs in the kernel. `slots[i]` is "address . port" or "" (no backend). */
export interface NatServiceModel {
  readonly name: string;
  /** nft-safe object prefix (chain and set names). */
  readonly id: string;
  readonly family: Family;
  readonly protocol: "tcp" | "udp";
  readonly vip: string;
  readonly port: number;
  readonly snat: boolean;
  /** Hash the source address alone (source-ip / affinity) rather than address and port. */
  readonly sourceOnly: boolean;
  readonly size: number;
  readonly slots: readonly string[];
  /** Affinity entries: client address → "address . port", consulted before the hash (null: no affinity). */
  readonly affinity: ReadonlyMap<string, string> | null;
  readonly allow: readonly string[];
  readonly deny: readonly string[];
  /** New connections per second per source address (0 = unlimited), with a burst. */
  readonly sourceRate: number;
  readonly sourceBurst: number;
  /** Tracked connections of the service (0 = unlimited). */
  readonly maxConnections: number;
  /** Every configured backend's "address . port" → its counter name prefix (`<prefix>_in`, `<prefix>_out`). */
  readonly counters: ReadonlyMap<string, string>;
}

export interface NatTableModel {
  /** `ballast_<cluster>` */
  readonly table: string;
  readonly seed: number;
  /** The node's source address for full NAT per family (`snat to`); absent: the interface's (`masquerade`). */
  readonly source?: { readonly 4?: string; readonly 6?: string };
  readonly services: ReadonlyMap<string, NatServiceModel>;
}

const safe = (s: string) => s.replace(/[^A-Za-z0-9_]/g, "_");

/** The table name of a cluster. */
export function tableName(cluster: string): string {
  return `ballast_${safe(cluster)}`;
}

/** The object prefix of a service: its name when nft-safe, else sanitized plus a hash (so "a.b" and "a_b" differ). */
export function serviceObjectId(name: string): string {
  const s = safe(name);
  return s === name ? `s_${s}` : `s_${s}_${hashString(name).toString(36)}`;
}

/** The counter name prefix of a backend value in a service (stable across processes: a hash of the value). */
export function counterName(serviceId: string, value: string): string {
  return `${serviceId}_c${hashString(value).toString(36)}`;
}

/** The address . port value of a backend in a slot map. */
export function backendValue(address: string, port: number): string {
  return `${address} . ${port}`;
}

const ipOf = (f: Family) => (f === 4 ? "ip" : "ip6");
const addrType = (f: Family) => (f === 4 ? "ipv4_addr" : "ipv6_addr");

/** Everything but the elements: when this is equal, an update is a delta of elements. */
function shapeOf(s: NatServiceModel): string {
  return JSON.stringify([s.family, s.protocol, s.vip, s.port, s.snat, s.sourceOnly, s.size, s.affinity !== null, s.allow, s.deny, s.sourceRate, s.sourceBurst, s.maxConnections]);
}

/** Elements per `add element` statement: keeps lines short; the file is still one transaction. */
const CHUNK = 2048;

function elements(t: string, set: string, verb: "add" | "delete", items: string[], out: string[]): void {
  for (let i = 0; i < items.length; i += CHUNK) out.push(`${verb} element inet ${t} ${set} { ${items.slice(i, i + CHUNK).join(", ")} }`);
}

function vipKey(s: NatServiceModel): string {
  return `${s.vip} . ${s.protocol} . ${s.port}`;
}

/** Declares a service's objects and fills them. */
function defineService(t: string, seed: number, s: NatServiceModel, out: string[]): void {
  const ip = ipOf(s.family);
  const l4 = s.protocol;
  out.push(`add map inet ${t} ${s.id}_slots { typeof numgen inc mod ${s.size} : ${ip} daddr . ${l4} dport; }`);
  if (s.affinity !== null) out.push(`add map inet ${t} ${s.id}_aff { typeof ${ip} saddr : ${ip} daddr . ${l4} dport; }`);
  if (s.allow.length > 0) out.push(`add set inet ${t} ${s.id}_allow { type ${addrType(s.family)}; flags interval; auto-merge; }`);
  if (s.deny.length > 0) out.push(`add set inet ${t} ${s.id}_deny { type ${addrType(s.family)}; flags interval; auto-merge; }`);
  if (s.sourceRate > 0) out.push(`add set inet ${t} ${s.id}_rate { type ${addrType(s.family)}; size 65535; flags dynamic,timeout; timeout 1m; }`);
  // Per-backend byte/packet counters: elements of the table's cin/cout maps (see renderFull).
  addCounters(t, s, [...s.counters.keys()], out);
  out.push(`add chain inet ${t} ${s.id}`);
  // Order: access, then per-source rate, then the service's connection cap, then affinity, then the hash.
  if (s.allow.length > 0) out.push(`add rule inet ${t} ${s.id} ${ip} saddr != @${s.id}_allow drop`);
  if (s.deny.length > 0) out.push(`add rule inet ${t} ${s.id} ${ip} saddr @${s.id}_deny drop`);
  if (s.sourceRate > 0) {
    out.push(`add rule inet ${t} ${s.id} ct state new add @${s.id}_rate { ${ip} saddr limit rate over ${Math.max(1, Math.round(s.sourceRate))}/second burst ${s.sourceBurst} packets } drop`);
  }
  if (s.maxConnections > 0) out.push(`add rule inet ${t} ${s.id} ct count over ${s.maxConnections} drop`);
  if (s.affinity !== null) out.push(`add rule inet ${t} ${s.id} meta l4proto ${l4} dnat ${ip} to ${ip} saddr map @${s.id}_aff`);
  const key = s.sourceOnly ? `${ip} saddr` : `${ip} saddr . ${l4} sport`;
  out.push(`add rule inet ${t} ${s.id} meta l4proto ${l4} dnat ${ip} to jhash ${key} mod ${s.size} seed 0x${(seed >>> 0).toString(16)} map @${s.id}_slots`);
  // No backend (an empty map): drop rather than let the packet reach the node's own stack.
  out.push(`add rule inet ${t} ${s.id} drop`);
  const slotItems: string[] = [];
  for (let i = 0; i < s.slots.length; i++) if (s.slots[i] !== "") slotItems.push(`${i} : ${s.slots[i]}`);
  elements(t, `${s.id}_slots`, "add", slotItems, out);
  if (s.affinity !== null && s.affinity.size > 0) elements(t, `${s.id}_aff`, "add", [...s.affinity].map(([c, v]) => `${c} : ${v}`), out);
  if (s.allow.length > 0) elements(t, `${s.id}_allow`, "add", [...s.allow], out);
  if (s.deny.length > 0) elements(t, `${s.id}_deny`, "add", [...s.deny], out);
  out.push(`add element inet ${t} vips${s.family} { ${vipKey(s)} : jump ${s.id} }`);
  if (s.snat) out.push(`add element inet ${t} snat${s.family} { ${vipKey(s)} }`);
}

function addCounters(t: string, s: NatServiceModel, values: string[], out: string[]): void {
  for (const v of values) {
    const c = s.counters.get(v)!;
    out.push(`add counter inet ${t} ${c}_in`, `add counter inet ${t} ${c}_out`);
  }
  elements(t, `cin${s.family}`, "add", values.map((v) => `${vipKey(s)} . ${v} : "${s.counters.get(v)}_in"`), out);
  elements(t, `cout${s.family}`, "add", values.map((v) => `${vipKey(s)} . ${v} : "${s.counters.get(v)}_out"`), out);
}

function removeCounters(t: string, s: NatServiceModel, values: string[], out: string[]): void {
  // The map elements name the counters: they go first.
  elements(t, `cin${s.family}`, "delete", values.map((v) => `${vipKey(s)} . ${v}`), out);
  elements(t, `cout${s.family}`, "delete", values.map((v) => `${vipKey(s)} . ${v}`), out);
  for (const v of values) {
    const c = s.counters.get(v)!;
    out.push(`delete counter inet ${t} ${c}_in`, `delete counter inet ${t} ${c}_out`);
  }
}

function removeService(t: string, s: NatServiceModel, out: string[]): void {
  out.push(`delete element inet ${t} vips${s.family} { ${vipKey(s)} }`);
  removeCounters(t, s, [...s.counters.keys()], out);
  if (s.snat) out.push(`delete element inet ${t} snat${s.family} { ${vipKey(s)} }`);
  // A chain must be empty before it is deleted; its rules hold references to the sets.
  out.push(`flush chain inet ${t} ${s.id}`);
  out.push(`delete chain inet ${t} ${s.id}`);
  out.push(`delete map inet ${t} ${s.id}_slots`);
  if (s.affinity !== null) out.push(`delete map inet ${t} ${s.id}_aff`);
  if (s.allow.length > 0) out.push(`delete set inet ${t} ${s.id}_allow`);
  if (s.deny.length > 0) out.push(`delete set inet ${t} ${s.id}_deny`);
  if (s.sourceRate > 0) out.push(`delete set inet ${t} ${s.id}_rate`);
}

/**
 * The whole table in one transaction: `add table` (so the delete cannot fail), `delete table`, then
 * everything. Used on the first apply of a process, which adopts a table a previous process left:
 * the swap is atomic, so traffic never sees an empty table, and tracked flows keep their NAT
 * bindings (conntrack holds them, not the ruleset).
 */
export function renderFull(m: NatTableModel): string {
  const t = m.table;
  const out: string[] = [`add table inet ${t}`, `delete table inet ${t}`, `add table inet ${t}`];
  for (const f of [4, 6] as const) {
    out.push(`add map inet ${t} vips${f} { type ${addrType(f)} . inet_proto . inet_service : verdict; }`);
    out.push(`add set inet ${t} snat${f} { type ${addrType(f)} . inet_proto . inet_service; }`);
    // Per-backend counters, keyed by the flow's service (VIP . protocol . port) and backend (address . port).
    out.push(`add map inet ${t} cin${f} { type ${addrType(f)} . inet_proto . inet_service . ${addrType(f)} . inet_service : counter; }`);
    out.push(`add map inet ${t} cout${f} { type ${addrType(f)} . inet_proto . inet_service . ${addrType(f)} . inet_service : counter; }`);
  }
  // Services are programmed in their chains before the base chains jump to them.
  for (const s of m.services.values()) defineService(t, m.seed, s, out);
  const dispatch = "ip daddr . meta l4proto . th dport vmap @vips4";
  const dispatch6 = "ip6 daddr . meta l4proto . th dport vmap @vips6";
  out.push(`add chain inet ${t} prerouting { type nat hook prerouting priority dstnat; policy accept; }`);
  out.push(`add rule inet ${t} prerouting ${dispatch}`, `add rule inet ${t} prerouting ${dispatch6}`);
  // Connections opened on the node itself (health checks, local clients) take the same path.
  out.push(`add chain inet ${t} output { type nat hook output priority -100; policy accept; }`);
  out.push(`add rule inet ${t} output ${dispatch}`, `add rule inet ${t} output ${dispatch6}`);
  // Full NAT: flows that entered through a service with snat get the node's address toward the backend.
  out.push(`add chain inet ${t} postrouting { type nat hook postrouting priority srcnat; policy accept; }`);
  // `snat to` a node address its own connections do not use, when configured (nat.sourceAddresses):
  // the NAT'ed flow keeps the client's port, which must not meet the backend's TIME_WAIT of a
  // connection the node itself made from the same address and port.
  const to4 = m.source?.[4] ? `snat ip to ${m.source[4]}` : "masquerade";
  const to6 = m.source?.[6] ? `snat ip6 to ${m.source[6]}` : "masquerade";
  out.push(`add rule inet ${t} postrouting ct status dnat meta l4proto { tcp, udp } ct original ip daddr . meta l4proto . ct original proto-dst @snat4 ${to4}`);
  out.push(`add rule inet ${t} postrouting ct status dnat meta l4proto { tcp, udp } ct original ip6 daddr . meta l4proto . ct original proto-dst @snat6 ${to6}`);
  // Per-backend counters: every packet of a NAT'ed flow, both directions, with one map lookup (the
  // backend is the packet's destination going out, its source coming back, the service is the flow's
  // original destination), and `accept` ends this table's forward chain there (other tables' chains
  // still see the packet). The earlier per-service dispatch map, jump and second lookup cost more:
  // whole-machine CPU per new connection, NAT ÷ direct, 1.064–1.070 with it, 1.046–1.052 with this,
  // 1.040 with no counting at all (alternating 1-second runs in the bench's namespaces).
  out.push(`add chain inet ${t} forward { type filter hook forward priority 0; policy accept; }`);
  for (const f of [4, 6] as const) {
    const ip = ipOf(f);
    const service = `ct original ${ip} daddr . meta l4proto . ct original proto-dst`;
    out.push(`add rule inet ${t} forward ct status dnat ct direction original meta l4proto { tcp, udp } counter name ${service} . ${ip} daddr . th dport map @cin${f} accept`);
    out.push(`add rule inet ${t} forward ct status dnat ct direction reply meta l4proto { tcp, udp } counter name ${service} . ${ip} saddr . th sport map @cout${f} accept`);
  }
  return `${out.join("\n")}\n`;
}

export interface Delta {
  script: string;
  /** Slot elements rewritten (delete + add counts once). */
  slotsChanged: number;
  /** Services declared again from scratch (shape changed, added or removed). */
  servicesRebuilt: number;
}

/** The smallest transaction that turns `prev` (what the kernel holds) into `next`; "" when nothing changes. */
export function renderDelta(prev: NatTableModel, next: NatTableModel): Delta {
  const t = next.table;
  const out: string[] = [];
  let slotsChanged = 0;
  let servicesRebuilt = 0;
  for (const [name, p] of prev.services) {
    const n = next.services.get(name);
    if (n === undefined || n.id !== p.id || shapeOf(n) !== shapeOf(p)) {
      removeService(t, p, out);
      servicesRebuilt++;
    }
  }
  for (const [name, n] of next.services) {
    const p = prev.services.get(name);
    if (p === undefined || p.id !== n.id || shapeOf(n) !== shapeOf(p)) {
      defineService(t, next.seed, n, out);
      if (p === undefined) servicesRebuilt++;
      continue;
    }
    // Same shape: rewrite only the elements that differ. A changed slot is a delete and an add in the
    // same transaction (an add over an existing key with other data fails with "File exists").
    const del: string[] = [];
    const add: string[] = [];
    for (let i = 0; i < n.size; i++) {
      if (p.slots[i] === n.slots[i]) continue;
      slotsChanged++;
      if (p.slots[i] !== "") del.push(String(i));
      if (n.slots[i] !== "") add.push(`${i} : ${n.slots[i]}`);
    }
    elements(t, `${n.id}_slots`, "delete", del, out);
    elements(t, `${n.id}_slots`, "add", add, out);
    removeCounters(t, p, [...p.counters.keys()].filter((v) => p.counters.get(v) !== n.counters.get(v)), out);
    addCounters(t, n, [...n.counters.keys()].filter((v) => p.counters.get(v) !== n.counters.get(v)), out);
    if (p.affinity !== null && n.affinity !== null) {
      const adel: string[] = [];
      const aadd: string[] = [];
      for (const [c, v] of p.affinity) if (n.affinity.get(c) !== v) adel.push(c);
      for (const [c, v] of n.affinity) {
        const old = p.affinity.get(c);
        if (old !== v) aadd.push(`${c} : ${v}`);
      }
      elements(t, `${n.id}_aff`, "delete", adel, out);
      elements(t, `${n.id}_aff`, "add", aadd, out);
    }
  }
  return { script: out.length === 0 ? "" : `${out.join("\n")}\n`, slotsChanged, servicesRebuilt };
}
