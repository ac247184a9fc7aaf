// The kernel forwarder: programs `forwarding: nat` services into the node's nftables table from each
// snapshot (the same Maglev table the userspace picker holds), keeps the previous ruleset when an
// apply fails, and removes tracked flows of backends that went down or finished draining. The
// kernel forwards; this class only runs when a snapshot arrives (never per packet).
import type { Logger } from "pino";
import { isIP } from "node:net";
import type { KernelStateView } from "../../shared/api.js";
import type { StatsRegistry } from "../model/stats.js";
import type { MaglevPicker } from "../lb/maglev.js";
import type { ForwardingMode } from "../model/forwarder.js";
import type { ServiceState, Snapshot, Target } from "../model/snapshot.js";
import { ConntrackEvents, type NewFlow } from "./conntrack-events.js";
import { type ConntrackTool, conntrackTool, type FlowFilter } from "./conntrack.js";
import { kernelSlot } from "./jhash.js";
import type { NftRunner } from "./nft.js";
import { type NftApplyStats, NftForwarder } from "./nft-forwarder.js";
import { backendValue, counterName, type Family, type NatServiceModel, type NatTableModel, renderDelta, renderFull, serviceObjectId } from "./ruleset.js";
import { clusterSeed } from "./seed.js";

export interface KernelForwarderOptions {
  cluster: string;
  log: Logger;
  runner?: NftRunner;
  conntrack?: ConntrackTool;
  /** Affinity entries of a service as client → backend id (from the shared affinity table); null: none. */
  affinityOf?: (svc: ServiceState) => ReadonlyMap<string, string> | null;
  /** A client's new flow of an affinity service reached `target`: record the affinity entry. */
  learn?: (svc: ServiceState, client: string, target: Target) => void;
  /** Namespace of the conntrack event watcher (tests); default: the node's own. */
  netns?: string;
  /** How often affinity entries (learned here or replicated from other nodes) are re-programmed. */
  affinitySyncMs?: number;
  /** Where nft counters and conntrack flows are written, so the proxy's metric names carry NAT figures too. */
  stats?: StatsRegistry;
  /** How often counters and tracked flows are read (default 5 s). */
  countersEveryMs?: number;
  /** nat.sourceAddresses: the node's full-NAT source per family (default: masquerade). */
  sourceAddresses?: readonly string[];
}

/** What /api/state shows about the kernel table. */
export type KernelState = KernelStateView;

const familyOf = (ip: string): Family | 0 => isIP(ip) as Family | 0;

/** The kernel model of one service, or why it cannot be programmed. */
export function natServiceModel(svc: ServiceState, affinity: ReadonlyMap<string, string> | null): NatServiceModel | string {
  const family = familyOf(svc.host);
  if (family === 0) return `listen address ${svc.host} is not an IP address`;
  for (const b of svc.backends) {
    const f = familyOf(b.spec.address);
    if (f !== family) return `backend ${b.id} (${b.spec.address}) is not an IPv${family} address like the service's ${svc.host}`;
  }
  const picker = svc.picker as Partial<MaglevPicker>;
  const size = picker.size ?? 0;
  const table = picker.table;
  const targets = picker.targets ?? [];
  const slots: string[] = new Array(size);
  const values = targets.map((t) => backendValue(t.host, t.port));
  for (let i = 0; i < size; i++) {
    const idx = table ? table[i] : -1;
    slots[i] = idx >= 0 ? values[idx] : "";
  }
  const spec = svc.spec;
  let aff: Map<string, string> | null = null;
  if (spec.affinity.mode === "source-ip") {
    aff = new Map();
    for (const [client, backendId] of affinity ?? []) {
      const t = svc.sticky.get(backendId);
      if (t !== undefined && familyOf(client) === family) aff.set(client, backendValue(t.host, t.port));
    }
  }
  return {
    name: svc.name,
    id: serviceObjectId(svc.name),
    family,
    protocol: spec.protocol,
    vip: svc.host,
    port: svc.port,
    snat: spec.nat?.snat ?? true,
    sourceOnly: svc.hashSourceOnly,
    size,
    slots,
    affinity: aff,
    allow: spec.access.allow,
    deny: spec.access.deny,
    sourceRate: spec.limits.sourceRate,
    sourceBurst: spec.limits.sourceBurst,
    maxConnections: spec.limits.maxConnections,
    counters: new Map(svc.backends.map((b) => {
      const v = backendValue(b.spec.address, b.spec.port);
      return [v, counterName(serviceObjectId(svc.name), v)];
    })),
  };
}

