// The DSR programmer: turns each snapshot's `forwarding: dsr` services into the node's netdev table
// (node/kernel/dsr-ruleset.ts) and keeps per-service status and per-backend counters. One
// transaction per snapshot; a failed apply keeps the previous ruleset serving (nft transactions are
// all or nothing), is logged, counted and reported per service — the node never crashes or flushes.
import type { Logger } from "pino";
import type { DsrStateView } from "../../shared/api.js";
import { parseIPv4 } from "../../shared/ip.js";
import type { StatsRegistry } from "../model/stats.js";
import type { MaglevPicker } from "../lb/maglev.js";
import type { ForwardingMode } from "../model/forwarder.js";
import type { ServiceState, Snapshot } from "../model/snapshot.js";
import { type DsrBackend, type DsrExisting, type DsrServicePlan, type DsrTablePlan, dsrCounterName, dsrFlowsMapName, dsrObjectName, renderDsr, renderDsrFlush } from "./dsr-ruleset.js";
import { kernelSlot } from "./jhash.js";
import type { NftRunner } from "./nft.js";
import { type NftApplyStats, NftForwarder } from "./nft-forwarder.js";
import { clusterSeed } from "./seed.js";

/** A backend's key in the kernel maps: its IPv4 address as an unsigned 32-bit number. */
export function dsrBackendKey(address: string): number {
  const v = parseIPv4(address);
  if (v < 0) throw new RangeError(`not an IPv4 address: ${address}`);
  return v;
}

/**
 * A DSR service as the kernel programs it, from the snapshot: the slots are the picker's own Maglev
 * table (node/kernel/table-size.ts builds it for kernel-forwarded services), so route explain and the
 * kernel read one table. A string: why this node cannot program it.
 */
export function dsrServicePlan(svc: ServiceState, seed: number): DsrServicePlan | string {
  if (parseIPv4(svc.host) <= 0) return `listen: forwarding dsr needs the service's own IPv4 address (the VIP), got ${svc.host}`;
  if (svc.port === 0) return "listen: forwarding dsr needs a fixed port";
  const backends: DsrBackend[] = [];
  for (const t of svc.sticky.values()) {
    if (parseIPv4(t.host) < 0) return `backend ${t.id}: forwarding dsr needs an IPv4 address, got ${t.host}`;
    backends.push({ key: dsrBackendKey(t.host), id: t.id, address: t.host });
  }
  // The snapshot refuses a second backend with the same address, so keys are unique.
  backends.sort((a, b) => a.key - b.key);
  const picker = svc.picker as Partial<MaglevPicker>;
  const size = picker.size ?? 0;
  const table = picker.table;
  const targets = picker.targets ?? [];
  if (size === 0 || !table) return `algorithm: forwarding dsr needs maglev or source-ip, got ${svc.spec.algorithm}`;
  const slots = new Uint32Array(targets.length === 0 ? 0 : size);
  if (targets.length > 0) {
    const keys = targets.map((t) => dsrBackendKey(t.host));
    for (let i = 0; i < size; i++) slots[i] = keys[table[i]];
  }
  const spec = svc.spec;
  return {
    name: svc.name,
    object: dsrObjectName(svc.name),
    vip: svc.host,
    port: svc.port,
    protocol: spec.protocol,
    hashSourceOnly: svc.hashSourceOnly,
    modulus: size,
    seed: seed >>> 0,
    slots,
    backends,
    flowTimeoutMs: spec.protocol === "udp" ? spec.timeouts.udpIdle : spec.timeouts.idle,
    maxFlows: spec.limits.maxFlows,
    allow: spec.access.allow,
    deny: spec.access.deny,
  };
}

const COUNTER_REFRESH_MS = 5000;

export interface DsrForwarderOptions {
  /** The cluster name: the table is `ballast_<cluster>` in the netdev family (NAT's is inet: two tables). */
  cluster: string;
  /** Node config `dsr.interface`: the interface on the backends' L2 segment (ingress hook and egress). */
  device: string | undefined;
  log: Logger;
  runner?: NftRunner;
  /** Overrides the cluster seed (tests). */
  seed?: number;
  /** The data plane's stats registry: per-backend bytes land in the proxy's metric names (forwarding="dsr"). */
  stats?: StatsRegistry;
}

export interface DsrBackendCounters {
  packets: number;
  bytes: number;
}

/** What /api/state shows about the DSR table. */
export type DsrState = DsrStateView;

