// The local affinity table without etcd: the merge rule (table-driven and as a convergence property),
// LRU eviction at the cap, expiry by sweep, slot reuse and growth.
import { describe, expect, it } from "vitest";
import { EntryStore, formatIpv4, graceTtl, Merge, type ServiceTable, wins } from "../../node/affinity/entries.js";
import { parseIPv4 } from "../../shared/ip.js";

const TTL = 60_000;
const GRACE = graceTtl(TTL);
const NOW = 1_700_000_000_000;

interface E {
  backend: string;
  creator: string;
  gen: number;
  created: number;
  lastUsed: number;
}

function merge(store: EntryStore, ip: string, e: E, now = NOW): Merge {
  const t = store.ensureTable("web");
  return store.merge(t, ip, store.names.intern(e.backend), store.names.intern(e.creator), e.gen, e.created, e.lastUsed, GRACE, now);
}

function binding(store: EntryStore, ip: string) {
  const slot = store.find(store.table("web")!, ip);
  if (slot < 0) return null;
  return { backend: store.backendName(slot), creator: store.creatorName(slot), gen: store.gen(slot), created: store.created(slot), lastUsed: store.lastUsed(slot) };
}

function ipsOf(store: EntryStore, t: ServiceTable): string[] {
  const out: string[] = [];
  for (const slot of store.lruOrder()) if (store.ownedBy(slot, t)) out.push(store.ip(slot));
  return out.sort();
}

describe("wins (which binding of a client every node keeps)", () => {
  it.each([
    { description: "higher generation wins even if created later", a: [1, 500, "b"], b: [0, 100, "a"], expected: true },
    { description: "lower generation loses", a: [0, 100, "a"], b: [1, 500, "b"], expected: false },
    { description: "same generation: earliest created wins", a: [0, 100, "z"], b: [0, 101, "a"], expected: true },
    { description: "same generation, later created loses", a: [0, 101, "a"], b: [0, 100, "z"], expected: false },
    { description: "same generation and time: lower node id wins", a: [2, 100, "a"], b: [2, 100, "b"], expected: true },
    { description: "same generation and time: higher node id loses", a: [2, 100, "b"], b: [2, 100, "a"], expected: false },
    { description: "identical bindings: neither wins", a: [0, 100, "a"], b: [0, 100, "a"], expected: false },
  ] as const)("$description", ({ a, b, expected }) => {
    expect(wins(a[0], a[1], a[2], "x", b[0], b[1], b[2], "x")).toBe(expected);
  });

  it("the backend id breaks a full tie, so the order is total", () => {
    expect(wins(0, 100, "a", "x", 0, 100, "a", "y")).toBe(true);
    expect(wins(0, 100, "a", "y", 0, 100, "a", "x")).toBe(false);
  });
});