/** Route explain for a NAT service: the slot the kernel's hash picks and the backend in it. */
export function explainNat(svc: ServiceState, seed: number, client: string, port: number) {
  const picker = svc.picker as Partial<MaglevPicker>;
  const size = picker.size ?? 0;
  if (size === 0 || !picker.table || !picker.targets || picker.targets.length === 0) return { slot: -1, backend: null, reason: "no-backend" };
  const slot = kernelSlot(client, port, svc.hashSourceOnly, seed, size);
  if (slot < 0) return { slot, backend: null, reason: "bad-client" };
  return { slot, backend: picker.targets[picker.table[slot]] ?? null, reason: `${svc.spec.algorithm} (kernel jhash, slot ${slot} of ${size})` };
}

interface BackendMemory {
  protocol: "tcp" | "udp";
  vip: string;
  port: number;
  address: string;
  bport: number;
  /** Took new flows (active, not down) in the last snapshot. */
  serving: boolean;
  down: boolean;
}

export class KernelForwarder extends NftForwarder<NftApplyStats & { lastSlotsChanged: number; flowsRemoved: number }> {
  readonly name = "kernel";
  private readonly conntrack: ConntrackTool;
  private applied: NatTableModel | null = null;
  /** The next apply replaces the whole table (first apply of this process, or after a failure). */
  private needFull = true;
  private leftoverChecked = false;
  private leftover = false;
  private backends = new Map<string, BackendMemory>();
  private readonly drainTimers = new Map<string, NodeJS.Timeout>();
  readonly stats = { applies: 0, failures: 0, lastError: null as string | null, lastApplyMs: 0, lastSlotsChanged: 0, flowsRemoved: 0 };
  /** Resolves when the flow removals started by the last apply finished (tests). */
  flowWork: Promise<void> = Promise.resolve();

  constructor(private readonly opts: KernelForwarderOptions) {
    super({ cluster: opts.cluster, family: "inet", seed: clusterSeed(opts.cluster), log: opts.log, runner: opts.runner, failedMessage: "kernel forwarder apply failed" });
    this.conntrack = opts.conntrack ?? conntrackTool();
    const src = opts.sourceAddresses ?? [];
    this.source = { 4: src.find((a) => isIP(a) === 4), 6: src.find((a) => isIP(a) === 6) };
  }

  private readonly source: { 4?: string; 6?: string };

  handles(mode: ForwardingMode): boolean {
    return mode === "nat";
  }

  state(): KernelState {
    return { table: this.table, seed: this.seed, unavailable: this.unavailable ?? null, ...this.stats };
  }

  protected async applyNow(snap: Snapshot): Promise<void> {
    this.last = snap;
    const nat = this.carried(snap);
    // A node with no NAT service creates no table; one left by an earlier run is still reconciled (emptied).
    if (nat.length === 0 && this.applied === null) {
      // A table left by an earlier run is still reconciled (emptied). Looked for once per process and
      // in the background: a proxy-only node's snapshots must not wait for an nft process.
      if (!this.leftoverChecked) {
        this.leftoverChecked = true;
        void this.tableExists().then((exists) => {
          if (!exists || this.last === null) return;
          this.leftover = true;
          void this.apply(this.last);
        });
      }
      if (!this.leftover) return;
    }
    if (!(await this.usable(nat))) return;
    const services = new Map<string, NatServiceModel>();
    const refused = new Map<string, string>();
    for (const svc of nat) {
      const m = natServiceModel(svc, this.opts.affinityOf?.(svc) ?? null);
      if (typeof m === "string") refused.set(svc.name, m);
      else services.set(svc.name, m);
    }
    const next: NatTableModel = { table: this.table, seed: this.seed, source: this.source, services };
    let script: string;
    let slotsChanged: number;
    if (this.needFull || this.applied === null) {
      script = renderFull(next);
      slotsChanged = [...services.values()].reduce((n, s) => n + s.size, 0);
    } else {
      const d = renderDelta(this.applied, next);
      script = d.script;
      slotsChanged = d.slotsChanged;
    }
    const r = script === "" ? { ok: true, error: "", ms: 0 } : await this.runner.load(script);
    if (!r.ok) {
      this.recordFailure(r.error);
      this.needFull = true;
      this.log.error({ table: this.table, revision: snap.revision, err: r.error }, "nftables apply failed; the previous ruleset keeps forwarding");
      // A service refused now may still be carried by the previous ruleset: it keeps its flag and shows the failure.
      this.markFailed(nat, r.error, null);
      return;
    }
    this.applied = next;
    this.needFull = false;
    this.recordApplied(r.ms);
    this.stats.lastSlotsChanged = slotsChanged;
    if (script !== "") this.log.debug({ table: this.table, revision: snap.revision, ms: Math.round(r.ms), slotsChanged }, "nftables applied");
    this.markApplied(nat, refused, snap.revision);
    this.reconcileFlows(nat);
    this.reconcileAffinity(nat);
    if (this.opts.stats && !this.countersTimer) this.scheduleCounters(this.opts.countersEveryMs ?? 5000);
  }