export class DsrForwarder extends NftForwarder<NftApplyStats & { pinsRemoved: number }> {
  readonly name = "dsr";
  readonly stats = { applies: 0, failures: 0, lastError: null as string | null, lastApplyMs: 0, pinsRemoved: 0 };
  private applied: DsrTablePlan | null = null;
  /** This process has written the table once (before that, it adopts what an earlier process left). */
  private adopted = false;
  private leftoverChecked = false;
  private counterTimer: NodeJS.Timeout | null = null;

  constructor(private readonly opts: DsrForwarderOptions) {
    super({ cluster: opts.cluster, family: "netdev", seed: (opts.seed ?? clusterSeed(opts.cluster)) >>> 0, log: opts.log, runner: opts.runner, failedMessage: "dsr apply failed" });
  }

  handles(mode: ForwardingMode): boolean {
    return mode === "dsr";
  }

  /** The plan last written to the kernel (route explain reads it). */
  get current(): DsrTablePlan | null {
    return this.applied;
  }

  state(): DsrState {
    return { table: this.table, device: this.opts.device ?? null, seed: this.seed, unavailable: this.unavailable ?? null, ...this.stats };
  }

  protected async applyNow(snap: Snapshot): Promise<void> {
    const dsr = this.carried(snap);
    // No DSR service and nothing programmed: create nothing. A table an earlier run left is emptied;
    // whether there is one is asked once per process, and only by a node configured for DSR (one
    // without dsr.interface cannot have programmed it; `ballast node --flush` removes it anyway), so
    // other nodes never spawn nft for DSR.
    if (dsr.length === 0 && this.applied === null) {
      if (this.leftoverChecked || this.opts.device === undefined) return;
      this.leftoverChecked = true;
      if (!(await this.tableExists())) return;
    }
    if (this.opts.device === undefined) {
      this.refuseAll(dsr, "node config dsr.interface is not set (the interface facing the backends)");
      return;
    }
    if (!(await this.usable(dsr))) return;
    const services = new Map<string, DsrServicePlan>();
    const refused = new Map<string, string>();
    for (const svc of dsr) {
      const p = dsrServicePlan(svc, this.seed);
      if (typeof p === "string") refused.set(svc.name, p);
      else services.set(svc.name, p);
    }
    const plan: DsrTablePlan = { table: this.table, device: this.opts.device, services };
    const existing = this.adopted ? null : await this.readExisting();
    const r = await this.runner.load(renderDsr(this.adopted ? this.applied : null, plan, existing));
    if (!r.ok) {
      this.recordFailure(r.error);
      this.log.error({ table: this.table, revision: snap.revision, err: r.error }, "dsr nftables apply failed; the previous ruleset keeps forwarding");
      this.markFailed(dsr, r.error, refused);
      return;
    }
    const before = this.adopted ? this.applied : null;
    this.adopted = true;
    this.applied = plan;
    // /api/state shows per-backend counters from the last read; scrapes read them too.
    if (plan.services.size > 0 && this.counterTimer === null) {
      this.counterTimer = setInterval(() => void this.counters().catch(() => {}), COUNTER_REFRESH_MS);
      this.counterTimer.unref();
    }
    this.recordApplied(r.ms);
    this.log.debug({ table: this.table, revision: snap.revision, ms: Math.round(r.ms) }, "dsr nftables applied");
    this.markApplied(dsr, refused, snap.revision);
    // Pins of backends that may no longer carry flows go now, so those flows are pinned again where
    // the table sends them (and stay there if the backend returns). After a restart: every stale pin.
    for (const s of plan.services.values()) {
      const prev = before?.services.get(s.name);
      const live = new Set(s.backends.map((b) => b.key));
      if (prev === undefined || prev.backends.some((b) => !live.has(b.key))) await this.removePins(s, live);
    }
  }

