// The record table: every routing record (service, backend, verdict) of the cluster prefix, parsed one
// by one. A bad record is listed with its key and reason; a bad update keeps the key's last good value.
import { parseHostPort } from "../../shared/address.js";
import { parseVerdictValue, type Verdict } from "../../shared/codec.js";
import type { KeySchema } from "../../shared/keys.js";
import { type BackendSpec, backendSchema, formatIssues, resolveService, type ServiceSpec, serviceSchema } from "../../shared/schema.js";
import type { InvalidRecord, SnapshotInput, VerdictView } from "../model/snapshot.js";
import type { KeyValue, StoreEvent } from "./store.js";
import type { z } from "zod";

/** etcd allows 1.5 MiB; a person-written record above this is a mistake (or an attack), not a config. */
export const MAX_RECORD_BYTES = 64 * 1024;

/**
 * No value under the cluster prefix may exceed this, whatever its kind: Ballast's own writers stay
 * far below (affinity batches split at 512 KiB, node/verdict/heartbeat records are bytes), and a
 * bound per value is what lets a list page be sized at all. Larger values are listed as invalid.
 */
export const MAX_VALUE_BYTES = 1024 * 1024;

interface Slot<T> {
  good: T | null;
  /** The bytes `good` was parsed from: the same bytes again are not a change. */
  raw: Buffer | null;
  error: string | null;
  /** etcd mod revision of the good value: the older of two conflicting records wins, on every node. */
  rev: number;
}

/** A person-written JSON record: bounded in size, parsed, validated; throws the reason (field paths). */
export function parseJsonRecord<T>(raw: Buffer, schema: z.ZodType<T>): T {
  if (raw.length > MAX_RECORD_BYTES) throw new Error(`value of ${raw.length} bytes exceeds ${MAX_RECORD_BYTES}`);
  let json: unknown;
  try {
    json = JSON.parse(raw.toString("utf8"));
  } catch (err) {
    throw new Error(`invalid JSON: ${(err as Error).message}`);
  }
  const r = schema.safeParse(json);
  if (!r.success) throw new Error(formatIssues(r.error).join("; "));
  return r.data;
}

export function parseServiceValue(name: string, raw: Buffer): ServiceSpec {
  const data = parseJsonRecord(raw, serviceSchema);
  if (data.name !== undefined && data.name !== name) throw new Error(`name ${data.name} does not match the key's ${name}`);
  return resolveService(name, data);
}

export function parseBackendValue(id: string, raw: Buffer): BackendSpec {
  if (raw.length > MAX_RECORD_BYTES) throw new Error(`value of ${raw.length} bytes exceeds ${MAX_RECORD_BYTES}`);
  const text = raw.toString("utf8").trim();
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (err) {
    // `etcdctl put …/b1 10.0.0.5:8080` (unquoted) is the short form too.
    if (parseHostPort(text)) json = text;
    else throw new Error(`invalid JSON: ${(err as Error).message} (or use the short form "address:port")`);
  }
  const r = backendSchema.safeParse(json);
  if (!r.success) throw new Error(formatIssues(r.error).join("; "));
  if (r.data.id !== undefined && r.data.id !== id) throw new Error(`id ${r.data.id} does not match the key's ${id}`);
  return { ...r.data, id };
}

export class RecordTable {
  private readonly services = new Map<string, Slot<ServiceSpec>>();
  private readonly backends = new Map<string, Map<string, Slot<BackendSpec>>>();
  private readonly verdicts = new Map<string, Slot<Verdict>>();
  /** Keys under the prefix this version does not recognise (extra segments, names outside the rules). */
  private readonly unrecognised = new Map<string, string>();
  /** Cluster records the reconciler validates itself (node records, the heartbeat): key → reason. */
  readonly cluster = new Map<string, string>();
  /** Keys of any kind whose value was too large to read or to accept (key → reason). */
  private readonly oversized = new Map<string, string>();
  revision = 0;

  constructor(private readonly keys: KeySchema) {}

  /** Replaces everything with a full list. Returns whether routing records may have changed. */
  reset(kvs: KeyValue[], revision: number): boolean {
    this.services.clear();
    this.backends.clear();
    this.verdicts.clear();
    this.unrecognised.clear();
    this.oversized.clear();
    for (const kv of kvs) this.put(kv.key, kv.value, kv.modRevision);
    this.revision = revision;
    return true;
  }

  /** Applies one batch of watch events; returns whether any routing record changed. */
  apply(events: readonly StoreEvent[], revision: number): boolean {
    let changed = false;
    for (const e of events) {
      changed = (e.type === "put" ? this.put(e.key, e.value, e.modRevision) : this.delete(e.key)) || changed;
    }
    this.revision = revision;
    return changed;
  }

  /**
   * A key (of any kind) whose value is too large: listed under invalid; a routing record keeps its
   * last good value. Returns whether the listing changed.
   */
  markOversized(key: string, reason: string): boolean {
    if (this.oversized.get(key) === reason) return false;
    this.oversized.set(key, reason);
    return true;
  }

  /** The key got a value of acceptable size, or was deleted. Returns whether it was listed. */
  clearOversized(key: string): boolean {
    return this.oversized.size > 0 && this.oversized.delete(key);
  }

