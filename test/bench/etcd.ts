// A throwaway etcd for the run, and a tiny client over its JSON gateway (/v3/kv/*), so the bench needs
// no etcd library of its own.
import { mkdirSync, rmSync } from "node:fs";
import { join } from "node:path";
import { freePort, httpRequest, waitTcp } from "./net.js";
import type { Proc, ProcessGroup } from "./procs.js";

export interface KV {
  key: string;
  value: Buffer;
  createRevision: number;
  modRevision: number;
}

const b64 = (s: string | Buffer) => Buffer.from(s).toString("base64");

/** End of a prefix range: the prefix with its last byte incremented. */
function prefixEnd(prefix: string): string {
  const b = Buffer.from(prefix);
  b[b.length - 1]++;
  return b.toString("base64");
}

export class Etcd {
  constructor(
    readonly url: string,
    readonly proc: Proc,
  ) {}

  private async call(path: string, body: unknown): Promise<Record<string, unknown>> {
    const res = await httpRequest(`${this.url}/v3/kv/${path}`, { method: "POST", body: JSON.stringify(body), timeoutMs: 10_000, headers: { "content-type": "application/json" } });
    if (res.status !== 200) throw new Error(`etcd ${path}: HTTP ${res.status} ${res.body.slice(0, 200)}`);
    return JSON.parse(res.body) as Record<string, unknown>;
  }

  /** Puts a key; returns the revision of the write. */
  async put(key: string, value: string | Buffer): Promise<number> {
    const r = await this.call("put", { key: b64(key), value: b64(value) });
    return Number((r.header as { revision: string }).revision);
  }

  /** Puts `key` and deletes `old` in one transaction (one revision); returns that revision. */
  async replace(key: string, value: string, old: string): Promise<number> {
    const r = await this.call("txn", {
      success: [{ request_put: { key: b64(key), value: b64(value) } }, { request_delete_range: { key: b64(old) } }],
    });
    return Number((r.header as { revision: string }).revision);
  }

  async delete(key: string): Promise<number> {
    const r = await this.call("deleterange", { key: b64(key) });
    return Number((r.header as { revision: string }).revision);
  }

  async deletePrefix(prefix: string): Promise<void> {
    await this.call("deleterange", { key: b64(prefix), range_end: prefixEnd(prefix) });
  }

  /** Keys under `prefix`; with `minModRevision`, only those written at or after that revision. */
  async range(prefix: string, o: { keysOnly?: boolean; minModRevision?: number } = {}): Promise<{ kvs: KV[]; revision: number; count: number }> {
    const r = (await this.call("range", {
      key: b64(prefix),
      range_end: prefixEnd(prefix),
      keys_only: o.keysOnly ?? false,
      min_mod_revision: o.minModRevision ?? 0,
    })) as {
      header: { revision: string };
      count?: string;
      kvs?: { key: string; value?: string; create_revision: string; mod_revision: string }[];
    };
    const kvs = (r.kvs ?? []).map((kv) => ({
      key: Buffer.from(kv.key, "base64").toString(),
      value: Buffer.from(kv.value ?? "", "base64"),
      createRevision: Number(kv.create_revision),
      modRevision: Number(kv.mod_revision),
    }));
    return { kvs, revision: Number(r.header.revision), count: Number(r.count ?? kvs.length) };
  }

  async count(prefix: string): Promise<number> {
    const r = (await this.call("range", { key: b64(prefix), range_end: prefixEnd(prefix), count_only: true })) as { count?: string };
    return Number(r.count ?? 0);
  }
}

export async function startEtcd(group: ProcessGroup, runDir: string, name = "etcd"): Promise<Etcd> {
  const client = await freePort();
  const peer = await freePort();
  const dataDir = join(runDir, `${name}-data`);
  rmSync(dataDir, { recursive: true, force: true });
  mkdirSync(dataDir, { recursive: true });
  const url = `http://127.0.0.1:${client}`;
  const peerUrl = `http://127.0.0.1:${peer}`;
  const proc = group.start(name, "etcd", [
    "--name", name,
    "--data-dir", dataDir,
    "--listen-client-urls", url,
    "--advertise-client-urls", url,
    "--listen-peer-urls", peerUrl,
    "--initial-advertise-peer-urls", peerUrl,
    "--initial-cluster", `${name}=${peerUrl}`,
    "--log-level", "warn",
    "--logger", "zap",
  ]);
  await waitTcp(client, 20_000, "etcd");
  const etcd = new Etcd(url, proc);
  const end = Date.now() + 20_000;
  while (Date.now() < end) {
    try {
      await etcd.put("/bench/ping", "1");
      return etcd;
    } catch {
      await new Promise((r) => setTimeout(r, 100));
    }
  }
  throw new Error(`etcd did not accept writes; last output:\n${proc.tail()}`);
}