  /** Deletes a service's pins whose backend key is not in `live`; one transaction, retried once if a pin expired meanwhile. */
  private async removePins(s: DsrServicePlan, live: ReadonlySet<number>): Promise<void> {
    const map = dsrFlowsMapName(s);
    for (let attempt = 0; attempt < 2; attempt++) {
      const r = await this.runner.run(["-j", "list", "map", "netdev", this.table, map]);
      if (!r.ok) return;
      const stale: string[] = [];
      try {
        for (const o of (JSON.parse(r.stdout) as { nftables: { map?: { elem?: [{ elem: { val: string | { concat: [string, number] } } }, number][] } }[] }).nftables) {
          for (const [k, key] of o.map?.elem ?? []) {
            if (live.has(key >>> 0)) continue;
            const v = k.elem.val;
            stale.push(typeof v === "string" ? v : `${v.concat[0]} . ${v.concat[1]}`);
          }
        }
      } catch {
        return;
      }
      if (stale.length === 0) return;
      const lines: string[] = [];
      for (let i = 0; i < stale.length; i += 512) lines.push(`delete element netdev ${this.table} ${map} { ${stale.slice(i, i + 512).join(", ")} }`);
      const d = await this.runner.load(`${lines.join("\n")}\n`);
      if (d.ok) {
        this.stats.pinsRemoved += stale.length;
        this.log.info({ service: s.name, pins: stale.length }, "dsr pins of backends that left removed");
        return;
      }
      // A pin expired between the listing and the delete (the whole transaction fails): list again.
      if (attempt === 1) this.log.warn({ service: s.name, err: d.error }, "removing dsr pins failed; they expire after the idle timeout");
    }
  }

  /** Objects a previous process left in our table (names only: `-t` leaves out the elements). */
  private async readExisting(): Promise<DsrExisting | null> {
    const r = await this.runner.run(["-j", "-t", "list", "table", "netdev", this.table]);
    if (!r.ok) return null; // no table yet
    const found: DsrExisting = { chains: [], maps: [], sets: [], counters: [] };
    try {
      for (const o of (JSON.parse(r.stdout) as { nftables: Record<string, { name?: string }>[] }).nftables) {
        if (o.chain?.name) found.chains.push(o.chain.name);
        else if (o.map?.name) found.maps.push(o.map.name);
        else if (o.set?.name) found.sets.push(o.set.name);
        else if (o.counter?.name) found.counters.push(o.counter.name);
      }
    } catch {
      return null;
    }
    return found;
  }

  /** The counters of the last read (refreshed by counters(): scrapes and the state timer). */
  lastCounters = new Map<string, Map<string, DsrBackendCounters>>();

  /** Per-backend packets and bytes, client → backend only (replies bypass the node): service → backend id → counters. */
  async counters(): Promise<Map<string, Map<string, DsrBackendCounters>>> {
    const out = new Map<string, Map<string, DsrBackendCounters>>();
    const plan = this.applied;
    if (!plan) return out;
    const r = await this.runner.run(["-j", "list", "counters", "table", "netdev", this.table]);
    if (!r.ok) return out;
    const byName = new Map<string, DsrBackendCounters>();
    try {
      for (const o of (JSON.parse(r.stdout) as { nftables: { counter?: { name: string; packets: number; bytes: number } }[] }).nftables) {
        if (o.counter) byName.set(o.counter.name, { packets: o.counter.packets, bytes: o.counter.bytes });
      }
    } catch {
      return out;
    }
    for (const s of plan.services.values()) {
      const m = new Map<string, DsrBackendCounters>();
      let bytesIn = 0;
      for (const b of s.backends) {
        const c = byName.get(dsrCounterName(s, b.key)) ?? { packets: 0, bytes: 0 };
        m.set(b.id, c);
        // Client → backend only: replies bypass the node, so bytesOut stays 0 for DSR.
        if (this.opts.stats) this.opts.stats.backend(s.name, b.id).bytesIn = c.bytes;
        bytesIn += c.bytes;
      }
      if (this.opts.stats) this.opts.stats.service(s.name).bytesIn = bytesIn;
      out.set(s.name, m);
    }
    this.lastCounters = out;
    return out;
  }

  /** Leaves the table in place (fail-static): a restarted node adopts it, pins included. */
  async close(): Promise<void> {
    if (this.counterTimer) clearInterval(this.counterTimer);
    this.counterTimer = null;
  }

  /** `ballast node --flush`: removes the DSR table; the kernel stops forwarding DSR services on this node. */
  async flush(): Promise<{ removed: boolean; error: string | null }> {
    if (!(await this.tableExists())) return { removed: false, error: null };
    const r = await this.runner.load(renderDsrFlush(this.table));
    this.applied = null;
    this.adopted = false;
    return { removed: r.ok, error: r.ok ? null : r.error };
  }
}

/** Where the kernel sends a flow by the table (this node's pins aside): slot and backend, for route explain. */
export function explainDsr(s: DsrServicePlan, client: string, port: number): { slot: number; backend: DsrBackend | null } {
  const slot = kernelSlot(client, port, s.hashSourceOnly, s.seed, s.modulus);
  if (slot < 0 || s.slots.length === 0) return { slot, backend: null };
  const key = s.slots[slot];
  return { slot, backend: s.backends.find((b) => b.key === key) ?? null };
}
