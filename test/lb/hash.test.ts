import { describe, expect, it } from "vitest";
import { flowHash, hashString } from "../../node/lb/hash.js";

// Pinned: changing the hash reshuffles every Maglev table and every flow in a running cluster.
// hashString values are MurmurHash3 x86_32 of the UTF-16LE bytes, from an independent reference.
describe("hashString", () => {
  it.each([
    { input: "", seed: 0, expected: 0 },
    { input: "", seed: 1, expected: 1364076727 },
    { input: "a", seed: 0, expected: 1867108634 },
    { input: "ab", seed: 0, expected: 374890698 },
    { input: "abc", seed: 7, expected: 3629696366 },
    { input: "10.0.0.1", seed: 0, expected: 3185433682 },
    { input: "backend-1", seed: 0x12345678, expected: 3069962789 },
    { input: "héllo✓", seed: 3, expected: 2531619696 },
  ])("murmur3($input, $seed) = $expected", ({ input, seed, expected }) => {
    expect(hashString(input, seed)).toBe(expected);
  });

  it("returns unsigned 32-bit integers", () => {
    for (let i = 0; i < 1000; i++) {
      const h = hashString(`key-${i}`);
      expect(Number.isInteger(h) && h >= 0 && h <= 0xffffffff).toBe(true);
    }
  });
});

describe("flowHash", () => {
  it.each([
    { ip: "10.0.0.1", port: 0, expected: 1986673338 },
    { ip: "10.0.0.1", port: 1, expected: 644762142 },
    { ip: "10.0.0.1", port: 65535, expected: 463146489 },
    { ip: "192.168.1.20", port: 44321, expected: 531618754 },
    { ip: "2001:db8::1", port: 443, expected: 1937908826 },
  ])("flowHash($ip, $port) = $expected", ({ ip, port, expected }) => {
    expect(flowHash(ip, port)).toBe(expected);
  });

  it("spreads neighbouring ports of one client over the low bits", () => {
    const buckets = new Array<number>(16).fill(0);
    for (let port = 30000; port < 31600; port++) buckets[flowHash("10.1.2.3", port) % 16]++;
    for (const b of buckets) expect(Math.abs(b - 100)).toBeLessThan(40);
  });
});
