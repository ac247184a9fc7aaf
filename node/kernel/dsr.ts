// The DSR programmer: turns each snapshot's `forwarding: dsr` services into the node's netdev table
// (node/kernel/dsr-ruleset.ts) and keeps per-service status and per-backend counters. One
// transaction per snapshot; a failed apply keeps the previous ruleset serving (nft transactions are
// all or nothing), is logged, counted and reported per service — the node never crashes or flushes.
import { execFile } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { buildMaglevTable } from "../lb/maglev.js";
import type { ForwarderServiceStatus } from "../model/forwarder.js";
import { type DsrBackend, type DsrExisting, type DsrServicePlan, type DsrTablePlan, dsrCounterName, dsrObjectName, renderDsr, renderDsrFlush } from "./dsr-ruleset.js";
import { ipv4Bytes, kernelSlot } from "./jhash.js";

/** What the programmer needs of a service (the snapshot's ServiceState satisfies it). */
export interface DsrServiceInput {
  readonly name: string;
  readonly host: string;
  readonly port: number;
  readonly hashSourceOnly: boolean;
  readonly spec: {
    readonly protocol: "tcp" | "udp";
    readonly forwarding?: string;
    readonly timeouts: { readonly idle: number; readonly udpIdle: number };
    readonly limits: { readonly maxFlows: number };
  };
  /** Routable backends (take new flows), sorted by id. */
  readonly targets: readonly { readonly id: string; readonly host: string; readonly weight: number }[];
  /** Backends that may keep their flows (routable or draining, not down or disabled). */
  readonly sticky: ReadonlyMap<string, { readonly id: string; readonly host: string }>;
}

export interface DsrSnapshotInput {
  readonly revision: number;
  readonly services: ReadonlyMap<string, DsrServiceInput>;
}

/** Runs nft (in a namespace for tests): the script goes through a file, as nft 1.0.6 cannot read a socketpair stdin. */
export type NftExec = (args: string[], script?: string) => Promise<{ code: number; stdout: string; stderr: string }>;

/** `nft` on this machine, or inside `ip netns exec <netns>` when given. */
export function nftExec(netns?: string): NftExec {
  return (args, script) =>
    new Promise((resolve) => {
      let dir: string | null = null;
      const argv = [...args];
      if (script !== undefined) {
        dir = mkdtempSync(join(tmpdir(), "ballast-nft-"));
        const file = join(dir, "ruleset.nft");
        writeFileSync(file, script);
        argv.push("-f", file);
      }
      const [cmd, full] = netns ? ["ip", ["netns", "exec", netns, "nft", ...argv]] : ["nft", argv];
      execFile(cmd, full, { timeout: 30_000, maxBuffer: 256 * 1024 * 1024 }, (err, stdout, stderr) => {
        if (dir) rmSync(dir, { recursive: true, force: true });
        const code = err ? (typeof (err as { code?: unknown }).code === "number" ? (err as { code: number }).code : 127) : 0;
        resolve({ code, stdout: String(stdout), stderr: String(stderr) || (err && code !== 0 ? err.message : "") });
      });
    });
}

/**
 * Slots for a kernel table of `backends` backends: the smallest prime ≥ 100 per backend from a fixed
 * ladder (so an update stays small and every node picks the same size), at least 251.
 */
export function dsrTableSize(backends: number): number {
  const want = Math.max(251, backends * 100);
  let size = 251;
  while (size < want) size = size * 2;
  while (!isPrime(size)) size++;
  return size;
}

function isPrime(n: number): boolean {
  if (n < 2) return false;
  for (let d = 2; d * d <= n; d++) if (n % d === 0) return false;
  return true;
}

/** Why a service cannot be forwarded by DSR on this node, or null. (Record validation refuses the rest.) */
export function dsrUnsupported(svc: DsrServiceInput): string | null {
  if (ipv4Bytes(svc.host) === null || svc.host === "0.0.0.0") return `listen: forwarding dsr needs a specific IPv4 VIP, got ${svc.host}`;
  if (svc.port === 0) return "listen: forwarding dsr needs a fixed port";
  for (const b of svc.sticky.values()) if (ipv4Bytes(b.host) === null) return `backend ${b.id}: forwarding dsr needs an IPv4 backend address, got ${b.host}`;
  return null;
}

