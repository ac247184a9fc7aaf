// The check engine shared by the health leader and local fallback: one timer per target on a fixed
// grid (start times spread over `jitter` × interval), rise/fall counting from an unknown or seeded
// state, and a callback on every state transition. It never writes anywhere itself.
import { formatHostPort } from "../../shared/address.js";
import type { Verdict } from "../../shared/codec.js";
import { hashString } from "../lb/hash.js";
import type { Snapshot } from "../model/snapshot.js";
import { type CheckKind, type HealthSettings, type Probe, type ProbeOutcome, probe as realProbe } from "./checks.js";

export interface CheckTarget {
  /** `${service}/${id}`, the key of the verdict map. */
  readonly key: string;
  readonly service: string;
  readonly id: string;
  readonly host: string;
  /**
   * Every address to probe, when the check address is a host name with more than one (resolved when
   * the snapshot was built: probes never look a name up). The backend is up only when all answer.
   */
  readonly hosts?: readonly string[];
  readonly port: number;
  readonly kind: CheckKind;
  readonly settings: HealthSettings;
}

export type CheckState = "unknown" | "up" | "down";

export interface CheckerHooks {
  /** State transitions only: unknown → up/down and up ↔ down. */
  onChange(target: CheckTarget, verdict: Verdict): void;
  /** Every probe: outcome, duration, and how late it started against its schedule. */
  onResult?(target: CheckTarget, outcome: ProbeOutcome, seconds: number, lagMs: number): void;
  /** A probe this node could not make (result `local`): not counted toward any verdict. */
  onLocalFault?(target: CheckTarget, outcome: ProbeOutcome): void;
}

/** A zero interval from a config would spin; nothing useful is checked faster than this. */
const MIN_INTERVAL_MS = 10;

interface Slot {
  target: CheckTarget;
  state: CheckState;
  successes: number;
  failures: number;
  since: number;
  reason: string;
  /** When the current/next probe was scheduled to start (ms epoch). */
  due: number;
  timer: NodeJS.Timeout | null;
  running: boolean;
  probes: number;
  removed: boolean;
}

/**
 * The targets of a snapshot: active backends of services whose check type is not `none`, at their
 * check address. Drained and disabled backends are not checked (nothing checks them into traffic).
 * Targets equal to `previous` ones are reused, and `changed` says whether any differs: most snapshots
 * only carry new verdicts, and must not cost the checker anything.
 */
export function checkTargetsOf(snapshot: Snapshot, previous: readonly CheckTarget[] | null = null): { targets: CheckTarget[]; changed: boolean } {
  const out: CheckTarget[] = [];
  let changed = previous === null;
  for (const svc of snapshot.services.values()) {
    const settings = svc.spec.health;
    if (settings.type === "none") continue;
    // The type defaults by protocol (tcp connect / udp datagram) in resolveService().
    const kind: CheckKind = settings.type;
    for (const b of svc.backends) {
      if (b.spec.state !== "active") continue;
      // A host name with no address (yet) cannot be probed; the backend says why it is not routable.
      if (b.checkAddresses.length === 0) continue;
      const host = b.checkAddresses[0];
      const hosts = b.checkAddresses.length > 1 ? b.checkAddresses : undefined;
      const port = b.spec.checkPort ?? b.spec.port;
      // Snapshots list services and backends sorted, so an unchanged target sits at the same index.
      const prev = previous?.[out.length];
      if (prev !== undefined && prev.service === svc.name && prev.id === b.id && prev.host === host && sameHosts(prev.hosts, hosts) && prev.port === port && prev.kind === kind && prev.settings === settings) {
        out.push(prev);
        continue;
      }
      changed = true;
      out.push({ key: `${svc.name}/${b.id}`, service: svc.name, id: b.id, host, ...(hosts ? { hosts } : {}), port, kind, settings });
    }
  }
  if (previous !== null && out.length !== previous.length) changed = true;
  return { targets: out, changed };
}

export class Checker {
  private readonly slots = new Map<string, Slot>();
  private stopped = false;

  constructor(
    /** Written into every verdict as `checker`. */
    readonly checkerId: string,
    private readonly hooks: CheckerHooks,
    private readonly probe: Probe = realProbe,
    /**
     * Mixed into each target's phase. The leader's checker leaves it empty; local fallback passes the
     * node id, so nodes that fall back together do not all probe a backend at the same instant.
     */
    private readonly phaseSalt = "",
  ) {}

  get size(): number {
    return this.slots.size;
  }

  /**
   * Makes `targets` the set under check. Existing targets keep their state and schedule (rescheduled
   * only when interval or jitter changed); new ones start from `seedOf` (else unknown); gone ones stop.
   */
  setTargets(targets: Iterable<CheckTarget>, seedOf: (key: string) => Verdict | undefined = () => undefined): void {
    if (this.stopped) return;
    const now = Date.now();
    const seen = new Set<string>();
    for (const t of targets) {
      seen.add(t.key);
      const slot = this.slots.get(t.key);
      if (slot === undefined) {
        this.add(t, seedOf(t.key) ?? null, now);
        continue;
      }
      const prev = slot.target.settings;
      slot.target = t;
      if (prev.interval !== t.settings.interval || prev.jitter !== t.settings.jitter) this.schedule(slot, now + phaseOf(t, this.phaseSalt));
    }
    for (const [key, slot] of this.slots) if (!seen.has(key)) this.remove(slot);
  }

  /** Current verdicts of the targets with a known state. */
  verdicts(): Map<string, Verdict> {
    const out = new Map<string, Verdict>();
    for (const [key, s] of this.slots) if (s.state !== "unknown") out.set(key, this.verdictOf(s));
    return out;
  }

