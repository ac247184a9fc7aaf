// The snapshot: a pure function from validated records (of one revision) to a frozen, ready-to-route
// view. The data plane swaps one reference to it; connections read it once. Same input → same snapshot.
import net from "node:net";
import { formatHostPort, parseHostPort } from "../../shared/address.js";
import type { Verdict } from "../../shared/codec.js";
import type { BackendSpec, ServiceSpec } from "../../shared/schema.js";
import type { BackendTarget, Picker } from "../lb/algorithm.js";
import { natPickerFactory } from "../lb/nat-table.js";
import { pickerFactory } from "../lb/index.js";
import { buildZonePlans, type ZonePlan } from "../lb/zones.js";
import { AccessPolicy } from "./access.js";
import type { ForwardingMode } from "./forwarder.js";
import type { BackendCounters, ServiceCounters, StatsRegistry } from "./stats.js";

export interface Target extends BackendTarget {
  readonly stats: BackendCounters;
}

/** A record that was skipped, with the reason an operator reads in logs, metrics and `ballast status`. */
export interface InvalidRecord {
  key: string;
  reason: string;
  /** True when an earlier valid value of this key is still in use. */
  keptLastGood?: boolean;
}

export type VerdictView = Verdict & { source: "shared" | "local" };

/** What the node's resolver last answered for a backend's host name (node/control/resolver.ts). */
export interface ResolvedName {
  /**
   * IPv4 first, then IPv6, each sorted: the same answer gives the same targets in the same order on
   * every node. Empty when the name has none. With `error` set and addresses left, they are the last
   * good answer, kept while the servers fail.
   */
  readonly addresses: readonly string[];
  /** Why the last lookup did not answer ("NXDOMAIN", "ETIMEOUT; keeping the last answer"); null when it did. */
  readonly error: string | null;
  /** When this answer was first seen (ms epoch). */
  readonly since: number;
  /** Lowest TTL of the answer (ms); null from the system resolver, which reports none. */
  readonly ttlMs: number | null;
}

export interface BackendView {
  readonly id: string;
  readonly spec: BackendSpec;
  readonly verdict: VerdictView | null;
  /** Takes new connections (active, weight > 0, not down). */
  readonly routable: boolean;
  /** Why not routable ("drain", "disabled", "down: <reason>", "weight 0", "unknown") — empty when routable. */
  readonly why: string;
  /** The weight the picker uses: `spec.weight`, or less while the service's slowStart ramps it. */
  readonly effectiveWeight: number;
  /**
   * Where new connections go: the literal address, or every address the host name resolved to (each
   * one a target with the backend's weight). Empty while a name is unresolved or has no address.
   */
  readonly addresses: readonly string[];
  /** Where probes go: `checkAddress` (resolved the same way) or `addresses`. */
  readonly checkAddresses: readonly string[];
  /** The resolver's answer for a host-name address; null for an IP literal or before the first answer. */
  readonly resolution: ResolvedName | null;
  /** The same for a host-name `checkAddress`. */
  readonly checkResolution: ResolvedName | null;
}

export interface ServiceState {
  readonly name: string;
  /** `forwarding` is read through forwardingOf(): records written before it existed are proxied. */
  readonly spec: ServiceSpec & { readonly forwarding?: ForwardingMode };
  /** "tcp|host|port": listeners are reused across snapshots by this key. */
  readonly listenKey: string;
  readonly host: string;
  readonly port: number;
  readonly backends: readonly BackendView[];
  /** Routable backends, sorted by id: what the picker chooses among. */
  readonly targets: readonly Target[];
  /** Backends that may keep existing sessions (active or drain, not disabled, not down). */
  readonly sticky: ReadonlyMap<string, Target>;
  readonly picker: Picker;
  readonly hashSourceOnly: boolean;
  readonly access: AccessPolicy | null;
  /** `locality: prefer-zone`: the plan of each zone that has backends (the router uses its node's zone's); else null. */
  readonly zones: ReadonlyMap<string, ZonePlan> | null;
  readonly counters: ServiceCounters;
  /** acceptProxy: the peers trusted to send a PROXY header (null: the service takes none). */
  readonly proxyFrom: AccessPolicy | null;
}

