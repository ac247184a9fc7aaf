// Access rules and per-source rate limiting: CIDR boundaries in both families, IPv4-mapped IPv6,
// deny-wins, inputs that must not throw, and the limiter's bucket arithmetic on an explicit clock.
import { isIPv4, isIPv6 } from "node:net";
import { describe, expect, it } from "vitest";
import { SourceRateLimiter } from "../../node/data/rate-limit.js";
import { AccessPolicy, CidrList } from "../../node/model/access.js";
import { parseIPv4, parseIPv6 } from "../../shared/ip.js";

describe("parseIPv4 / parseIPv6 agree with node:net", () => {
  const inputs = [
    "0.0.0.0", "255.255.255.255", "10.1.2.3", "1.2.3.04", "256.1.1.1", "1.2.3", "1.2.3.4.5", "1..2.3", ".1.2.3",
    "1.2.3.", "", "a.b.c.d", " 1.2.3.4", "1.2.3.4 ", "01.2.3.4", "0.0.0.00",
    "::", "::1", "1::", "1:2:3:4:5:6:7:8", "1:2:3:4:5:6:7::8", "1::2:3:4:5:6:7:8", "1:2:3:4:5:6::7", "::1:2:3:4:5:6:7",
    "1:2:3:4:5:6:7:8:9", ":::", "1:::2", ":1::", "1::2::3", "1:", ":1", "12345::", "fffff::", "FFFF::", "abcd:EF01::",
    "::ffff:1.2.3.4", "::ffff:1.2.3.04", "::1.2.3.4", "1:2:3:4:5:6:1.2.3.4", "1:2:3:4:5:6:7:1.2.3.4", "::1.2.3.4:5",
    "1.2.3.4::", "::ffff:1.2.3", "g::1", "2001:db8::/32", "[::1]", "::ffff:256.1.1.1",
    "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255", "0000:0000:0000:0000:0000:0000:0000:0001",
  ];
  it.each(inputs.map((input) => ({ description: JSON.stringify(input), input })))("$description", ({ input }) => {
    expect(parseIPv4(input) >= 0).toBe(isIPv4(input));
    expect(parseIPv6(input, new Uint16Array(8))).toBe(isIPv6(input));
  });

  it("reads values, not just validity", () => {
    expect(parseIPv4("255.255.255.255")).toBe(0xffffffff);
    expect(parseIPv4("10.1.2.3")).toBe(0x0a010203);
    const g = new Uint16Array(8);
    expect(parseIPv6("2001:db8::1:0:0:2", g)).toBe(true);
    expect(Array.from(g)).toEqual([0x2001, 0xdb8, 0, 0, 1, 0, 0, 2]);
    expect(parseIPv6("::ffff:10.1.2.3", g)).toBe(true);
    expect(Array.from(g)).toEqual([0, 0, 0, 0, 0, 0xffff, 0x0a01, 0x0203]);
    expect(parseIPv6("fe80::1%eth0", g)).toBe(true);
    expect(Array.from(g)).toEqual([0xfe80, 0, 0, 0, 0, 0, 0, 1]);
  });
});