  /** The current verdict of one target; null while unknown or not checked. */
  stateOf(key: string): Verdict | null {
    const s = this.slots.get(key);
    return s === undefined || s.state === "unknown" ? null : this.verdictOf(s);
  }

  /** True once every target has been probed at least max(rise, fall) times by this checker. */
  settled(): boolean {
    for (const s of this.slots.values()) if (s.probes < Math.max(s.target.settings.rise, s.target.settings.fall)) return false;
    return true;
  }

  stop(): void {
    this.stopped = true;
    for (const slot of this.slots.values()) this.remove(slot);
  }

  private add(target: CheckTarget, seed: Verdict | null, now: number): void {
    const slot: Slot = {
      target,
      state: seed?.state ?? "unknown",
      // A seeded verdict counts as a full streak: the opposite result must still come `fall`/`rise` times.
      successes: seed?.state === "up" ? target.settings.rise : 0,
      failures: seed?.state === "down" ? target.settings.fall : 0,
      since: seed?.since ?? now,
      reason: seed?.reason ?? "",
      due: 0,
      timer: null,
      running: false,
      probes: 0,
      removed: false,
    };
    this.slots.set(target.key, slot);
    this.schedule(slot, now + phaseOf(target, this.phaseSalt));
  }

  private remove(slot: Slot): void {
    slot.removed = true;
    if (slot.timer) clearTimeout(slot.timer);
    slot.timer = null;
    this.slots.delete(slot.target.key);
  }

  private schedule(slot: Slot, due: number): void {
    if (slot.timer) clearTimeout(slot.timer);
    slot.due = due;
    slot.timer = setTimeout(() => this.fire(slot), Math.max(0, due - Date.now()));
    slot.timer.unref();
  }

  private fire(slot: Slot): void {
    slot.timer = null;
    if (slot.removed || this.stopped) return;
    const now = Date.now();
    const interval = Math.max(MIN_INTERVAL_MS, slot.target.settings.interval);
    // A probe still running (timeout > interval) skips this slot rather than piling up.
    if (!slot.running) {
      const lagMs = Math.max(0, now - slot.due);
      const target = slot.target;
      const started = performance.now();
      slot.running = true;
      (target.hosts !== undefined ? probeEach(this.probe, target) : this.probe(target, target.settings, target.kind)).then(
        (outcome) => this.record(slot, target, outcome, (performance.now() - started) / 1000, lagMs),
        (err: Error) => this.record(slot, target, { ok: false, result: "error", reason: `probe failed: ${err.message}` }, (performance.now() - started) / 1000, lagMs),
      );
    }
    // Stay on the grid; if the timer ran more than an interval late, skip the missed slots.
    let due = slot.due + interval;
    if (due <= now) due += Math.ceil((now - due + 1) / interval) * interval;
    this.schedule(slot, due);
  }

  private record(slot: Slot, target: CheckTarget, outcome: ProbeOutcome, seconds: number, lagMs: number): void {
    slot.running = false;
    if (slot.removed || this.stopped) return;
    this.hooks.onResult?.(target, outcome, seconds, lagMs);
    if (outcome.result === "local") {
      // This node ran short (descriptors, buffers): nothing was learnt about the backend. Its streak
      // and state stay as they were; whoever owns the checker decides what a starved node does.
      this.hooks.onLocalFault?.(target, outcome);
      return;
    }
    slot.probes++;
    const { rise, fall } = slot.target.settings;
    if (outcome.ok) {
      slot.successes++;
      slot.failures = 0;
      if (slot.state !== "up" && slot.successes >= rise) this.transition(slot, "up", outcome.reason);
    } else {
      slot.failures++;
      slot.successes = 0;
      if (slot.state !== "down" && slot.failures >= fall) this.transition(slot, "down", outcome.reason);
    }
  }

  private transition(slot: Slot, state: "up" | "down", reason: string): void {
    slot.state = state;
    slot.since = Date.now();
    slot.reason = reason;
    this.hooks.onChange(slot.target, this.verdictOf(slot));
  }

  private verdictOf(s: Slot): Verdict {
    return {
      state: s.state === "down" ? "down" : "up",
      since: s.since,
      reason: s.reason,
      count: s.state === "down" ? s.failures : s.successes,
      checker: this.checkerId,
    };
  }
}

function sameHosts(a: readonly string[] | undefined, b: readonly string[] | undefined): boolean {
  if (a === b) return true;
  if (a === undefined || b === undefined || a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/**
 * One probe round over every address of a host-name backend, in parallel. A local fault on any is a
 * local fault (nothing learnt); else the backend is up only when every address answers, and a failure
 * names the address: a backend is one unit of verdict, so a dead address takes its name out until it
 * answers again (list addresses as separate backends to route around one alone).
 */
async function probeEach(probe: Probe, t: CheckTarget): Promise<ProbeOutcome> {
  const hosts = t.hosts!;
  const outcomes = await Promise.all(hosts.map((host) => probe({ host, port: t.port }, t.settings, t.kind)));
  const local = outcomes.findIndex((o) => o.result === "local");
  const bad = local >= 0 ? local : outcomes.findIndex((o) => !o.ok);
  if (bad < 0) return { ok: true, result: "ok", reason: `${outcomes[0].reason} (${hosts.length} addresses)` };
  const o = outcomes[bad];
  return { ok: false, result: o.result, reason: `${formatHostPort(hosts[bad], t.port)}: ${o.reason}` };
}

/** Where in the interval a target's probes start: fixed per key (and salt), spread over `jitter` × interval. */
export function phaseOf(t: CheckTarget, salt = ""): number {
  const h = hashString(t.key, salt === "" ? 0 : hashString(salt));
  return Math.floor(Math.max(MIN_INTERVAL_MS, t.settings.interval) * t.settings.jitter * (h / 2 ** 32));
}