export interface DsrOptions {
  /** The cluster name: the table is `ballast_<cluster>` (family netdev). */
  cluster: string;
  /** The interface facing the backends' L2 segment. */
  device: string;
  /** Hash seed shared by every node of the cluster. */
  seed: number;
  exec?: NftExec;
  /** Called for each failed apply (logs, metrics). */
  onError?(error: string): void;
}

/** The nft table name for a cluster: letters, digits and `_` only. */
export function dsrTableName(cluster: string): string {
  return `ballast_${cluster.replace(/[^A-Za-z0-9_]/g, "_")}`;
}

export interface DsrBackendCounters {
  packets: number;
  bytes: number;
}

export class DsrProgrammer {
  readonly table: string;
  private readonly exec: NftExec;
  private applied: DsrTablePlan | null = null;
  private adopted = false;
  private readonly statuses = new Map<string, ForwarderServiceStatus>();
  /** Applies that nft refused (the previous ruleset kept serving). */
  failures = 0;
  lastError: string | null = null;

  constructor(private readonly opts: DsrOptions) {
    this.table = dsrTableName(opts.cluster);
    this.exec = opts.exec ?? nftExec();
  }

  /** The plan last written to the kernel (route explain reads it). */
  get current(): DsrTablePlan | null {
    return this.applied;
  }

  status(service: string): ForwarderServiceStatus | undefined {
    return this.statuses.get(service);
  }

  /** Builds the plan for the DSR services of a snapshot; services DSR cannot carry get a reason instead. */
  plan(snapshot: DsrSnapshotInput): { plan: DsrTablePlan; refused: Map<string, string> } {
    const services = new Map<string, DsrServicePlan>();
    const refused = new Map<string, string>();
    for (const svc of snapshot.services.values()) {
      if (svc.spec.forwarding !== "dsr") continue;
      const why = dsrUnsupported(svc);
      if (why) {
        refused.set(svc.name, why);
        continue;
      }
      const stickyKeys = new Map<string, number>();
      const backends: DsrBackend[] = [];
      for (const b of svc.sticky.values()) {
        const key = dsrBackendKey(b.host);
        stickyKeys.set(b.id, key);
        backends.push({ key, id: b.id, address: b.host });
      }
      // Two backends with one address cannot both be in a service (the snapshot refuses the later one).
      backends.sort((a, b) => a.key - b.key);

      const routable = svc.targets.filter((t) => t.weight > 0 && stickyKeys.has(t.id));
      const modulus = dsrTableSize(routable.length);
      const slots = new Uint32Array(routable.length === 0 ? 0 : modulus);
      if (routable.length > 0) {
        const table = buildMaglevTable(
          routable.map((t) => t.id),
          routable.map((t) => t.weight),
          modulus,
        );
        for (let i = 0; i < modulus; i++) slots[i] = stickyKeys.get(routable[table[i]].id)!;
      }
      services.set(svc.name, {
        name: svc.name,
        object: dsrObjectName(svc.name),
        vip: svc.host,
        port: svc.port,
        protocol: svc.spec.protocol,
        hashSourceOnly: svc.hashSourceOnly,
        modulus,
        seed: this.opts.seed >>> 0,
        slots,
        backends,
        flowTimeoutMs: svc.spec.protocol === "udp" ? svc.spec.timeouts.udpIdle : svc.spec.timeouts.idle,
        maxFlows: svc.spec.limits.maxFlows,
      });
    }
    return { plan: { table: this.table, device: this.opts.device, services }, refused };
  }