describe("CidrList.contains", () => {
  const cases: { description: string; input: { rules: string[]; ip: unknown }; expected: boolean }[] = [
    // IPv4 boundaries
    { description: "/0 holds every IPv4", input: { rules: ["0.0.0.0/0"], ip: "255.255.255.255" }, expected: true },
    { description: "/0 holds 0.0.0.0", input: { rules: ["0.0.0.0/0"], ip: "0.0.0.0" }, expected: true },
    { description: "IPv4 /0 does not hold IPv6", input: { rules: ["0.0.0.0/0"], ip: "2001:db8::1" }, expected: false },
    { description: "/8 first address", input: { rules: ["10.0.0.0/8"], ip: "10.0.0.0" }, expected: true },
    { description: "/8 last address", input: { rules: ["10.0.0.0/8"], ip: "10.255.255.255" }, expected: true },
    { description: "/8 one below", input: { rules: ["10.0.0.0/8"], ip: "9.255.255.255" }, expected: false },
    { description: "/8 one above", input: { rules: ["10.0.0.0/8"], ip: "11.0.0.0" }, expected: false },
    { description: "/32 itself", input: { rules: ["192.168.1.5/32"], ip: "192.168.1.5" }, expected: true },
    { description: "/32 neighbour", input: { rules: ["192.168.1.5/32"], ip: "192.168.1.4" }, expected: false },
    { description: "bare address is /32", input: { rules: ["192.168.1.5"], ip: "192.168.1.5" }, expected: true },
    { description: "bare address neighbour", input: { rules: ["192.168.1.5"], ip: "192.168.1.6" }, expected: false },
    { description: "/31 low", input: { rules: ["192.168.1.4/31"], ip: "192.168.1.4" }, expected: true },
    { description: "/31 high", input: { rules: ["192.168.1.4/31"], ip: "192.168.1.5" }, expected: true },
    { description: "/31 past the end", input: { rules: ["192.168.1.4/31"], ip: "192.168.1.6" }, expected: false },
    { description: "top of the IPv4 space", input: { rules: ["255.255.255.254/31"], ip: "255.255.255.255" }, expected: true },
    // IPv6 boundaries
    { description: "::/0 holds IPv6", input: { rules: ["::/0"], ip: "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff" }, expected: true },
    { description: "::/0 does not hold IPv4", input: { rules: ["::/0"], ip: "10.1.2.3" }, expected: false },
    { description: "::/0 does not hold mapped IPv4", input: { rules: ["::/0"], ip: "::ffff:10.1.2.3" }, expected: false },
    { description: "/32 first", input: { rules: ["2001:db8::/32"], ip: "2001:db8::" }, expected: true },
    { description: "/32 last", input: { rules: ["2001:db8::/32"], ip: "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff" }, expected: true },
    { description: "/32 one above", input: { rules: ["2001:db8::/32"], ip: "2001:db9::" }, expected: false },
    { description: "/32 one below", input: { rules: ["2001:db8::/32"], ip: "2001:db7:ffff:ffff:ffff:ffff:ffff:ffff" }, expected: false },
    { description: "/64 last", input: { rules: ["2001:db8:1:2::/64"], ip: "2001:db8:1:2:ffff:ffff:ffff:ffff" }, expected: true },
    { description: "/64 next subnet", input: { rules: ["2001:db8:1:2::/64"], ip: "2001:db8:1:3::" }, expected: false },
    { description: "/128 itself", input: { rules: ["2001:db8::1/128"], ip: "2001:db8::1" }, expected: true },
    { description: "/128 neighbour", input: { rules: ["2001:db8::1/128"], ip: "2001:db8::2" }, expected: false },
    { description: "bare ::1 is /128", input: { rules: ["::1"], ip: "::1" }, expected: true },
    { description: "bare ::1 neighbour", input: { rules: ["::1"], ip: "::2" }, expected: false },
    { description: "/127 across a word boundary", input: { rules: ["::ffff:fffe/127"], ip: "::ffff:ffff" }, expected: true },
    { description: "/33 across a word boundary", input: { rules: ["2001:db8:8000::/33"], ip: "2001:db8:7fff::" }, expected: false },
    { description: "uppercase and zone in the address", input: { rules: ["fe80::/10"], ip: "FE80::1%eth0" }, expected: true },
    // IPv4-mapped IPv6
    { description: "mapped address matches an IPv4 rule", input: { rules: ["10.0.0.0/8"], ip: "::ffff:10.1.2.3" }, expected: true },
    { description: "mapped outside the IPv4 rule", input: { rules: ["10.0.0.0/8"], ip: "::ffff:11.1.2.3" }, expected: false },
    { description: "mapped in hex groups", input: { rules: ["10.0.0.0/8"], ip: "::ffff:a01:203" }, expected: true },
    { description: "mapped rule matches plain IPv4", input: { rules: ["::ffff:10.0.0.0/104"], ip: "10.1.2.3" }, expected: true },
    { description: "mapped rule /96 is all IPv4", input: { rules: ["::ffff:0:0/96"], ip: "1.2.3.4" }, expected: true },
    { description: "mapped bare rule is one IPv4 address", input: { rules: ["::ffff:1.2.3.4"], ip: "1.2.3.4" }, expected: true },
    { description: "IPv4 rule does not hold ::a01:203", input: { rules: ["10.0.0.0/8"], ip: "::a01:203" }, expected: false },
    // many rules: sorted, merged, searched
    {
      description: "overlapping and nested rules",
      input: { rules: ["10.0.0.0/8", "10.1.0.0/16", "192.168.0.0/24", "192.168.1.0/24", "2001:db8::/32", "2001:db8:1::/48", "::1"], ip: "192.168.1.255" },
      expected: true,
    },
    {
      description: "gap between merged rules",
      input: { rules: ["192.168.0.0/24", "192.168.2.0/24", "10.0.0.0/8"], ip: "192.168.1.1" },
      expected: false,
    },
    {
      description: "IPv6 inside a nested range",
      input: { rules: ["2001:db8:1::/48", "2001:db8::/32", "fe80::/10"], ip: "2001:db8:ffff::1" },
      expected: true,
    },
    {
      description: "IPv6 between ranges",
      input: { rules: ["2001:db8::/32", "fe80::/10", "::1"], ip: "2002::1" },
      expected: false,
    },
    { description: "empty list holds nothing", input: { rules: [], ip: "10.1.2.3" }, expected: false },
    // garbage: false, no throw
    { description: "empty string", input: { rules: ["0.0.0.0/0", "::/0"], ip: "" }, expected: false },
    { description: "undefined", input: { rules: ["0.0.0.0/0", "::/0"], ip: undefined }, expected: false },
    { description: "a number", input: { rules: ["0.0.0.0/0", "::/0"], ip: 167838211 }, expected: false },
    { description: "null", input: { rules: ["0.0.0.0/0", "::/0"], ip: null }, expected: false },
    { description: "hostname", input: { rules: ["0.0.0.0/0", "::/0"], ip: "localhost" }, expected: false },
    { description: "CIDR as address", input: { rules: ["0.0.0.0/0", "::/0"], ip: "10.0.0.0/8" }, expected: false },
    { description: "octet over 255", input: { rules: ["0.0.0.0/0", "::/0"], ip: "10.0.0.256" }, expected: false },
    { description: "bracketed IPv6", input: { rules: ["0.0.0.0/0", "::/0"], ip: "[::1]" }, expected: false },
    { description: "host:port", input: { rules: ["0.0.0.0/0", "::/0"], ip: "10.0.0.1:80" }, expected: false },
    { description: "two ::", input: { rules: ["0.0.0.0/0", "::/0"], ip: "1::2::3" }, expected: false },
    { description: "very long", input: { rules: ["0.0.0.0/0", "::/0"], ip: "1:".repeat(10_000) }, expected: false },
  ];
  it.each(cases)("$description", ({ input, expected }) => {
    const list = new CidrList(input.rules);
    expect(list.contains(input.ip as string)).toBe(expected);
  });
});