export interface Snapshot {
  readonly revision: number;
  /** When a slow-start ramp takes its next step (ms epoch): the snapshot must be rebuilt then. Null: none. */
  readonly nextRampAt: number | null;
  readonly services: ReadonlyMap<string, ServiceState>;
  readonly invalid: readonly InvalidRecord[];
}

export interface SnapshotInput {
  revision: number;
  /** Service name → spec; already valid one by one (the record table parsed them). */
  services: ReadonlyMap<string, ServiceSpec>;
  /** Service name → backend id → spec (key order does not matter: everything is sorted). */
  backends: ReadonlyMap<string, ReadonlyMap<string, BackendSpec>>;
  /** `${service}/${id}` → verdict, whichever source the node uses now (shared or local fallback). */
  verdicts: ReadonlyMap<string, VerdictView>;
  /** Records rejected one by one before the build (parse errors). */
  invalid: readonly InvalidRecord[];
  /** Mod revision of a backend record: of two backends with one address, the older keeps it. */
  backendRevision?: (service: string, id: string) => number;
  /** Clock for slow start (ms epoch); default Date.now(). */
  now?: number;
  /**
   * The node's resolver answers for host-name backends, read synchronously (undefined: no answer yet).
   * Besides the clock, the one input that is not a record: nodes whose resolvers answer alike build
   * the same snapshot; nodes that get different answers for a name route its share differently.
   */
  resolve?: (name: string) => ResolvedName | undefined;
  /** Key builder for cross-record errors (so they carry the etcd key). */
  keyOf: { service(name: string): string; backend(service: string, id: string): string };
}

const byString = (a: string, b: string) => (a < b ? -1 : a > b ? 1 : 0);

/** Slow start begins at this share of the weight. */
export const SLOW_START_FLOOR = 0.1;
/**
 * Ramp steps. Each step is a new snapshot; Maglev rebuilds its table per step, and each rebuild moves
 * the flows of the table entries that change hands (about the weight share gained, of the ramping
 * backend's future flows), so Maglev ramps in 4 coarse steps, the stateless-per-flow algorithms in 10.
 */
const RAMP_STEPS_HASHED = 4;
const RAMP_STEPS = 10;

/**
 * Effective weight during slow start, and when it next changes. Quantized to steps so every node,
 * reading the same verdict `since`, switches at the same moments and builds the same Maglev table.
 */
export function slowStartWeight(weight: number, since: number | null, slowStart: number, steps: number, now: number): { weight: number; next: number | null } {
  if (slowStart <= 0 || weight === 0) return { weight, next: null };
  // No verdict yet (a new backend, health on): it starts at the floor until its first up verdict.
  if (since === null) return { weight: weight * SLOW_START_FLOOR, next: null };
  const elapsed = now - since;
  if (elapsed >= slowStart) return { weight, next: null };
  const step = Math.max(0, Math.floor((elapsed / slowStart) * steps));
  const share = Math.max(SLOW_START_FLOOR, step / steps);
  return { weight: weight * share, next: since + Math.ceil(((step + 1) * slowStart) / steps) };
}

export function listenKeyOf(protocol: string, host: string, port: number): string {
  return `${protocol}|${host}|${port}`;
}

/** Same verdict as far as routing and the operator can tell (views are rebuilt on every build). */
function sameVerdict(a: VerdictView | null, b: VerdictView | null): boolean {
  if (a === b) return true;
  if (a === null || b === null) return false;
  return a.state === b.state && a.reason === b.reason && a.since === b.since && a.count === b.count && a.checker === b.checker && a.source === b.source;
}