describe("EntryStore.merge", () => {
  const base: E = { backend: "x", creator: "a", gen: 0, created: NOW - 1000, lastUsed: NOW - 500 };
  it.each([
    { description: "no local entry: taken", local: null, incoming: base, result: Merge.New, expected: base },
    {
      description: "past TTL + grace: ignored",
      local: null,
      incoming: { ...base, lastUsed: NOW - GRACE },
      result: Merge.Stale,
      expected: null,
    },
    {
      description: "same binding, newer use: last use updated",
      local: base,
      incoming: { ...base, lastUsed: NOW - 100 },
      result: Merge.Same,
      expected: { ...base, lastUsed: NOW - 100 },
    },
    {
      description: "same binding, older use: nothing changes",
      local: { ...base, lastUsed: NOW - 100 },
      incoming: base,
      result: Merge.Same,
      expected: { ...base, lastUsed: NOW - 100 },
    },
    {
      description: "concurrent creation, incoming earlier: incoming wins",
      local: { backend: "y", creator: "b", gen: 0, created: NOW - 900, lastUsed: NOW - 50 },
      incoming: base,
      result: Merge.Won,
      expected: base,
    },
    {
      description: "concurrent creation, local earlier: local kept",
      local: base,
      incoming: { backend: "y", creator: "b", gen: 0, created: NOW - 900, lastUsed: NOW - 50 },
      result: Merge.Lost,
      expected: base,
    },
    {
      description: "re-pick after the backend was lost (next generation) wins over an older, fresher entry",
      local: { ...base, lastUsed: NOW - 10 },
      incoming: { backend: "y", creator: "b", gen: 1, created: NOW - 200, lastUsed: NOW - 200 },
      result: Merge.Won,
      expected: { backend: "y", creator: "b", gen: 1, created: NOW - 200, lastUsed: NOW - 200 },
    },
    {
      description: "same backend, other identity, incoming wins: identity adopted, newest use kept",
      local: { backend: "x", creator: "b", gen: 0, created: NOW - 900, lastUsed: NOW - 10 },
      incoming: base,
      result: Merge.Same,
      expected: { ...base, lastUsed: NOW - 10 },
    },
    {
      description: "same backend, other identity, local wins: its last use still advances",
      local: base,
      incoming: { backend: "x", creator: "b", gen: 0, created: NOW - 900, lastUsed: NOW - 10 },
      result: Merge.Same,
      expected: { ...base, lastUsed: NOW - 10 },
    },
    {
      description: "local entry past TTL: any live incoming entry replaces it",
      local: { backend: "y", creator: "a", gen: 5, created: NOW - 10 * TTL, lastUsed: NOW - GRACE - 1 },
      localAt: NOW - GRACE,
      incoming: base,
      result: Merge.New,
      expected: base,
    },
  ] as Array<{ description: string; local: E | null; localAt?: number; incoming: E; result: Merge; expected: E | null }>)("$description", ({ local, localAt, incoming, result, expected }) => {
    const store = new EntryStore(100);
    if (local) expect(merge(store, "10.0.0.1", local, localAt ?? NOW)).toBe(Merge.New);
    expect(merge(store, "10.0.0.1", incoming)).toBe(result);
    expect(binding(store, "10.0.0.1")).toEqual(expected);
  });

  it("converges on one binding whatever order the entries arrive in (random sets, random orders)", () => {
    let seed = 42;
    const rnd = (n: number) => {
      seed = (seed * 1103515245 + 12345) & 0x7fffffff;
      return seed % n;
    };
    for (let round = 0; round < 300; round++) {
      const set: E[] = [];
      const n = 2 + rnd(6);
      for (let i = 0; i < n; i++) {
        const created = NOW - 5000 + rnd(4) * 10;
        set.push({ backend: `b${rnd(3)}`, creator: `n${rnd(3)}`, gen: rnd(3), created, lastUsed: created + rnd(3000) });
      }
      const outcomes = new Set<string>();
      for (let order = 0; order < 12; order++) {
        const shuffled = [...set];
        for (let i = shuffled.length - 1; i > 0; i--) {
          const j = rnd(i + 1);
          [shuffled[i], shuffled[j]] = [shuffled[j], shuffled[i]];
        }
        const store = new EntryStore(10);
        for (const e of shuffled) merge(store, "10.0.0.1", e);
        const b = binding(store, "10.0.0.1")!;
        outcomes.add(`${b.backend}|${b.gen}|${b.created}|${b.creator}`);
      }
      expect([...outcomes], `round ${round}: ${JSON.stringify(set)}`).toHaveLength(1);
    }
  });
});