describe("CidrList rejects bad rules at build time, naming the entry", () => {
  const cases: { description: string; input: string[]; expected: string }[] = [
    { description: "prefix over 32", input: ["10.0.0.0/8", "10.0.0.0/33"], expected: 'cidr[1]: invalid CIDR "10.0.0.0/33": prefix length 33 is over 32' },
    { description: "prefix over 128", input: ["2001:db8::/129"], expected: 'cidr[0]: invalid CIDR "2001:db8::/129": prefix length 129 is over 128' },
    { description: "host bits set (IPv4)", input: ["10.0.0.1/8"], expected: 'cidr[0]: invalid CIDR "10.0.0.1/8": address has bits set past the /8 prefix' },
    { description: "host bits set (IPv6)", input: ["2001:db8::1/64"], expected: 'cidr[0]: invalid CIDR "2001:db8::1/64": address has bits set past the /64 prefix' },
    { description: "not an address", input: ["example.com"], expected: 'cidr[0]: invalid CIDR "example.com": not an IPv4 or IPv6 address' },
    { description: "empty prefix", input: ["10.0.0.0/"], expected: 'cidr[0]: invalid CIDR "10.0.0.0/": prefix length must be a number' },
    { description: "negative prefix", input: ["10.0.0.0/-1"], expected: 'cidr[0]: invalid CIDR "10.0.0.0/-1": prefix length must be a number' },
    { description: "two slashes", input: ["10.0.0.0/8/8"], expected: 'cidr[0]: invalid CIDR "10.0.0.0/8/8": prefix length must be a number' },
    { description: "zone index", input: ["fe80::1%eth0"], expected: 'cidr[0]: invalid CIDR "fe80::1%eth0": zone index not allowed' },
    { description: "empty string", input: [""], expected: 'cidr[0]: invalid CIDR "": not an IPv4 or IPv6 address' },
    { description: "not a string", input: [42 as unknown as string], expected: "cidr[0]: invalid CIDR 42: not a string" },
  ];
  it.each(cases)("$description", ({ input, expected }) => {
    expect(() => new CidrList(input)).toThrow(expected);
  });

  it("the policy names its field", () => {
    expect(() => new AccessPolicy(["10.0.0.0/8"], ["1.2.3.4/40"])).toThrow('access.deny[0]: invalid CIDR "1.2.3.4/40"');
    expect(() => new AccessPolicy(["nope"], [], "services.web.access")).toThrow('services.web.access.allow[0]: invalid CIDR "nope"');
  });
});

