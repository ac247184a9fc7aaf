// Fuzz, with a fixed seed so a failure reproduces (issue 13): random and mutated etcd records through
// the reconciler, record table and snapshot builder; msgpack values through the node-record, heartbeat,
// verdict and affinity-batch decoders (and the affinity merge path of a live node); PROXY protocol
// bytes through the parser. Nothing may throw where the contract is "skip with a reason"; every bad
// record is listed with its key and a reason; the good records keep routing.
import { Packr } from "msgpackr";
import { afterAll, describe, expect, it } from "vitest";
import { encodeValue, parseHeartbeat, parseNodeRecord, parseVerdictValue } from "../shared/codec.js";
import { KeySchema } from "../shared/keys.js";
import { nodeConfigSchema } from "../shared/schema.js";
import { decodeBatch, encodeBatch } from "../node/affinity/batch.js";
import { MemoryStore } from "../node/control/memory-store.js";
import { Reconciler } from "../node/control/reconciler.js";
import type { KeyValue, StoreEvent } from "../node/control/store.js";
import { proxyV1Header, proxyV2Header, parseProxyHeader } from "../node/data/proxy-protocol.js";
import { StatsRegistry } from "../node/model/stats.js";
import { createLogger } from "../node/log.js";
import { BallastNode } from "../node/node.js";
import { waitFor } from "./helpers/wait.js";

const SEED = 0x13b4115;

/** mulberry32: small, fast, and the same sequence on every machine. */
function rng(seed: number) {
  let a = seed >>> 0;
  const next = () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  const int = (n: number) => Math.floor(next() * n);
  const pick = <T>(xs: readonly T[]): T => xs[int(xs.length)];
  return { next, int, pick };
}
type Rng = ReturnType<typeof rng>;

const NASTY_STRINGS = ["", "constructor", "__proto__", "toString", "a\nb", "ab\u202Ecd", "x".repeat(2000), "../..", "a/b", "%00", "\u0000", "😀", "-1", "1e400", "null"];
function randomJson(r: Rng, depth = 0): unknown {
  switch (r.int(depth > 3 ? 6 : 9)) {
    case 0: return null;
    case 1: return r.next() < 0.5;
    case 2: return r.pick([0, -1, 1.5, 2 ** 53, -(2 ** 63), 1e308, 65536, 99999, 2 ** 31]);
    case 3: return r.pick(NASTY_STRINGS);
    case 4: return `${r.int(256)}.${r.int(256)}.${r.int(300)}.${r.int(256)}:${r.int(70000)}`;
    case 5: return r.pick(["10.0.0.1:80", "[::1]:80", "127.0.0.1:0", "host:1", "1.2.3.4", "::1"]);
    case 6: return Array.from({ length: r.int(4) }, () => randomJson(r, depth + 1));
    default: {
      const o: Record<string, unknown> = {};
      const fields = ["listen", "protocol", "algorithm", "proxyProtocol", "timeouts", "limits", "access", "affinity", "health", "address", "port", "weight", "state", "zone", "id", "name", "v", "admin", "ready", "mode", "leader", "at", "term", "entries", "backends", "nodes", "base", "node", "__proto__", "constructor"];
      for (let i = r.int(5); i > 0; i--) o[r.pick(fields)] = randomJson(r, depth + 1);
      return o;
    }
  }
}

function mutate(r: Rng, bytes: Buffer): Buffer {
  const b = Buffer.from(bytes);
  switch (r.int(4)) {
    case 0: // flip a few bytes
      for (let i = 1 + r.int(4); i > 0 && b.length > 0; i--) b[r.int(b.length)] = r.int(256);
      return b;
    case 1: // truncate
      return b.subarray(0, r.int(b.length + 1));
    case 2: // splice in random bytes
      return Buffer.concat([b.subarray(0, r.int(b.length + 1)), Buffer.from(Array.from({ length: r.int(16) }, () => r.int(256))), b.subarray(r.int(b.length + 1))]);
    default: // duplicate a slice
      return Buffer.concat([b, b.subarray(r.int(b.length + 1))]);
  }
}

