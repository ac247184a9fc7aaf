// Last known good on disk: the routing records (services, backends, verdicts) of the last revision this
// node applied, kept in `stateDir` and written atomically (temp file + rename). A node that starts while
// etcd cannot be reached serves from this file (fail-static across a restart) until etcd answers and its
// list replaces everything. Sits between the store's sync and the reconciler as a pass-through sink.
import { mkdirSync, readFileSync } from "node:fs";
import { rename, writeFile } from "node:fs/promises";
import { join } from "node:path";
import type client from "prom-client";
import type { KeySchema } from "../../shared/keys.js";
import { collectedTotal, collectedValue } from "../collect.js";
import type { Logger } from "../log.js";
import type { KeyValue, StoreEvent, SyncSink } from "./store.js";

const FORMAT = 1;
/** Writes wait this long after a change, so a burst of revisions costs one write. */
const SAVE_DELAY_MS = 500;

interface SavedFile {
  v: number;
  prefix: string;
  revision: number;
  savedAt: number;
  kvs: Array<{ key: string; value: string; modRevision: number }>;
}

export type SnapshotSource = "none" | "etcd" | "disk";

export class LastKnownGood implements SyncSink {
  /** Where the applied records came from: etcd, or this file while etcd has not answered since start. */
  source: SnapshotSource = "none";
  /** Of the file loaded (source "disk") or last written. */
  revision = 0;
  savedAt = 0;
  saves = 0;
  lastError: string | null = null;
  readonly file: string;
  private readonly kvs = new Map<string, KeyValue>();
  private timer: NodeJS.Timeout | null = null;
  private saving: Promise<void> = Promise.resolve();
  private closed = false;

  constructor(
    private readonly inner: SyncSink,
    dir: string,
    private readonly keys: KeySchema,
    private readonly log: Logger,
    /** Called after the file was served: staleness counts from when it was saved. */
    private readonly onLoaded: (savedAt: number, revision: number) => void = () => {},
  ) {
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    this.file = join(dir, "last-known-good.json");
  }

  private routing(key: string): boolean {
    const k = this.keys.parse(key);
    return k !== null && (k.kind === "service" || k.kind === "backend" || k.kind === "verdict");
  }

  reset(kvs: KeyValue[], revision: number): void {
    this.kvs.clear();
    for (const kv of kvs) if (this.routing(kv.key)) this.kvs.set(kv.key, kv);
    this.source = "etcd";
    this.inner.reset(kvs, revision);
    this.schedule(revision);
  }

  events(events: StoreEvent[], revision: number): void {
    let changed = false;
    for (const e of events) {
      if (!this.routing(e.key)) continue;
      changed = true;
      if (e.type === "put") this.kvs.set(e.key, { key: e.key, value: e.value, modRevision: e.modRevision, lease: "0" });
      else this.kvs.delete(e.key);
    }
    this.inner.events(events, revision);
    if (changed) this.schedule(revision);
  }

  status(connected: boolean, error?: string): void {
    this.inner.status(connected, error);
    // Only before etcd ever answered: once it has, the running snapshot is newer than any file.
    if (!connected && this.source === "none") this.load();
  }

  private load(): void {
    let saved: SavedFile;
    try {
      saved = JSON.parse(readFileSync(this.file, "utf8")) as SavedFile;
    } catch (err) {
      const e = err as NodeJS.ErrnoException;
      if (e.code !== "ENOENT") this.log.warn({ file: this.file, err: e.message }, "last known good unreadable; starting with no services");
      return;
    }
    if (saved.v !== FORMAT || saved.prefix !== this.keys.prefix || !Array.isArray(saved.kvs)) {
      this.log.warn({ file: this.file, prefix: saved.prefix }, "last known good is of another cluster or format; ignored");
      return;
    }
    const kvs: KeyValue[] = saved.kvs.map((kv) => ({ key: kv.key, value: Buffer.from(kv.value, "base64"), modRevision: kv.modRevision, lease: "0" }));
    this.source = "disk";
    this.revision = saved.revision;
    this.savedAt = saved.savedAt;
    this.log.warn({ file: this.file, revision: saved.revision, savedAt: new Date(saved.savedAt).toISOString(), records: kvs.length }, "etcd unreachable at start: serving the last known good snapshot from disk");
    this.inner.reset(kvs, saved.revision);
    this.onLoaded(saved.savedAt, saved.revision);
  }

  private schedule(revision: number): void {
    if (this.closed) return;
    this.revision = revision;
    if (this.timer !== null) return;
    this.timer = setTimeout(() => {
      this.timer = null;
      this.saving = this.saving.then(() => this.save());
    }, SAVE_DELAY_MS);
    this.timer.unref();
  }

  private async save(): Promise<void> {
    const body: SavedFile = {
      v: FORMAT,
      prefix: this.keys.prefix,
      revision: this.revision,
      savedAt: Date.now(),
      kvs: [...this.kvs.values()].map((kv) => ({ key: kv.key, value: kv.value.toString("base64"), modRevision: kv.modRevision })),
    };
    const tmp = `${this.file}.${process.pid}.tmp`;
    try {
      // rename() over the old file is atomic: a crash leaves the old file or the new one, never half.
      await writeFile(tmp, JSON.stringify(body), { mode: 0o600 });
      await rename(tmp, this.file);
      this.savedAt = body.savedAt;
      this.saves++;
      this.lastError = null;
    } catch (err) {
      this.lastError = (err as Error).message;
      this.log.warn({ file: this.file, err: this.lastError }, "could not write the last known good snapshot");
    }
  }

  /** Writes what is pending now (shutdown). */
  async close(): Promise<void> {
    if (this.timer !== null) {
      clearTimeout(this.timer);
      this.timer = null;
      this.saving = this.saving.then(() => this.save());
    }
    this.closed = true;
    await this.saving;
  }
}

export function registerLastGoodMetrics(registry: client.Registry, lkg: LastKnownGood): void {
  collectedValue({
    name: "ballast_snapshot_from_disk",
    help: "1 while the node serves the last known good snapshot from its state directory (etcd not reached since start).",
    registry,
    value: () => (lkg.source === "disk" ? 1 : 0),
  });
  collectedTotal({ name: "ballast_last_known_good_writes_total", help: "Last known good snapshots written to the state directory.", registry, value: () => lkg.saves });
}
