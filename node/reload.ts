// Config reload (SIGHUP, `ballast node --watch`): a new, already validated node config is applied the way
// an etcd change is. Standalone services become writes to the node's memory store, so they take the same
// watch → snapshot → data plane path (listeners reused, connections kept); the node settings that can
// change at run time are applied in place; the ones that need a restart are named and left as they run.
import client from "prom-client";
import type { NodeConfig } from "../shared/schema.js";
import type { BallastNode } from "./node.js";

/** Node settings applied on reload. Everything else (node id, cluster, etcd, admin, affinity sizes) needs a restart. */
const LIVE_FIELDS = ["accessLog.enabled", "accessLog.ratePerSecond", "accessLog.sample", "log.level", "drainTimeout", "withdrawDelay", "health.ejectBase", "health.ejectMax", "health.maxEjectedShare", "services"] as const;

export interface ReloadResult {
  /** Field paths whose new value is now in effect. */
  applied: string[];
  /** Field paths that changed but need a restart; their running value is kept. */
  needsRestart: string[];
  /** Standalone: service and backend records written or deleted. */
  writes: number;
}

/** Dotted paths of every leaf (arrays compared whole) that differs between two configs. */
function changedPaths(a: unknown, b: unknown, path = ""): string[] {
  const isObj = (v: unknown): v is Record<string, unknown> => typeof v === "object" && v !== null && !Array.isArray(v);
  if (isObj(a) && isObj(b)) {
    const out: string[] = [];
    for (const k of new Set([...Object.keys(a), ...Object.keys(b)])) out.push(...changedPaths(a[k], b[k], path ? `${path}.${k}` : k));
    return out;
  }
  return JSON.stringify(a) === JSON.stringify(b) ? [] : [path];
}

export async function reloadNode(node: BallastNode, next: NodeConfig): Promise<ReloadResult> {
  const running = node.config;
  const changed = changedPaths({ ...running, services: undefined }, { ...next, services: undefined });
  const servicesChanged = JSON.stringify(running.services) !== JSON.stringify(next.services);
  const live = new Set<string>(LIVE_FIELDS);
  const applied = changed.filter((p) => live.has(p));
  const needsRestart = changed.filter((p) => !live.has(p));
  let writes = 0;
  if (servicesChanged) {
    if (!node.standalone) needsRestart.push("services");
    else {
      writes = await syncServices(node, next);
      applied.push("services");
      running.services = next.services;
    }
  }
  if (applied.includes("log.level")) {
    node.log.level = next.log.level;
    running.log.level = next.log.level;
  }
  running.accessLog = { ...next.accessLog, path: running.accessLog.path };
  node.plane.accessLog?.configure(running.accessLog);
  running.drainTimeout = next.drainTimeout;
  running.withdrawDelay = next.withdrawDelay;
  running.health.ejectBase = next.health.ejectBase;
  running.health.ejectMax = next.health.ejectMax;
  running.health.maxEjectedShare = next.health.maxEjectedShare;
  const o = node.plane.options;
  o.ejectBaseMs = next.health.ejectBase;
  o.ejectMaxMs = next.health.ejectMax;
  o.maxEjectedShare = next.health.maxEjectedShare;
  return { applied, needsRestart, writes };
}

/**
 * Makes the memory store's service and backend records match the file: unchanged records are not
 * rewritten (no revision, no snapshot), so a reload that changes one backend moves one record.
 */
async function syncServices(node: BallastNode, next: NodeConfig): Promise<number> {
  const keys = node.keys;
  const want = new Map<string, string>();
  for (const s of next.services) {
    const { backends, ...service } = s;
    want.set(keys.service(s.name), JSON.stringify(service));
    for (const b of backends) want.set(keys.backend(s.name, b.id), JSON.stringify(b));
  }
  let writes = 0;
  const have = new Map<string, string>();
  for (const prefix of [keys.services, keys.backends]) {
    for (const kv of (await node.store.list(prefix)).kvs) have.set(kv.key, kv.value.toString());
  }
  // Backends go before their service is deleted and after it is created, so no snapshot in between
  // lists a backend of an unknown service.
  const ordered = [...want.keys()].sort((a, b) => Number(a.startsWith(keys.backends)) - Number(b.startsWith(keys.backends)));
  for (const key of ordered) {
    if (have.get(key) === want.get(key)) continue;
    await node.store.put(key, want.get(key)!);
    writes++;
  }
  const gone = [...have.keys()].filter((k) => !want.has(k)).sort((a, b) => Number(b.startsWith(keys.backends)) - Number(a.startsWith(keys.backends)));
  for (const key of gone) {
    await node.store.delete(key);
    writes++;
  }
  return writes;
}

/** `ballast_config_reloads_total{result}` and `ballast_config_last_reload_successful`, as Prometheus reports its own reloads. */
export class ReloadMetrics {
  readonly reloads: client.Counter<"result">;
  readonly lastSuccessful: client.Gauge;

  constructor(registry: client.Registry) {
    this.reloads = new client.Counter({
      name: "ballast_config_reloads_total",
      help: "Config reloads (SIGHUP or file watch) by result: applied, invalid (file rejected, running config kept), failed.",
      labelNames: ["result"],
      registers: [registry],
    });
    for (const result of ["applied", "invalid", "failed"]) this.reloads.inc({ result }, 0);
    this.lastSuccessful = new client.Gauge({ name: "ballast_config_last_reload_successful", help: "1 when the last reload was applied (or none was tried), 0 when it was rejected.", registers: [registry] });
    this.lastSuccessful.set(1);
  }
}
