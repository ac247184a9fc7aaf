// etcd refuses every write once its database passes the quota (--quota-backend-bytes, 2 GiB by
// default): it raises the NOSPACE alarm and keeps it until an operator compacts, defragments and
// disarms it. For Ballast that means no registrations, no verdicts, no affinity entries — every node
// falls back at once. Nothing in etcd itself warns before; this does, from each node: the database
// size against the quota and the active alarms, as metrics and as one log line per change of level.
import type { Logger } from "pino";
import type client from "prom-client";
import { collectedGauge } from "../collect.js";
import type { SpaceStatus } from "./store.js";

/** Share of the quota from which the node warns, and from which it says writes are about to fail. */
export const SPACE_WARN = 0.8;
export const SPACE_CRITICAL = 0.95;

export type SpaceLevel = "ok" | "warning" | "critical" | "alarm";

export function spaceLevel(s: SpaceStatus, quotaBytes: number): SpaceLevel {
  if (s.alarms.length > 0) return "alarm";
  const used = s.dbSize / quotaBytes;
  return used >= SPACE_CRITICAL ? "critical" : used >= SPACE_WARN ? "warning" : "ok";
}

export class SpaceMonitor {
  last: SpaceStatus | null = null;
  level: SpaceLevel = "ok";
  /** Why the last check failed (etcd unreachable…); the previous figures stay. */
  error: string | null = null;
  private timer: NodeJS.Timeout | null = null;
  private inflight = false;

  constructor(
    /** Store.space of the etcd store. */
    private readonly read: () => Promise<SpaceStatus>,
    readonly quotaBytes: number,
    private readonly intervalMs: number,
    private readonly log: Logger,
  ) {}

  start(): void {
    void this.check();
    this.timer = setInterval(() => void this.check(), this.intervalMs);
    this.timer.unref();
  }

  close(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
  }

  async check(): Promise<void> {
    if (this.inflight) return;
    this.inflight = true;
    try {
      const s = await this.read();
      this.last = s;
      this.error = null;
      this.setLevel(spaceLevel(s, this.quotaBytes), s);
    } catch (err) {
      // etcd unreachable is the store's news to tell (fail-static); keep the last figures.
      this.error = (err as Error).message;
    } finally {
      this.inflight = false;
    }
  }

  private setLevel(level: SpaceLevel, s: SpaceStatus): void {
    if (level === this.level) return;
    const was = this.level;
    this.level = level;
    const pct = ((100 * s.dbSize) / this.quotaBytes).toFixed(1);
    const fields = { dbSize: s.dbSize, dbSizeInUse: s.dbSizeInUse, quota: this.quotaBytes, alarms: s.alarms, was };
    if (level === "alarm") {
      const message = `etcd alarm ${s.alarms.join(", ")}: etcd refuses writes (registrations, verdicts, affinity) until an operator compacts, defragments and disarms it (etcdctl alarm disarm)`;
      this.log.error(fields, message);
    } else if (level === "critical") {
      const message = `etcd database at ${pct}% of its quota: writes will fail with NOSPACE soon; compact and defragment (etcdctl compact, etcdctl defrag) or raise --quota-backend-bytes`;
      this.log.error(fields, message);
    } else if (level === "warning") {
      const message = `etcd database at ${pct}% of its quota; is auto-compaction on (--auto-compaction-retention)?`;
      this.log.warn(fields, message);
    } else {
      const message = `etcd database back to ${pct}% of its quota, no alarm`;
      this.log.info(fields, message);
    }
  }
}

export function registerSpaceMetrics(registry: client.Registry, m: SpaceMonitor): void {
  collectedGauge({
    name: "ballast_etcd_db_size_bytes",
    help: "Size of the etcd member's database file as last seen by this node (compared with the quota).",
    registry,
    read: (emit) => {
      if (m.last) emit({}, m.last.dbSize);
    },
  });
  collectedGauge({
    name: "ballast_etcd_db_size_in_use_bytes",
    help: "Bytes of the etcd database in use; the rest is free pages a defragmentation gives back.",
    registry,
    read: (emit) => {
      if (m.last) emit({}, m.last.dbSizeInUse);
    },
  });
  collectedGauge({
    name: "ballast_etcd_db_quota_bytes",
    help: "The etcd quota this node compares the database size with (etcd.quotaBytes: keep it equal to etcd's --quota-backend-bytes).",
    registry,
    read: (emit) => emit({}, m.quotaBytes),
  });
  collectedGauge({
    name: "ballast_etcd_alarm",
    help: "1 for each alarm etcd has raised (NOSPACE: every write refused; CORRUPT).",
    labelNames: ["alarm"] as const,
    registry,
    read: (emit) => {
      for (const a of m.last?.alarms ?? []) emit({ alarm: a }, 1);
    },
  });
}
