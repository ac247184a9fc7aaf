// The DSR ruleset: what a node writes into its netdev table for `forwarding: dsr` services, as nft
// script text (pure functions; node/kernel/dsr.ts runs them). Packets for a service's VIP:port are
// forwarded at the interface's ingress hook, before routing and without connection tracking, to the
// backend's MAC (`fwd ip to … device`): the IP header is untouched, so the backend (VIP on its
// loopback) answers the client directly. The backend comes from, in order:
//   1. this node's pin for the flow (Katran's per-node flow table), while that backend is not down;
//   2. the service's Maglev slots, hashed by the cluster seed: identical on every node, so a flow
//      that reaches another node (a failover) gets the same backend — and is pinned there;
//   3. the same slots without pinning, when the pin map is full.
// Backends travel as 32-bit keys in `meta mark` because nft 1.0.6 rejects a map lookup inside
// `update @flows {…}` (../shared/KERNEL.md). A backend's key is its IPv4 address as a number: the
// same on every node and across restarts, so a restarted node keeps its pins and counters.
// The kernel cannot overwrite a pin from the packet path (`update` keeps an element's data; `delete`
// is EINVAL for maps), so the table path *adds* a pin only where there is none, and the control
// plane deletes the pins of a backend that may no longer carry flows (down, disabled, removed) right
// after the transaction that took it out: those flows are then pinned again, to the backend the table
// gives them, on their next packet, and stay there when the backend returns.

/** One backend as the kernel sees it: its key (IPv4 address as a number) and address. */
export interface DsrBackend {
  readonly key: number;
  readonly id: string;
  readonly address: string;
}

/** A DSR service as programmed on one node. */
export interface DsrServicePlan {
  readonly name: string;
  /** nft-safe object name stem, unique per service name. */
  readonly object: string;
  readonly vip: string;
  readonly port: number;
  readonly protocol: "tcp" | "udp";
  /** `source-ip`: hash the client address alone (all of a client's flows on one backend). */
  readonly hashSourceOnly: boolean;
  readonly modulus: number;
  readonly seed: number;
  /** Backend key per slot (Maglev table over the routable backends); empty when none is routable. */
  readonly slots: Uint32Array;
  /** Backends that may carry pinned flows (routable or draining; never down or disabled), by key. */
  readonly backends: readonly DsrBackend[];
  /** Pins expire after this long without a packet (the service's idle timeout). */
  readonly flowTimeoutMs: number;
  /** Pins per service on this node; past it, new flows are hashed without a pin. */
  readonly maxFlows: number;
  /** Access: sources allowed (empty: all) and denied, as CIDRs — dropped at ingress, statelessly. */
  readonly allow: readonly string[];
  readonly deny: readonly string[];
}

export interface DsrTablePlan {
  /** nftables table name (family netdev). */
  readonly table: string;
  /** The node's interface on the backends' L2 segment: the ingress hook and the egress device. */
  readonly device: string;
  readonly services: ReadonlyMap<string, DsrServicePlan>;
}

/** Objects found in the table before this process first wrote it (a restarted node adopts them). */
export interface DsrExisting {
  readonly chains: string[];
  readonly maps: string[];
  readonly sets: string[];
  readonly counters: string[];
}

const INGRESS = "ingress";
const SERVICES = "services";
const CHAIN_PREFIX = "dsr_";

/** An nft identifier for a service: letters, digits and `_` only, plus a hash so `a.b` and `a_b` differ. */
export function dsrObjectName(service: string): string {
  let h = 0x811c9dc5;
  for (let i = 0; i < service.length; i++) h = Math.imul(h ^ service.charCodeAt(i), 0x01000193);
  return `${CHAIN_PREFIX}${service.replace(/[^A-Za-z0-9_]/g, "_").slice(0, 24)}_${(h >>> 0).toString(16).padStart(8, "0")}`;
}

const hex = (n: number) => `0x${(n >>> 0).toString(16).padStart(8, "0")}`;
const flowsMap = (s: DsrServicePlan) => `${s.object}_flows_${Math.max(1, Math.round(s.flowTimeoutMs / 1000))}s_${s.maxFlows}`;
const counterOf = (s: DsrServicePlan, key: number) => `${s.object}_b${(key >>> 0).toString(16).padStart(8, "0")}`;
const noBackendCounter = (s: DsrServicePlan) => `${s.object}_none`;

/** The flow key nft hashes and pins: the client address and port, or the address alone. */
function hashKey(s: DsrServicePlan): string {
  return s.hashSourceOnly ? "ip saddr" : "ip saddr . th sport";
}

/** Everything that, when it changes, needs the service's chain rewritten (not just its maps). */
function shapeOf(s: DsrServicePlan, device: string): string {
  return JSON.stringify([s.vip, s.port, s.protocol, s.hashSourceOnly, s.modulus, s.seed, s.flowTimeoutMs, s.maxFlows, s.allow, s.deny, device]);
}

