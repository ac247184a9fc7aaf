// The schema additions of DNS and zones: bad values fail with the field path; defaults in one place.
import { describe, expect, it } from "vitest";
import { parseServiceValue } from "../../node/control/records.js";
import { parseDnsValue } from "../../node/control/dns-record.js";
import { formatIssues, nodeConfigSchema } from "../../shared/schema.js";

const issues = (input: unknown) => {
  const r = nodeConfigSchema.safeParse(input);
  return r.success ? [] : formatIssues(r.error);
};

describe("DNS and zone settings", () => {
  it.each([
    { description: "dns.listen not address:port", input: { dns: { listen: "53" } }, expected: /^dns\.listen: expected "address:port"/ },
    { description: "a public address that is not an IP", input: { node: { publicAddresses: ["lb.example"] } }, expected: /^node\.publicAddresses\[0\]: expected an IPv4 or IPv6 address/ },
    { description: "an unknown RRL key", input: { dns: { listen: "127.0.0.1:53", rrl: { rate: 5 } } }, expected: /^dns\.rrl: unknown key\(s\) "rate"/ },
  ])("node config: $description", ({ input, expected }) => {
    expect(issues(input)[0]).toMatch(expected);
  });

  it("defaults: DNS off; RRL on at 50/s with a burst of 100 per /24 once DNS listens", () => {
    expect(nodeConfigSchema.parse({}).dns).toBeUndefined();
    expect(nodeConfigSchema.parse({ dns: { listen: "127.0.0.1:5353" } }).dns!.rrl).toEqual({ responsesPerSecond: 50, burst: 100, slip: 2, ipv4Prefix: 24, ipv6Prefix: 56, maxSources: 100_000 });
  });

  it("service locality and the dns record are validated with field paths", () => {
    expect(() => parseServiceValue("web", Buffer.from(JSON.stringify({ listen: "127.0.0.1:1", locality: "nearest" })))).toThrow(/^locality: Invalid option/);
    expect(() => parseServiceValue("web", Buffer.from(JSON.stringify({ listen: "127.0.0.1:1", zoneAware: { minHealthyShare: 0 } })))).toThrow(/^zoneAware\.minHealthyShare:/);
    expect(parseServiceValue("web", Buffer.from(JSON.stringify({ listen: "127.0.0.1:1" }))).zoneAware.minHealthyShare).toBe(0.7);
    expect(() => parseDnsValue(Buffer.from(JSON.stringify({ zone: "lb.example", clientZones: { a: ["not a cidr"] } })))).toThrow(/^clientZones\.a\[0\]: expected a CIDR/);
    expect(() => parseDnsValue(Buffer.from("{"))).toThrow(/^invalid JSON/);
    expect(parseDnsValue(Buffer.from(JSON.stringify({ zone: "lb.example" })))).toMatchObject({ ttl: 5, answers: 8 });
  });
});