/**
 * Builds the snapshot. With `prev` (the snapshot this one replaces), a service whose spec, backends
 * and verdicts are unchanged keeps its previous ServiceState (picker included): one verdict flip does
 * not rebuild N Maglev tables or reset every round-robin/least-conn position. A service whose routable
 * set is unchanged (a verdict detail or a drained-but-not-routable backend changed) keeps its picker.
 * The record table keeps the parsed spec object of an unchanged record, so "unchanged" is identity.
 */
/**
 * Why a backend cannot serve a `forwarding: dsr` service: the node forwards packets unchanged, so the
 * backend must listen on the service's own port and be an IPv4 neighbour (its address resolves by ARP).
 */
function dsrBackendRefusal(b: BackendSpec, listenPort: number): string | null {
  if (!/^\d{1,3}(\.\d{1,3}){3}$/.test(b.address)) return `address: forwarding dsr needs an IPv4 backend address, got ${b.address}`;
  if (b.port !== listenPort) return `port: forwarding dsr cannot translate ports: backend port ${b.port} must equal the service's listen port ${listenPort}`;
  return null;
}

export function buildSnapshot(input: SnapshotInput, stats: StatsRegistry, prev: Snapshot | null = null): Snapshot {
  const invalid: InvalidRecord[] = [...input.invalid];
  const services = new Map<string, ServiceState>();
  const listenOwners = new Map<string, string>();
  const now = input.now ?? Date.now();
  let nextRampAt: number | null = null;

  for (const name of [...input.services.keys()].sort(byString)) {
    const spec = input.services.get(name)!;
    const hp = parseHostPort(spec.listen)!;
    const listenKey = listenKeyOf(spec.protocol, hp.host, hp.port);
    // Port 0 means "any free port": each such service gets its own listener.
    const owner = hp.port === 0 ? undefined : listenOwners.get(listenKey);
    if (owner !== undefined) {
      invalid.push({ key: input.keyOf.service(name), reason: `listen ${spec.protocol} ${spec.listen} already used by service ${owner}` });
      continue;
    }
    const before = prev?.services.get(name);
    const same = before !== undefined && before.spec === spec ? before : undefined;
    let access: AccessPolicy | null = same !== undefined ? same.access : null;
    if (same === undefined && (spec.access.allow.length > 0 || spec.access.deny.length > 0)) {
      try {
        access = new AccessPolicy(spec.access.allow, spec.access.deny);
      } catch (err) {
        invalid.push({ key: input.keyOf.service(name), reason: `access: ${(err as Error).message}` });
        continue;
      }
    }
    let proxyFrom: AccessPolicy | null = same !== undefined ? same.proxyFrom : null;
    if (same === undefined && spec.acceptProxy.version !== "none") {
      if (spec.protocol !== "tcp") {
        invalid.push({ key: input.keyOf.service(name), reason: "acceptProxy: only for tcp services" });
        continue;
      }
      try {
        proxyFrom = new AccessPolicy(spec.acceptProxy.from, [], "acceptProxy");
      } catch (err) {
        invalid.push({ key: input.keyOf.service(name), reason: (err as Error).message });
        continue;
      }
    }
    listenOwners.set(listenKey, name);

    const specs = input.backends.get(name) ?? new Map<string, BackendSpec>();
    const views: BackendView[] = [];
    const targets: Target[] = [];
    const sticky = new Map<string, Target>();
    // Duplicate addresses: the record written first keeps the address, so adding a mistaken
    // duplicate never knocks out a backend that is serving. Same revisions → same answer everywhere.
    const rev = input.backendRevision ?? (() => 0);
    const seenAddress = new Map<string, string>();
    const duplicate = new Set<string>();
    const byAge = [...specs.keys()].sort((x, y) => rev(name, x) - rev(name, y) || byString(x, y));
    for (const id of byAge) {
      const b = specs.get(id)!;
      const dsrWhy = spec.forwarding === "dsr" ? dsrBackendRefusal(b, hp.port) : null;
      if (dsrWhy !== null) {
        // Skipped like a duplicate: the record is invalid for this service, the others keep working.
        duplicate.add(id);
        invalid.push({ key: input.keyOf.backend(name, id), reason: dsrWhy });
        continue;
      }
      const addressKey = `${b.address}|${b.port}`;
      const first = seenAddress.get(addressKey);
      if (first !== undefined) {
        duplicate.add(id);
        invalid.push({ key: input.keyOf.backend(name, id), reason: `duplicate address ${b.address}:${b.port} (same as backend ${first})` });
      } else seenAddress.set(addressKey, id);
    }
    const ids = [...specs.keys()].sort(byString).filter((id) => !duplicate.has(id));
    if (same !== undefined && same.backends.length === ids.length) {
      let unchanged = true;
      for (let i = 0; i < ids.length && unchanged; i++) {
        const v = same.backends[i];
        const b = specs.get(ids[i]);
        unchanged =
          v.id === ids[i] &&
          v.spec === b &&
          sameVerdict(v.verdict, input.verdicts.get(`${name}/${ids[i]}`) ?? null) &&
          v.resolution === (net.isIP(b.address) === 0 ? (input.resolve?.(b.address) ?? null) : null) &&
          v.checkResolution === (b.checkAddress !== undefined && net.isIP(b.checkAddress) === 0 ? (input.resolve?.(b.checkAddress) ?? null) : null);
      }
      // A service still in a slow-start ramp is rebuilt: the same records give a new weight later.
      if (unchanged && !same.backends.some((v) => v.routable && v.effectiveWeight !== v.spec.weight)) {
        services.set(name, same);
        continue;
      }
    }
    // By id and address: a host-name backend has one target per address.
    const prevTargets = new Map<string, Target>();
    if (before !== undefined) for (const t of before.targets) prevTargets.set(`${t.id}|${t.host}`, t);
    if (before !== undefined) for (const t of before.sticky.values()) prevTargets.set(`${t.id}|${t.host}`, t);
    for (const id of ids) {
      const b = specs.get(id)!;
      const verdict = input.verdicts.get(`${name}/${id}`) ?? null;
      // The kernel's tables hold addresses: a kernel-forwarded service's names are not resolved.
      const at = spec.forwarding === "nat" && net.isIP(b.address) === 0 ? { addresses: [], resolution: null, why: `address: forwarding nat needs an IP address, got ${b.address}` } : addressesOf(b.address, input.resolve);
      const checkAt = b.checkAddress !== undefined ? addressesOf(b.checkAddress, input.resolve) : at;
      let why = "";
      if (b.state !== "active") why = b.state;
      else if (b.weight === 0) why = "weight 0";
      else if (at.why !== "") why = at.why;
      // A backend that cannot be probed is not routed on a verdict nobody can make.
      else if (checkAt.why !== "" && spec.health.type !== "none") why = `checkAddress: ${checkAt.why}`;
      else if (verdict?.state === "down") why = `down: ${verdict.reason}`;
      else if (!verdict && !spec.health.unknownRoutes && spec.health.type !== "none") why = "unknown";
      let weight = b.weight;
      if (spec.slowStart > 0 && why === "" && spec.health.type !== "none") {
        const steps = spec.algorithm === "maglev" || spec.algorithm === "source-ip" ? RAMP_STEPS_HASHED : RAMP_STEPS;
        const ramp = slowStartWeight(b.weight, verdict?.state === "up" ? verdict.since : null, spec.slowStart, steps, now);
        weight = ramp.weight;
        if (ramp.next !== null && (nextRampAt === null || ramp.next < nextRampAt)) nextRampAt = ramp.next;
      }
      const named = at.resolution !== null;
      const counters = stats.backend(name, id);
      for (const host of at.addresses) {
        // The previous Target when nothing it carries changed, so a reused picker and the new sticky
        // map hold the same objects (retries compare targets by identity).
        const old = prevTargets.get(`${id}|${host}`);
        const target: Target =
          old !== undefined && old.port === b.port && old.weight === weight && old.zone === b.zone
            ? old
            : Object.freeze({
                id,
                host,
                port: b.port,
                weight,
                zone: b.zone,
                label: formatHostPort(host, b.port),
                // Each address of a name is its own place in a Maglev table; a literal keeps the id alone,
                // so existing tables are unchanged.
                ...(named ? { hashKey: `${id}|${host}` } : {}),
                stats: counters,
              });
        if (why === "") targets.push(target);
        // Affinity entries name the backend: a pinned client returns to its first address.
        if (b.state !== "disabled" && verdict?.state !== "down" && !sticky.has(id)) sticky.set(id, target);
      }
      views.push(
        Object.freeze({
          id,
          spec: b,
          verdict,
          routable: why === "",
          why,
          effectiveWeight: why === "" ? weight : 0,
          addresses: at.addresses,
          checkAddresses: checkAt.addresses,
          resolution: at.resolution,
          checkResolution: b.checkAddress !== undefined ? checkAt.resolution : null,
        }),
      );
    }
    // A NAT service's table is the kernel map's: the same builder feeds explain and nftables, sized
    // by the configured backends (so the picker is kept only while that count and the mode stay).
    // dsr services too: the kernel's slot map and route explain read one table.
    const nat = spec.forwarding === "nat" || spec.forwarding === "dsr";
    const factory = nat ? natPickerFactory(spec.algorithm, views.length) : pickerFactory(spec.algorithm);
    const keepPicker =
      before !== undefined &&
      before.spec.algorithm === spec.algorithm &&
      before.spec.forwarding === spec.forwarding &&
      (!nat || before.backends.length === views.length) &&
      sameTargets(before.targets, targets);
    services.set(
      name,
      Object.freeze({
        name,
        spec,
        listenKey,
        host: hp.host,
        port: hp.port,
        backends: Object.freeze(views),
        targets: keepPicker ? before.targets : Object.freeze(targets),
        sticky,
        picker: keepPicker ? before.picker : factory.build(targets),
        hashSourceOnly: factory.hashSourceOnly,
        access,
        zones:
          spec.locality === "prefer-zone"
            ? buildZonePlans(views.map((v) => ({ zone: v.spec.zone, weight: v.spec.weight * Math.max(1, v.addresses.length), capacity: v.spec.state === "active" && v.spec.weight > 0 })), targets, factory, spec.zoneAware.minHealthyShare)
            : null,
        counters: stats.service(name),
        proxyFrom,
      }),
    );
  }

  // Backends of services that do not exist (or were rejected) are invalid, so operators see typos.
  for (const [service, specs] of input.backends) {
    if (services.has(service)) continue;
    const why = input.services.has(service) ? `service ${service} is invalid` : `unknown service ${service}`;
    for (const id of specs.keys()) invalid.push({ key: input.keyOf.backend(service, id), reason: why });
  }
  invalid.sort((a, b) => byString(a.key, b.key));
  return Object.freeze({ revision: input.revision, nextRampAt, services, invalid: Object.freeze(invalid) });
}

/** A backend address as targets: the literal itself, or the resolver's answer for a host name. */
function addressesOf(address: string, resolve: SnapshotInput["resolve"]): { addresses: readonly string[]; resolution: ResolvedName | null; why: string } {
  if (net.isIP(address) !== 0) return { addresses: [address], resolution: null, why: "" };
  const r = resolve?.(address);
  if (r === undefined) return { addresses: [], resolution: null, why: `resolving ${address}` };
  if (r.addresses.length === 0) return { addresses: [], resolution: r, why: `resolve ${address}: ${r.error ?? "no address"}` };
  return { addresses: r.addresses, resolution: r, why: "" };
}

function sameTargets(a: readonly Target[], b: readonly Target[]): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}