function sameSlots(a: Uint32Array, b: Uint32Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

function sameBackends(a: readonly DsrBackend[], b: readonly DsrBackend[]): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i].key !== b[i].key || a[i].address !== b[i].address) return false;
  return true;
}

/** Elements in lines of a bounded length: one huge line makes nft's parser slow. */
function elements(items: string[]): string {
  const lines: string[] = [];
  for (let i = 0; i < items.length; i += 64) lines.push(items.slice(i, i + 64).join(", "));
  return lines.join(",\n  ");
}

function serviceRules(t: string, s: DsrServicePlan, device: string): string[] {
  const c = `netdev ${t} ${s.object}`;
  const key = hashKey(s);
  const flows = flowsMap(s);
  const fwd = `counter name meta mark map @${s.object}_counters fwd ip to meta mark map @${s.object}_backends device "${device}"`;
  const slot = `meta mark set jhash ${key} mod ${s.modulus} seed ${hex(s.seed)} map @${s.object}_slots`;
  const access: string[] = [];
  if (s.allow.length > 0) access.push(`add rule ${c} ip saddr != @${s.object}_allow drop`);
  if (s.deny.length > 0) access.push(`add rule ${c} ip saddr @${s.object}_deny drop`);
  return [
    ...access,
    // 1. A pinned flow keeps its backend (and its pin stays fresh) while the backend may carry it.
    `add rule ${c} meta mark set ${key} map @${flows} update @${flows} { ${key} : meta mark } ${fwd}`,
    // 2. No pin (new flow, or a failover from another node), or its backend is down: the shared table,
    //    and a pin where there is none (`add` never refreshes a pin this packet did not follow).
    `add rule ${c} ${slot} add @${flows} { ${key} : meta mark } ${fwd}`,
    // 3. The pin map is full: forward by the table alone rather than drop.
    `add rule ${c} ${slot} ${fwd}`,
    // 4. No routable backend: drop here (counted) rather than let the node's stack answer for the VIP.
    `add rule ${c} counter name "${noBackendCounter(s)}" drop`,
  ];
}

/**
 * The nft transaction that takes the table from `prev` (what this process applied last; null on
 * its first apply, then `existing` lists what a previous process left) to `next`. Pin maps are
 * never flushed: a table change, a restart or a backend add keeps every established flow's pin.
 */