  private countersTimer: NodeJS.Timeout | null = null;
  /** How long the last read of counters and flows took, and when the next one is due (ms from its start). */
  lastCountersMs = 0;
  nextCountersMs = 0;

  /**
   * Reads counters and flows again after `every`, or after 20× the last read's duration when that
   * is longer: listing conntrack walks the kernel's whole connection table, which a busy node fills
   * with hundreds of thousands of flows, so a fixed period would let the read take most of a core
   * (and compete with the forwarding it counts). This keeps it at ≤ 5% of one core.
   */
  private scheduleCounters(every: number): void {
    this.nextCountersMs = Math.max(every, 20 * this.lastCountersMs);
    this.countersTimer = setTimeout(() => {
      void this.collectCounters().finally(() => {
        if (this.countersTimer !== null) this.scheduleCounters(every);
      });
    }, this.nextCountersMs);
    this.countersTimer.unref();
  }
  /** Tracked flows per NAT service at the last read. */
  readonly flowsBy = new Map<string, number>();
  private collecting = false;

  /**
   * Per-backend bytes (nft counters, both directions) and tracked flows (conntrack) into the stats
   * registry: the same metric names as the proxy, with forwarding="nat". Read every few seconds.
   */
  async collectCounters(): Promise<void> {
    const stats = this.opts.stats;
    if (!stats || this.collecting || this.applied === null || this.last === null) return;
    this.collecting = true;
    const started = performance.now();
    try {
      const r = await this.runner.run(["-j", "list", "counters", "table", "inet", this.table]);
      if (!r.ok) return;
      const bytes = new Map<string, number>();
      for (const o of (JSON.parse(r.stdout) as { nftables?: Array<{ counter?: { name: string; bytes: number } }> }).nftables ?? []) {
        if (o.counter) bytes.set(o.counter.name, o.counter.bytes);
      }
      for (const [name, m] of this.applied.services) {
        const svc = this.last.services.get(name);
        if (!svc) continue;
        const flows = await this.conntrack.flowsByBackend({ protocol: m.protocol, vip: m.vip, port: m.port });
        const sc = stats.service(name);
        let bin = 0;
        let bout = 0;
        let active = 0;
        for (const b of svc.backends) {
          const c = m.counters.get(backendValue(b.spec.address, b.spec.port));
          if (c === undefined) continue;
          const bc = stats.backend(name, b.id);
          bc.bytesIn = bytes.get(`${c}_in`) ?? bc.bytesIn;
          bc.bytesOut = bytes.get(`${c}_out`) ?? bc.bytesOut;
          if (flows) bc.active = flows.get(`${b.spec.address}|${b.spec.port}`) ?? 0;
          bin += bc.bytesIn;
          bout += bc.bytesOut;
          active += bc.active;
        }
        sc.bytesIn = bin;
        sc.bytesOut = bout;
        // Not sc.active: the data plane's drain waits for that to reach 0, and tracked flows are the
        // kernel's to carry (they outlive the process). Per-backend gauges carry them instead.
        this.flowsBy.set(name, active);
      }
    } catch (err) {
      this.log.debug({ err: (err as Error).message }, "reading nft counters failed");
    } finally {
      this.lastCountersMs = performance.now() - started;
      this.collecting = false;
    }
  }

  private last: Snapshot | null = null;
  private events: ConntrackEvents | null = null;
  private affinityTimer: NodeJS.Timeout | null = null;
  /** "protocol|vip|port" → affinity service, for the conntrack event watcher. */
  private learning = new Map<string, ServiceState>();

  /**
   * Affinity in the kernel: entries are map elements consulted before the hash. New clients are
   * learned from conntrack's NEW events (no per-packet userspace work) and recorded in the shared
   * affinity table; entries are re-programmed every affinitySyncMs while an affinity service exists.
   */
  private reconcileAffinity(nat: readonly ServiceState[]): void {
    const learning = new Map<string, ServiceState>();
    for (const svc of nat) if (svc.spec.affinity.mode === "source-ip" && this.statuses.get(svc.name)?.programmed) learning.set(`${svc.spec.protocol}|${svc.host}|${svc.port}`, svc);
    this.learning = learning;
    if (learning.size === 0 || !this.opts.learn) {
      this.events?.stop();
      this.events = null;
      if (this.affinityTimer) clearInterval(this.affinityTimer);
      this.affinityTimer = null;
      return;
    }
    if (!this.events) {
      this.events = new ConntrackEvents((f) => this.onNewFlow(f), { log: this.log, netns: this.opts.netns });
      this.events.start();
    }
    if (!this.affinityTimer) {
      this.affinityTimer = setInterval(() => {
        if (this.last && !this.applying) void this.apply(this.last);
      }, this.opts.affinitySyncMs ?? 1000);
      this.affinityTimer.unref();
    }
  }