const keys = KeySchema.forCluster("fuzz");
const P = keys.prefix;
const good: Array<[string, Buffer]> = [
  [keys.service("good"), Buffer.from(JSON.stringify({ listen: "127.0.0.1:7001", health: { type: "none" } }))],
  [keys.backend("good", "g1"), Buffer.from("10.0.0.1:80")],
  [keys.backend("good", "g2"), Buffer.from(JSON.stringify({ address: "10.0.0.2", port: 80, weight: 2 }))],
];
const validNode = (id: string) => ({ id, address: "10.0.0.9:9090", admin: "10.0.0.9:9090", zone: "z", version: "1", ready: true, draining: false, revision: 1, mode: "shared", startedAt: 1, updatedAt: 2 });
const loose = new Packr({ useRecords: false, mapsAsObjects: true });

/** One fuzzed record: a key (sometimes malformed) and a value (random, or a mutated valid one). */
function fuzzRecord(r: Rng, i: number): [string, Buffer] {
  const seg = () => (r.next() < 0.8 ? `f${i}` : r.pick(NASTY_STRINGS));
  const kind = r.int(8);
  let key: string;
  let valid: Buffer;
  switch (kind) {
    case 0: key = keys.service(seg()); valid = Buffer.from(JSON.stringify({ listen: `127.0.0.1:${7100 + i}` })); break;
    case 1: key = keys.backend(r.next() < 0.7 ? "good" : seg(), seg()); valid = Buffer.from(`10.1.${i >> 8}.${i & 255}:80`); break;
    case 2: key = keys.verdict("good", r.pick(["g1", "g2", seg()])); valid = encodeValue({ state: "down", since: 1, reason: "x", count: 1, checker: "n" }); break;
    case 3: { const id = seg(); key = keys.node(id); valid = encodeValue(validNode(id)); break; }
    case 4: key = keys.heartbeat; valid = encodeValue({ leader: "n1", at: 1, term: "t" }); break;
    case 5: key = keys.affinityBatch("good", seg(), r.int(1e6)); valid = encodeBatch("n1", [{ ip: "10.0.0.5", backend: "g1", lastUsed: 5, created: 1, gen: 0, creator: "n1" }]); break;
    case 6: key = `${P}${r.pick(["services", "backends", "nodes", "health", "affinity", "zzz"])}/${seg()}/${seg()}/${seg()}`; valid = Buffer.from("{}"); break;
    default: key = keys.service(seg()); valid = Buffer.from(JSON.stringify(randomJson(r))); break;
  }
  const how = r.int(4);
  const value = how === 0 ? valid : how === 1 ? mutate(r, valid) : how === 2 ? Buffer.from(JSON.stringify(randomJson(r))) : loose.pack(randomJson(r));
  return [key, value];
}

const ok = (f: () => unknown) => {
  try {
    f();
    return true;
  } catch {
    return false;
  }
};