  private put(key: string, value: Buffer, rev: number): boolean {
    const k = this.keys.parse(key);
    if (!k) {
      const reason = this.keys.reason(key);
      if (reason === null || this.unrecognised.get(key) === reason) return false;
      this.unrecognised.set(key, reason);
      return true;
    }
    switch (k.kind) {
      case "service":
        return update(this.services, k.service!, rev, value, () => parseServiceValue(k.service!, value));
      case "backend": {
        let m = this.backends.get(k.service!);
        if (!m) {
          m = new Map();
          this.backends.set(k.service!, m);
        }
        const backends = m;
        return update(backends, k.id!, rev, value, () => parseBackendValue(k.id!, value), () => sharesAddress(backends, k.id!));
      }
      case "verdict":
        return update(this.verdicts, `${k.service}/${k.id}`, rev, value, () => parseVerdictValue(value));
      default:
        return false;
    }
  }

  private delete(key: string): boolean {
    const k = this.keys.parse(key);
    if (!k) return this.unrecognised.delete(key);
    switch (k.kind) {
      case "service":
        return this.services.delete(k.service!);
      case "backend": {
        const m = this.backends.get(k.service!);
        if (!m) return false;
        const had = m.delete(k.id!);
        if (m.size === 0) this.backends.delete(k.service!);
        return had;
      }
      case "verdict":
        return this.verdicts.delete(`${k.service}/${k.id}`);
      default:
        return false;
    }
  }

  sharedVerdicts(): Map<string, Verdict> {
    const out = new Map<string, Verdict>();
    for (const [key, slot] of this.verdicts) if (slot.good) out.set(key, slot.good);
    return out;
  }

  serviceSpecs(): Map<string, ServiceSpec> {
    const out = new Map<string, ServiceSpec>();
    for (const [name, slot] of this.services) if (slot.good) out.set(name, slot.good);
    return out;
  }

  backendSpecs(): Map<string, Map<string, BackendSpec>> {
    const out = new Map<string, Map<string, BackendSpec>>();
    for (const [service, m] of this.backends) {
      const inner = new Map<string, BackendSpec>();
      for (const [id, slot] of m) if (slot.good) inner.set(id, slot.good);
      if (inner.size > 0) out.set(service, inner);
    }
    return out;
  }

  /** Mod revision of a backend's good value (0 when unknown). */
  backendRevision(service: string, id: string): number {
    return this.backends.get(service)?.get(id)?.rev ?? 0;
  }

  invalid(): InvalidRecord[] {
    const out: InvalidRecord[] = [];
    for (const [name, slot] of this.services) if (slot.error) out.push({ key: this.keys.service(name), reason: slot.error, keptLastGood: slot.good !== null });
    for (const [service, m] of this.backends)
      for (const [id, slot] of m) if (slot.error) out.push({ key: this.keys.backend(service, id), reason: slot.error, keptLastGood: slot.good !== null });
    for (const [sid, slot] of this.verdicts) {
      if (!slot.error) continue;
      const [service, id] = sid.split("/");
      out.push({ key: this.keys.verdict(service, id), reason: slot.error, keptLastGood: slot.good !== null });
    }
    for (const [key, reason] of this.unrecognised) out.push({ key, reason });
    for (const [key, reason] of this.cluster) out.push({ key, reason });
    for (const [key, reason] of this.oversized) out.push({ key, reason });
    return out;
  }

  /** The snapshot builder's input, with verdicts chosen by the caller (shared or local fallback). */
  input(verdicts: ReadonlyMap<string, VerdictView>): SnapshotInput {
    return {
      revision: this.revision,
      services: this.serviceSpecs(),
      backends: this.backendSpecs(),
      verdicts,
      invalid: this.invalid(),
      keyOf: { service: (n) => this.keys.service(n), backend: (s, id) => this.keys.backend(s, id) },
      backendRevision: (s, id) => this.backendRevision(s, id),
    };
  }
}

/**
 * Puts one record; returns whether routing may change. The same bytes as the good value are not a
 * change (the parsed object is kept, so the snapshot builder sees it unchanged by identity), unless
 * they clear an error; the mod revision is still taken, since it orders duplicate backend addresses
 * (`revMatters` then says whether that order can matter for this record).
 */
function update<T>(map: Map<string, Slot<T>>, key: string, rev: number, raw: Buffer, parse: () => T, revMatters: () => boolean = () => false): boolean {
  const slot = map.get(key);
  if (slot !== undefined && slot.good !== null && slot.raw?.equals(raw)) {
    const changed = slot.error !== null || (slot.rev !== rev && revMatters());
    slot.error = null;
    slot.rev = rev;
    return changed;
  }
  try {
    const good = parse();
    map.set(key, { good, raw: Buffer.from(raw), error: null, rev });
    return true;
  } catch (err) {
    const error = (err as Error).message;
    if (slot) {
      const changed = slot.error !== error;
      slot.error = error;
      return changed;
    }
    map.set(key, { good: null, raw: null, error, rev });
    return true;
  }
}

/** Whether another backend of the service has this one's address (then record age decides which routes). */
function sharesAddress(backends: Map<string, Slot<BackendSpec>>, id: string): boolean {
  const me = backends.get(id)?.good;
  if (!me) return false;
  for (const [other, slot] of backends) if (other !== id && slot.good !== null && slot.good.address === me.address && slot.good.port === me.port) return true;
  return false;
}