export function renderDsr(prev: DsrTablePlan | null, next: DsrTablePlan, existing: DsrExisting | null = null): string {
  const t = next.table;
  const out: string[] = [];
  const first = prev === null || prev.table !== t || prev.device !== next.device;
  out.push(`add table netdev ${t}`);
  if (first) {
    // The base chain is declared once per process: its device may only change by re-creation.
    out.push(`add chain netdev ${t} ${INGRESS} { type filter hook ingress device "${next.device}" priority -500; policy accept; }`);
    out.push(`add map netdev ${t} ${SERVICES} { type ipv4_addr . inet_proto . inet_service : verdict; }`);
  }
  // Service dispatch: one lookup per packet; flushed and refilled in the same atomic transaction.
  out.push(`flush map netdev ${t} ${SERVICES}`);

  const wanted = new Set<string>();
  for (const s of next.services.values()) {
    wanted.add(s.object);
    const before = first ? null : (prev?.services.get(s.name) ?? null);
    const reshaped = before === null || shapeOf(before, prev!.device) !== shapeOf(s, next.device);
    const flows = flowsMap(s);
    if (reshaped) {
      out.push(`add chain netdev ${t} ${s.object}`);
      out.push(`flush chain netdev ${t} ${s.object}`);
      out.push(`add map netdev ${t} ${s.object}_slots { typeof numgen inc mod 2 : meta mark; }`);
      out.push(`add map netdev ${t} ${s.object}_backends { type mark : ipv4_addr; }`);
      out.push(`add map netdev ${t} ${s.object}_counters { type mark : counter; }`);
      out.push(`add counter netdev ${t} ${noBackendCounter(s)}`);
      const key = s.hashSourceOnly ? "ip saddr" : "ip saddr . th sport";
      out.push(`add map netdev ${t} ${flows} { typeof ${key} : meta mark; size ${s.maxFlows}; flags dynamic,timeout; timeout ${Math.max(1, Math.round(s.flowTimeoutMs / 1000))}s; }`);
    }
    if (reshaped) {
      for (const [kind, list] of [["allow", s.allow], ["deny", s.deny]] as const) {
        if (list.length === 0) continue;
        out.push(`add set netdev ${t} ${s.object}_${kind} { type ipv4_addr; flags interval; auto-merge; }`);
        out.push(`flush set netdev ${t} ${s.object}_${kind}`);
        out.push(`add element netdev ${t} ${s.object}_${kind} { ${elements([...list])} }`);
      }
    }
    if (reshaped || !sameSlots(before!.slots, s.slots)) {
      out.push(`flush map netdev ${t} ${s.object}_slots`);
      if (s.slots.length > 0) {
        const items: string[] = [];
        for (let i = 0; i < s.slots.length; i++) items.push(`${i} : ${hex(s.slots[i])}`);
        out.push(`add element netdev ${t} ${s.object}_slots { ${elements(items)} }`);
      }
    }
    if (reshaped || !sameBackends(before!.backends, s.backends)) {
      for (const b of s.backends) out.push(`add counter netdev ${t} ${counterOf(s, b.key)}`);
      out.push(`flush map netdev ${t} ${s.object}_backends`);
      out.push(`flush map netdev ${t} ${s.object}_counters`);
      if (s.backends.length > 0) {
        out.push(`add element netdev ${t} ${s.object}_backends { ${elements(s.backends.map((b) => `${hex(b.key)} : ${b.address}`))} }`);
        out.push(`add element netdev ${t} ${s.object}_counters { ${elements(s.backends.map((b) => `${hex(b.key)} : "${counterOf(s, b.key)}"`))} }`);
      }
      // Counters of backends that left (referenced by nothing once the counter map is refilled).
      if (before) {
        const keep = new Set(s.backends.map((b) => counterOf(s, b.key)));
        for (const b of before.backends) if (!keep.has(counterOf(before, b.key))) out.push(`delete counter netdev ${t} ${counterOf(before, b.key)}`);
      }
    }
    if (reshaped) {
      out.push(...serviceRules(t, s, next.device));
      if (before && flowsMap(before) !== flows) out.push(`delete map netdev ${t} ${flowsMap(before)}`);
      for (const kind of ["allow", "deny"] as const) {
        if (before && before[kind].length > 0 && s[kind].length === 0) out.push(`delete set netdev ${t} ${s.object}_${kind}`);
      }
    }
    out.push(`add element netdev ${t} ${SERVICES} { ${s.vip} . ${s.protocol} . ${s.port} : jump ${s.object} }`);
  }

  if (first) {
    out.push(`flush chain netdev ${t} ${INGRESS}`);
    out.push(`add rule netdev ${t} ${INGRESS} ip daddr . meta l4proto . th dport vmap @${SERVICES}`);
  }

  // Services that left: their chain first (it references the maps), then maps and counters.
  const gone: DsrServicePlan[] = [];
  if (!first && prev) for (const s of prev.services.values()) if (!wanted.has(s.object)) gone.push(s);
  for (const s of gone) {
    out.push(`flush chain netdev ${t} ${s.object}`, `delete chain netdev ${t} ${s.object}`);
    out.push(`delete map netdev ${t} ${s.object}_slots`, `delete map netdev ${t} ${s.object}_backends`, `delete map netdev ${t} ${s.object}_counters`);
    out.push(`delete map netdev ${t} ${flowsMap(s)}`, `delete counter netdev ${t} ${noBackendCounter(s)}`);
    for (const kind of ["allow", "deny"] as const) if (s[kind].length > 0) out.push(`delete set netdev ${t} ${s.object}_${kind}`);
    for (const b of s.backends) out.push(`delete counter netdev ${t} ${counterOf(s, b.key)}`);
  }
  if (first && existing) {
    // A previous process's objects that this snapshot no longer has: chains before what they use.
    const owned = new Set<string>();
    for (const s of next.services.values()) {
      owned.add(s.object);
      owned.add(`${s.object}_slots`).add(`${s.object}_backends`).add(`${s.object}_counters`).add(flowsMap(s));
      owned.add(noBackendCounter(s));
      for (const kind of ["allow", "deny"] as const) if (s[kind].length > 0) owned.add(`${s.object}_${kind}`);
      for (const b of s.backends) owned.add(counterOf(s, b.key));
    }
    const stale = (name: string) => name.startsWith(CHAIN_PREFIX) && !owned.has(name);
    for (const c of existing.chains.filter(stale)) out.push(`flush chain netdev ${t} ${c}`, `delete chain netdev ${t} ${c}`);
    for (const m of existing.maps.filter(stale)) out.push(`delete map netdev ${t} ${m}`);
    for (const m of existing.sets.filter(stale)) out.push(`delete set netdev ${t} ${m}`);
    for (const c of existing.counters.filter(stale)) out.push(`delete counter netdev ${t} ${c}`);
  }
  return `${out.join("\n")}\n`;
}

/** The script that removes the whole DSR table (`ballast node --flush`, tests). */
export function renderDsrFlush(table: string): string {
  return `delete table netdev ${table}\n`;
}

/** The name of a service's pin map (it changes with the idle timeout and size). */
export function dsrFlowsMapName(s: DsrServicePlan): string {
  return flowsMap(s);
}

/** Which counter belongs to which backend key, to read per-backend packets and bytes. */
export function dsrCounterName(s: DsrServicePlan, key: number): string {
  return counterOf(s, key);
}

export function dsrNoBackendCounterName(s: DsrServicePlan): string {
  return noBackendCounter(s);
}