describe("AccessPolicy", () => {
  const cases: { description: string; input: { allow: string[]; deny: string[]; ip: string | undefined }; expected: string }[] = [
    { description: "no rules allows all", input: { allow: [], deny: [], ip: "10.1.2.3" }, expected: "allowed" },
    { description: "no rules allows even an unreadable address", input: { allow: [], deny: [], ip: undefined }, expected: "allowed" },
    { description: "empty allow: not denied is allowed", input: { allow: [], deny: ["10.0.0.0/8"], ip: "192.168.1.1" }, expected: "allowed" },
    { description: "empty allow: denied is denied", input: { allow: [], deny: ["10.0.0.0/8"], ip: "10.1.2.3" }, expected: "denied" },
    { description: "deny wins over allow", input: { allow: ["10.0.0.0/8"], deny: ["10.1.0.0/16"], ip: "10.1.2.3" }, expected: "denied" },
    { description: "allowed and not denied", input: { allow: ["10.0.0.0/8"], deny: ["10.1.0.0/16"], ip: "10.2.0.1" }, expected: "allowed" },
    { description: "outside the allow list", input: { allow: ["10.0.0.0/8"], deny: [], ip: "11.0.0.1" }, expected: "not-allowed" },
    { description: "deny wins for mapped IPv6", input: { allow: ["0.0.0.0/0"], deny: ["10.0.0.0/8"], ip: "::ffff:10.1.2.3" }, expected: "denied" },
    { description: "IPv6 allow list", input: { allow: ["2001:db8::/32"], deny: [], ip: "2001:db8::5" }, expected: "allowed" },
    { description: "IPv4-only allow list turns away IPv6", input: { allow: ["10.0.0.0/8"], deny: [], ip: "2001:db8::5" }, expected: "not-allowed" },
    { description: "garbage with a deny list", input: { allow: [], deny: ["10.0.0.0/8"], ip: "garbage" }, expected: "unreadable-address" },
    { description: "undefined with an allow list", input: { allow: ["0.0.0.0/0"], deny: [], ip: undefined }, expected: "unreadable-address" },
  ];
  it.each(cases)("$description", ({ input, expected }) => {
    const policy = new AccessPolicy(input.allow, input.deny);
    expect(policy.decide(input.ip)).toBe(expected);
    expect(policy.permits(input.ip)).toBe(expected === "allowed");
  });
});