  /**
   * Programs a snapshot. Never rejects: a refused transaction leaves the previous ruleset serving
   * and puts the error on every DSR service's status.
   */
  async apply(snapshot: DsrSnapshotInput): Promise<void> {
    const { plan, refused } = this.plan(snapshot);
    const existing = this.adopted ? null : await this.readExisting();
    const script = renderDsr(this.applied, plan, existing);
    let error: string | null = null;
    try {
      const r = await this.exec([], script);
      if (r.code !== 0) error = (r.stderr || r.stdout).trim().split("\n").slice(0, 3).join(" ") || `nft exited ${r.code}`;
    } catch (err) {
      error = (err as Error).message;
    }
    const prevStatuses = new Map(this.statuses);
    this.statuses.clear();
    for (const [name, why] of refused) this.statuses.set(name, { programmed: false, reason: why, revision: 0 });
    if (error) {
      this.failures++;
      this.lastError = error;
      this.opts.onError?.(error);
      for (const name of plan.services.keys()) {
        const before = prevStatuses.get(name);
        const serving = this.applied?.services.has(name) ?? false;
        this.statuses.set(name, { programmed: serving, reason: `nft apply failed: ${error}`, revision: serving ? (before?.revision ?? 0) : 0 });
      }
      return;
    }
    this.lastError = null;
    this.adopted = true;
    this.applied = plan;
    for (const name of plan.services.keys()) this.statuses.set(name, { programmed: true, reason: null, revision: snapshot.revision });
  }

  /** Objects a previous process left in our table (names only: `-t` leaves out the elements). */
  private async readExisting(): Promise<DsrExisting | null> {
    const r = await this.exec(["-j", "-t", "list", "table", "netdev", this.table]);
    if (r.code !== 0) return null; // no table yet
    const chains: string[] = [];
    const maps: string[] = [];
    const counters: string[] = [];
    try {
      for (const o of (JSON.parse(r.stdout) as { nftables: Record<string, { name?: string }>[] }).nftables) {
        if (o.chain?.name) chains.push(o.chain.name);
        else if (o.map?.name) maps.push(o.map.name);
        else if (o.counter?.name) counters.push(o.counter.name);
      }
    } catch {
      return null;
    }
    return { chains, maps, counters };
  }

  /** Per-backend packets and bytes (client → backend; replies bypass the node), service → backend id → counters. */
  async counters(): Promise<Map<string, Map<string, DsrBackendCounters>>> {
    const out = new Map<string, Map<string, DsrBackendCounters>>();
    const plan = this.applied;
    if (!plan) return out;
    const r = await this.exec(["-j", "list", "counters", "table", "netdev", this.table]);
    if (r.code !== 0) return out;
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
      for (const b of s.backends) m.set(b.id, byName.get(dsrCounterName(s, b.key)) ?? { packets: 0, bytes: 0 });
      out.set(s.name, m);
    }
    return out;
  }

  /** Removes the whole DSR table (the documented flush); the kernel stops forwarding DSR services. */
  async flush(): Promise<{ ok: boolean; error: string | null }> {
    const r = await this.exec([], renderDsrFlush(this.table));
    this.applied = null;
    this.adopted = false;
    return { ok: r.code === 0 || /No such file/.test(r.stderr), error: r.code === 0 ? null : r.stderr.trim() };
  }
}

/** Where the kernel sends a flow by the table (pins aside): slot and backend, for route explain. */
export function explainDsr(s: DsrServicePlan, client: string, port: number): { slot: number; backend: DsrBackend | null } {
  const slot = kernelSlot(client, s.hashSourceOnly ? null : port, s.modulus, s.seed);
  if (s.slots.length === 0) return { slot, backend: null };
  const key = s.slots[slot];
  return { slot, backend: s.backends.find((b) => b.key === key) ?? null };
}

/** A backend's key in the kernel maps: its IPv4 address as an unsigned 32-bit number. */
export function dsrBackendKey(address: string): number {
  const b = ipv4Bytes(address);
  if (!b) throw new RangeError(`not an IPv4 address: ${address}`);
  return ((b[0] << 24) | (b[1] << 16) | (b[2] << 8) | b[3]) >>> 0;
}

/** A random 32-bit seed (a cluster's first node writes one; tests use their own). */
export function randomSeed(): number {
  return randomBytes(4).readUInt32BE(0);
}