describe("EntryStore capacity and expiry", () => {
  it("evicts the least recently used entry at maxEntries, and counts it", () => {
    const store = new EntryStore(3);
    const t = store.ensureTable("web");
    const b = store.names.intern("x");
    const evicted: string[] = [];
    store.onEvict = (slot) => evicted.push(store.ip(slot));
    for (const [i, ip] of ["1.0.0.1", "1.0.0.2", "1.0.0.3"].entries()) store.insert(t, ip, b, 0, 0, NOW + i, NOW + i);
    // A use of the oldest moves it to the front: the second-oldest goes first.
    store.use(store.find(t, "1.0.0.1"), NOW + 10);
    store.insert(t, "1.0.0.4", b, 0, 0, NOW + 11, NOW + 11);
    expect(evicted).toEqual(["1.0.0.2"]);
    expect(ipsOf(store, t)).toEqual(["1.0.0.1", "1.0.0.3", "1.0.0.4"]);
    store.insert(t, "1.0.0.5", b, 0, 0, NOW + 12, NOW + 12);
    expect(evicted).toEqual(["1.0.0.2", "1.0.0.3"]);
    expect(store.evictions).toBe(2);
    expect(store.count).toBe(3);
    expect([...store.lruOrder()].map((s) => store.ip(s))).toEqual(["1.0.0.1", "1.0.0.4", "1.0.0.5"]);
  });

  it("one cap and one LRU list across services", () => {
    const store = new EntryStore(2);
    const web = store.ensureTable("web");
    const dns = store.ensureTable("dns");
    const b = store.names.intern("x");
    store.insert(web, "1.0.0.1", b, 0, 0, NOW, NOW);
    store.insert(dns, "1.0.0.1", b, 0, 0, NOW + 1, NOW + 1);
    store.insert(dns, "1.0.0.2", b, 0, 0, NOW + 2, NOW + 2);
    expect(web.size).toBe(0);
    expect(dns.size).toBe(2);
  });

  it("sweep removes entries past TTL + grace and every entry of services that are gone", () => {
    const store = new EntryStore(100);
    const web = store.ensureTable("web");
    const old = store.ensureTable("old");
    const b = store.names.intern("x");
    store.insert(web, "1.0.0.1", b, 0, 0, NOW - GRACE, NOW - GRACE);
    store.insert(web, "1.0.0.2", b, 0, 0, NOW - TTL, NOW - TTL);
    store.insert(old, "1.0.0.3", b, 0, 0, NOW, NOW);
    const removed = store.sweep(NOW, (t) => (t.name === "web" ? TTL : null));
    expect(removed).toBe(2);
    expect(ipsOf(store, web)).toEqual(["1.0.0.2"]);
    expect(old.size).toBe(0);
    expect(store.count).toBe(1);
  });

  it("grows past its initial capacity and reuses freed slots", () => {
    const store = new EntryStore(10_000);
    const t = store.ensureTable("web");
    const b = store.names.intern("x");
    for (let i = 0; i < 5000; i++) store.insert(t, `10.0.${i >> 8}.${i & 255}`, b, 0, 0, NOW, NOW + i);
    expect(store.count).toBe(5000);
    for (let i = 0; i < 5000; i++) expect(store.lastUsed(store.find(t, `10.0.${i >> 8}.${i & 255}`))).toBe(NOW + i);
    const high = store.highWater;
    store.remove(store.find(t, "10.0.0.7"));
    store.insert(t, "192.168.0.1", b, 0, 0, NOW, NOW);
    expect(store.highWater).toBe(high);
    expect(store.count).toBe(5000);
  });
});

describe("client addresses", () => {
  it.each([
    { ip: "0.0.0.0", v4: 0 },
    { ip: "10.0.0.1", v4: 0x0a000001 },
    { ip: "255.255.255.255", v4: 0xffffffff },
    { ip: "127.0.0.10", v4: 0x7f00000a },
    { ip: "01.2.3.4", v4: -1 },
    { ip: "1.2.3", v4: -1 },
    { ip: "1.2.3.4.5", v4: -1 },
    { ip: "256.0.0.1", v4: -1 },
    { ip: "1..2.3", v4: -1 },
    { ip: "::1", v4: -1 },
    { ip: "::ffff:10.0.0.1", v4: -1 },
  ])("the shared parseIPv4($ip) = $v4, and formatIpv4 reverses it", ({ ip, v4 }) => {
    expect(parseIPv4(ip)).toBe(v4);
    if (v4 >= 0) expect(formatIpv4(v4 | 0)).toBe(ip);
  });

  it("keeps IPv4 and IPv6 clients apart and finds each after many inserts and removals (index deletion keeps probe runs intact)", () => {
    const store = new EntryStore(100_000);
    const t = store.ensureTable("web");
    const b = store.names.intern("x");
    const ips: string[] = [];
    for (let i = 0; i < 20_000; i++) ips.push(i % 5 === 0 ? `2001:db8::${i.toString(16)}` : `10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}`);
    ips.push("::ffff:192.168.1.1", "192.168.1.1");
    for (const ip of ips) store.insert(t, ip, b, 0, 0, NOW, NOW);
    expect(t.size).toBe(ips.length);
    // Remove every third, then check every address is found (or not) exactly as expected.
    for (let i = 0; i < ips.length; i += 3) store.remove(store.find(t, ips[i]));
    for (let i = 0; i < ips.length; i++) {
      const slot = store.find(t, ips[i]);
      if (i % 3 === 0) expect(slot, ips[i]).toBe(-1);
      else expect(store.ip(slot)).toBe(ips[i]);
    }
    expect(t.size).toBe(ips.length - Math.ceil(ips.length / 3));
  });
});