describe("fuzz (fixed seed)", () => {
  it("3000 random and mutated records: no throw, every bad one listed with a reason, the good ones route", () => {
    const r = rng(SEED);
    const rec = new Reconciler(keys, new StatsRegistry(), { onSnapshot: () => {} }, createLogger("silent", {}));
    const kv = (key: string, value: Buffer, rev: number): KeyValue => ({ key, value, modRevision: rev, lease: "0" });
    let rev = 1;
    // What etcd holds at the end: the last put of each key, minus deletes.
    const final = new Map<string, Buffer>(good);
    const initial = [...good.map(([k, v]) => kv(k, v, rev)), ...Array.from({ length: 1000 }, (_, i) => { const [k, v] = fuzzRecord(r, i); final.set(k, v); return kv(k, v, ++rev); })];
    expect(() => rec.reset(initial, rev)).not.toThrow();
    for (let batch = 0; batch < 40; batch++) {
      const events: StoreEvent[] = [];
      for (let j = 0; j < 50; j++) {
        const [key, value] = fuzzRecord(r, 1000 + batch * 50 + j);
        if (r.next() < 0.1) final.delete(key);
        else final.set(key, value);
        events.push(!final.has(key) ? { type: "delete", key, value: Buffer.alloc(0), modRevision: ++rev } : { type: "put", key, value, modRevision: ++rev });
      }
      expect(() => rec.events(events, rev)).not.toThrow();
    }
    rec.rebuild();
    rec.stop();
    const snap = rec.snapshot!;
    // The good service and its two backends (unless a fuzzed verdict took one down) still route.
    const svc = snap.services.get("good")!;
    expect(svc.spec.listen).toBe("127.0.0.1:7001");
    expect(svc.backends.map((b) => b.id).filter((id) => id === "g1" || id === "g2")).toEqual(["g1", "g2"]);
    // Every invalid entry has a key under the prefix and a reason; JSON of everything a node serves works.
    for (const bad of snap.invalid) {
      expect(bad.key.startsWith(P)).toBe(true);
      expect(typeof bad.reason === "string" && bad.reason.length > 0, bad.key).toBe(true);
    }
    expect(() => JSON.stringify({ invalid: snap.invalid, nodes: [...rec.nodes.values()], heartbeat: rec.heartbeat })).not.toThrow();
    // Names that reach listeners and metrics follow the key rules.
    for (const name of snap.services.keys()) expect(name).toMatch(/^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$/);
    for (const s of snap.services.values()) for (const b of s.backends) expect(b.id).toMatch(/^[a-zA-Z0-9][a-zA-Z0-9_.:-]{0,127}$/);
    // Every node record kept is valid; the listing says why the others are not.
    for (const n of rec.nodes.values()) expect(n.admin).toBe("10.0.0.9:9090");
    // Every record etcd holds at the end is either in use or listed as invalid: nothing is dropped silently.
    const listed = new Set(snap.invalid.map((x) => x.key));
    const unaccounted: string[] = [];
    for (const [key, value] of final) {
      if (listed.has(key)) continue;
      const k = keys.parse(key);
      let used = false;
      if (k === null) used = false;
      else if (k.kind === "service") used = snap.services.has(k.service!);
      else if (k.kind === "backend") used = snap.services.get(k.service!)?.backends.some((b) => b.id === k.id) === true;
      else if (k.kind === "node") used = rec.nodes.has(k.node!);
      else if (k.kind === "heartbeat") used = rec.heartbeat !== null && ok(() => parseHeartbeat(value));
      else if (k.kind === "verdict") used = ok(() => parseVerdictValue(value));
      else used = true; // affinity values go to the affinity table (fuzzed below); election keys are etcd3's
      if (!used) unaccounted.push(key);
    }
    expect(unaccounted).toEqual([]);
    expect(snap.invalid.length).toBeGreaterThan(500);
  });

  it("msgpack values through the node-record, heartbeat, verdict and batch decoders: a value or an Error with a reason", () => {
    const r = rng(SEED + 1);
    const seeds = [encodeValue(validNode("n1")), encodeValue({ leader: "n1", at: 1, term: "t", settled: true }), encodeValue({ state: "up", since: 1, reason: "", count: 1, checker: "n1" }), encodeBatch("n1", [{ ip: "2001:db8::1", backend: "b", lastUsed: 9, created: 1, gen: 3, creator: "n2" }])];
    const decoders = [(b: Buffer) => parseNodeRecord("n1", b), parseHeartbeat, parseVerdictValue, decodeBatch];
    let decoded = 0;
    const wrong: string[] = [];
    for (let i = 0; i < 10_000; i++) {
      const d = r.int(decoders.length);
      const input = r.next() < 0.6 ? mutate(r, seeds[d]) : r.next() < 0.5 ? loose.pack(randomJson(r)) : Buffer.from(Array.from({ length: r.int(64) }, () => r.int(256)));
      try {
        const out = decoders[d](input);
        JSON.stringify(out); // no BigInt, no cycles
        decoded++;
      } catch (err) {
        // Only the decoders' own reasons (plain Errors with a message), not a TypeError from reading a field of garbage.
        if (!(err instanceof Error) || err.constructor !== Error || err.message === "") wrong.push(`decoder ${d} on ${input.toString("hex")}: ${String(err)}`);
      }
    }
    expect(wrong).toEqual([]);
    expect(decoded).toBeGreaterThan(100);
  });

  it("PROXY protocol bytes: the parser returns a header or null, never throws", () => {
    const r = rng(SEED + 2);
    const seeds = [proxyV1Header("192.0.2.1", 1234, "198.51.100.2", 80), proxyV1Header("2001:db8::1", 1, "2001:db8::2", 2), proxyV2Header("192.0.2.1", 1234, "198.51.100.2", 80, "tcp"), proxyV2Header("2001:db8::1", 5, "::1", 6, "udp"), Buffer.from("PROXY UNKNOWN\r\n")];
    let parsed = 0;
    const wrong: string[] = [];
    for (let i = 0; i < 10_000; i++) {
      const input = r.next() < 0.8 ? mutate(r, r.pick(seeds)) : Buffer.from(Array.from({ length: r.int(120) }, () => r.int(256)));
      try {
        const h = parseProxyHeader(input);
        if (h === null) continue;
        parsed++;
        if (h.length > input.length || h.srcPort < 0 || h.srcPort > 65535 || h.dstPort < 0 || h.dstPort > 65535) wrong.push(`${input.toString("hex")} → ${JSON.stringify(h)}`);
      } catch (err) {
        wrong.push(`${input.toString("hex")} threw ${String(err)}`);
      }
    }
    expect(wrong).toEqual([]);
    expect(parsed).toBeGreaterThan(100);
  });

  describe("affinity merge path of a live node", () => {
    const running: BallastNode[] = [];
    afterAll(async () => {
      await Promise.all(running.map((n) => n.close()));
    });

    it("merges 2000 fuzzed batch values without throwing and keeps serving", async () => {
      const r = rng(SEED + 3);
      const store = new MemoryStore();
      await store.put(keys.service("good"), JSON.stringify({ listen: "127.0.0.1:0", affinity: { mode: "source-ip" }, health: { type: "none" } }));
      await store.put(keys.backend("good", "g1"), "10.0.0.1:80");
      const config = nodeConfigSchema.parse({ node: { id: "fz" }, cluster: "fuzz", admin: { listen: "127.0.0.1:0" } });
      const n = new BallastNode({ config, store, log: createLogger("silent", {}) });
      running.push(n);
      await n.start();
      const now = Date.now();
      const seed = encodeBatch("n1", Array.from({ length: 8 }, (_, i) => ({ ip: `10.7.0.${i + 1}`, backend: "g1", lastUsed: now - i, created: now - 100, gen: i, creator: `n${i}` })));
      for (let i = 0; i < 2000; i++) {
        const value = r.next() < 0.7 ? mutate(r, seed) : loose.pack(randomJson(r));
        n.affinity.events([{ type: "put", key: keys.affinityBatch("good", "rogue", i + 1), value, modRevision: i + 2 }]);
      }
      await waitFor(() => !n.affinity.pending, { message: "all merged" });
      const res = await fetch(`http://${n.admin.address}/api/state`);
      expect(res.status).toBe(200);
      const e = n.affinity.entries;
      const t = e.table("good");
      for (let slot = 0; t !== undefined && slot < e.highWater; slot++) {
        if (!e.ownedBy(slot, t)) continue;
        expect(e.backendName(slot)).toBe("g1");
        expect(e.lastUsed(slot)).toBeLessThanOrEqual(Date.now() + 5_000);
      }
    });
  });
});