  private onNewFlow(f: NewFlow): void {
    const svc = this.learning.get(`${f.protocol}|${f.vip}|${f.port}`);
    if (!svc) return;
    for (const t of svc.targets) {
      if (t.host === f.backend && t.port === f.backendPort) {
        this.opts.learn!(svc, f.client, t);
        return;
      }
    }
  }

  /**
   * Conntrack is the connection table: a backend verdicted down loses its tracked flows at once (the
   * client gets a reset from the new backend instead of hanging, unless `nat.flushOnDown` is false);
   * a drained, disabled or removed backend keeps them for the service's drain timeout.
   */
  private reconcileFlows(nat: readonly ServiceState[]): void {
    const seen = new Map<string, BackendMemory>();
    const work: Promise<unknown>[] = [];
    const drainOf = new Map<string, number>();
    for (const svc of nat) {
      drainOf.set(svc.name, svc.spec.timeouts.drain);
      for (const b of svc.backends) {
        const key = `${svc.name}/${b.id}`;
        const down = b.verdict?.state === "down";
        const mem: BackendMemory = { protocol: svc.spec.protocol, vip: svc.host, port: svc.port, address: b.spec.address, bport: b.spec.port, serving: b.spec.state === "active" && !down, down };
        seen.set(key, mem);
        const prev = this.backends.get(key);
        if (mem.serving) {
          this.cancelDrain(key);
          continue;
        }
        if (down && prev && !prev.down && (svc.spec.nat?.flushOnDown ?? true)) {
          this.cancelDrain(key);
          work.push(this.removeFlows(key, mem, "backend down"));
        } else if (!down && prev?.serving) this.startDrain(key, mem, svc.spec.timeouts.drain);
      }
    }
    for (const [key, mem] of this.backends) {
      if (seen.has(key) || !mem.serving) continue;
      // Removed (or its service removed): flows finish or go at the drain timeout.
      this.startDrain(key, mem, drainOf.get(key.slice(0, key.indexOf("/"))) ?? 30_000);
    }
    this.backends = seen;
    this.flowWork = Promise.all(work).then(() => {});
  }

  private startDrain(key: string, mem: BackendMemory, ms: number): void {
    if (this.drainTimers.has(key)) return;
    const timer = setTimeout(() => {
      this.drainTimers.delete(key);
      void this.removeFlows(key, mem, "drain timeout");
    }, ms);
    timer.unref();
    this.drainTimers.set(key, timer);
  }

  private cancelDrain(key: string): void {
    const t = this.drainTimers.get(key);
    if (t) clearTimeout(t);
    this.drainTimers.delete(key);
  }

  private async removeFlows(key: string, m: BackendMemory, why: string): Promise<void> {
    const f: FlowFilter = { protocol: m.protocol, vip: m.vip, port: m.port, backend: { address: m.address, port: m.bport } };
    const r = await this.conntrack.deleteFlows(f);
    this.stats.flowsRemoved += r.removed;
    if (r.error) this.log.warn({ backend: key, why, err: r.error }, "removing tracked flows failed");
    else this.log.info({ backend: key, why, removed: r.removed }, "tracked flows removed");
  }

  /** Leaves the table in place (fail-static): a restarted node adopts it. */
  async close(): Promise<void> {
    if (this.countersTimer) clearTimeout(this.countersTimer);
    this.countersTimer = null;
    this.events?.stop();
    this.events = null;
    if (this.affinityTimer) clearInterval(this.affinityTimer);
    this.affinityTimer = null;
    for (const t of this.drainTimers.values()) clearTimeout(t);
    this.drainTimers.clear();
  }

  /** `ballast node --flush`: removes the table; tracked flows keep their NAT bindings until they end. */
  async flush(): Promise<{ removed: boolean; error: string | null }> {
    if (!(await this.tableExists())) return { removed: false, error: null };
    const r = await this.runner.run(["delete", "table", "inet", this.table]);
    this.applied = null;
    this.needFull = true;
    return { removed: r.ok, error: r.ok ? null : r.error };
  }
}