describe("SourceRateLimiter", () => {
  type Step = { ip: string; at: number; ok: boolean };
  const cases: { description: string; input: { rate: number; burst: number; max?: number; steps: Step[] }; expected: { size: number } }[] = [
    {
      description: "burst, then refusal, then refill at the rate",
      input: {
        rate: 10,
        burst: 3,
        steps: [
          { ip: "10.0.0.1", at: 0, ok: true },
          { ip: "10.0.0.1", at: 0, ok: true },
          { ip: "10.0.0.1", at: 0, ok: true },
          { ip: "10.0.0.1", at: 0, ok: false },
          { ip: "10.0.0.1", at: 50, ok: false }, // half a token
          { ip: "10.0.0.1", at: 100, ok: true }, // one token at 10/s
          { ip: "10.0.0.1", at: 100, ok: false },
          { ip: "10.0.0.1", at: 250, ok: true }, // 1.5 tokens
          { ip: "10.0.0.1", at: 250, ok: false }, // 0.5 left
          { ip: "10.0.0.1", at: 300, ok: true }, // 0.5 + 0.5
        ],
      },
      expected: { size: 1 },
    },
    {
      description: "refill is capped at the burst",
      input: {
        rate: 10,
        burst: 2,
        steps: [
          { ip: "10.0.0.1", at: 0, ok: true },
          { ip: "10.0.0.1", at: 0, ok: true },
          { ip: "10.0.0.1", at: 0, ok: false },
          { ip: "10.0.0.1", at: 60_000, ok: true },
          { ip: "10.0.0.1", at: 60_000, ok: true },
          { ip: "10.0.0.1", at: 60_000, ok: false },
        ],
      },
      expected: { size: 1 },
    },
    {
      description: "sources have their own buckets",
      input: {
        rate: 1,
        burst: 1,
        steps: [
          { ip: "10.0.0.1", at: 0, ok: true },
          { ip: "10.0.0.1", at: 0, ok: false },
          { ip: "10.0.0.2", at: 0, ok: true },
          { ip: "2001:db8::1", at: 0, ok: true },
          { ip: "2001:db8::1", at: 0, ok: false },
        ],
      },
      expected: { size: 3 },
    },
    {
      description: "IPv4 and its mapped form share a bucket",
      input: {
        rate: 1,
        burst: 1,
        steps: [
          { ip: "10.0.0.1", at: 0, ok: true },
          { ip: "::ffff:10.0.0.1", at: 0, ok: false },
        ],
      },
      expected: { size: 1 },
    },
    {
      description: "a clock going backwards neither refills nor drains",
      input: {
        rate: 10,
        burst: 1,
        steps: [
          { ip: "10.0.0.1", at: 1000, ok: true },
          { ip: "10.0.0.1", at: 500, ok: false },
          { ip: "10.0.0.1", at: 1100, ok: true },
        ],
      },
      expected: { size: 1 },
    },
    {
      description: "bounded: the least recently used source is evicted (and starts afresh)",
      input: {
        rate: 0.001,
        burst: 1,
        max: 3,
        steps: [
          { ip: "a", at: 0, ok: true },
          { ip: "b", at: 0, ok: true },
          { ip: "c", at: 0, ok: true },
          { ip: "a", at: 1, ok: false }, // refreshes a: b is now the oldest
          { ip: "d", at: 2, ok: true }, // evicts b
          { ip: "b", at: 3, ok: true }, // b is new again; evicts c
          { ip: "a", at: 4, ok: false }, // a kept its empty bucket
          { ip: "c", at: 5, ok: true }, // evicts d
        ],
      },
      expected: { size: 3 },
    },
    {
      description: "buckets that refilled to full are dropped as new sources arrive",
      input: {
        rate: 10,
        burst: 2, // full again 200 ms after the last take
        steps: [
          { ip: "a", at: 0, ok: true },
          { ip: "b", at: 0, ok: true },
          { ip: "c", at: 0, ok: true },
          { ip: "d", at: 1000, ok: true }, // drops a and b
          { ip: "e", at: 1000, ok: true }, // drops c
        ],
      },
      expected: { size: 2 },
    },
    {
      description: "rate 0 is unlimited and keeps no buckets",
      input: {
        rate: 0,
        burst: 1,
        steps: [
          { ip: "10.0.0.1", at: 0, ok: true },
          { ip: "10.0.0.1", at: 0, ok: true },
          { ip: "10.0.0.1", at: 0, ok: true },
        ],
      },
      expected: { size: 0 },
    },
  ];
  it.each(cases)("$description", ({ input, expected }) => {
    const limiter = new SourceRateLimiter(input.rate, input.burst, input.max);
    const got = input.steps.map((s) => ({ ...s, ok: limiter.take(s.ip, s.at) }));
    expect(got).toEqual(input.steps);
    expect(limiter.size).toBe(expected.size);
  });

  it("never holds more than maxSources buckets", () => {
    const limiter = new SourceRateLimiter(1, 5, 1000);
    for (let i = 0; i < 50_000; i++) {
      const ip = `10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}`;
      expect(limiter.take(ip, i)).toBe(true);
      if (limiter.size > 1000) throw new Error(`size ${limiter.size} after ${i + 1} sources`);
    }
    expect(limiter.size).toBe(1000);
  });

  it("aggregates IPv6 sources by network: /64 by default, configurable (issue 13, finding 16)", () => {
    const l64 = new SourceRateLimiter(1, 2);
    expect(l64.take("2001:db8:0:1::1", 0)).toBe(true);
    expect(l64.take("2001:db8:0:1::2", 0)).toBe(true);
    // The rest of the /64 shares the empty bucket, whatever the interface id.
    expect(l64.take("2001:db8:0:1:ffff:1234:5678:9abc", 0)).toBe(false);
    expect(l64.take("2001:db8:0:2::1", 0)).toBe(true); // another /64
    expect(l64.size).toBe(2);
    const l48 = new SourceRateLimiter(1, 1, 1000, 48);
    expect(l48.take("2001:db8:0:1::1", 0)).toBe(true);
    expect(l48.take("2001:db8:0:2::1", 0)).toBe(false);
    expect(l48.sourceKey("2001:db8:abcd:1::1")).toBe("2001:db8:abcd:/48");
    expect(new SourceRateLimiter(1, 1, 10, 56).sourceKey("2001:db8:abcd:12ff::1")).toBe("2001:db8:abcd:1200/56");
    // IPv4 stays per address.
    expect(l64.sourceKey("10.0.0.1")).toBe("10.0.0.1");
  });

  it("a flood of new sources does not evict the bucket of a client being limited (issue 13, finding 16)", () => {
    const limiter = new SourceRateLimiter(0.01, 3, 1000);
    for (let i = 0; i < 3; i++) expect(limiter.take("192.0.2.7", 0)).toBe(true);
    expect(limiter.take("192.0.2.7", 1)).toBe(false);
    // 100k other sources, one connection each, while no time passes for refills.
    for (let i = 0; i < 100_000; i++) limiter.take(`10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}`, 2);
    expect(limiter.size).toBeLessThanOrEqual(1000);
    expect(limiter.take("192.0.2.7", 3)).toBe(false);
  });

  it("turns away a source with no address instead of throwing", () => {
    expect(new SourceRateLimiter(1, 1).take(undefined, 0)).toBe(false);
  });

  const bad: { description: string; input: [number, number, number?]; expected: string }[] = [
    { description: "negative rate", input: [-1, 1], expected: "sourceRate must be a number >= 0, got -1" },
    { description: "NaN rate", input: [Number.NaN, 1], expected: "sourceRate must be a number >= 0, got NaN" },
    { description: "zero burst", input: [1, 0], expected: "sourceBurst must be a number >= 1, got 0" },
    { description: "zero maxSources", input: [1, 1, 0], expected: "maxSources must be an integer >= 1, got 0" },
  ];
  it.each(bad)("constructor rejects $description", ({ input, expected }) => {
    expect(() => new SourceRateLimiter(...input)).toThrow(expected);
  });
});
