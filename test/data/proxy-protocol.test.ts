// Golden bytes for the PROXY protocol headers we send to backends, worked out by hand from HAProxy's
// doc/proxy-protocol.txt (and one captured from HAProxy itself), plus round trips through the parser.
import { describe, expect, it } from "vitest";
import { formatIPv6, parseProxyHeader, proxyV1Header, proxyV2Header } from "../../node/data/proxy-protocol.js";

const SIG = "0d0a0d0a000d0a515549540a";

describe("proxyV1Header", () => {
  const cases: { description: string; input: [string, number, string, number]; expected: string }[] = [
    {
      description: "TCP4 (the spec's own example)",
      input: ["192.168.0.1", 56324, "192.168.0.11", 443],
      expected: "PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n",
    },
    {
      description: "TCP6",
      input: ["2001:db8::1", 51000, "2001:db8::2", 443],
      expected: "PROXY TCP6 2001:db8::1 2001:db8::2 51000 443\r\n",
    },
    {
      description: "IPv4-mapped on both sides (dual-stack socket) is written as TCP4",
      input: ["::ffff:10.1.2.3", 40000, "::ffff:10.0.0.1", 80],
      expected: "PROXY TCP4 10.1.2.3 10.0.0.1 40000 80\r\n",
    },
    {
      description: "IPv4-mapped next to plain IPv4 is written as TCP4",
      input: ["::ffff:10.1.2.3", 40000, "10.0.0.1", 80],
      expected: "PROXY TCP4 10.1.2.3 10.0.0.1 40000 80\r\n",
    },
    {
      description: "IPv4-mapped in hex groups is recognised too",
      input: ["::ffff:a01:203", 40000, "10.0.0.1", 80],
      expected: "PROXY TCP4 10.1.2.3 10.0.0.1 40000 80\r\n",
    },
    {
      description: "IPv4-mapped next to genuine IPv6 stays IPv6 (mapped form)",
      input: ["::ffff:1.2.3.4", 40000, "2001:db8::1", 80],
      expected: "PROXY TCP6 ::ffff:1.2.3.4 2001:db8::1 40000 80\r\n",
    },
    {
      description: "zone index dropped, long text rewritten in RFC 5952 form",
      input: ["fe80::1%eth0", 1, "2001:0db8:0000:0000:0000:0000:255.255.255.255", 2],
      expected: "PROXY TCP6 fe80::1 2001:db8::ffff:ffff 1 2\r\n",
    },
    {
      description: "IPv6 text of 39 characters or less passes through as given",
      input: ["0000:0000:0000:0000:0000:0000:0000:0001", 1, "2001:DB8::1", 2],
      expected: "PROXY TCP6 0000:0000:0000:0000:0000:0000:0000:0001 2001:DB8::1 1 2\r\n",
    },
    {
      description: "ports 0 and 65535 are valid",
      input: ["1.2.3.4", 0, "5.6.7.8", 65535],
      expected: "PROXY TCP4 1.2.3.4 5.6.7.8 0 65535\r\n",
    },
    {
      description: "plain IPv4 next to genuine IPv6 → UNKNOWN",
      input: ["10.1.2.3", 40000, "2001:db8::1", 80],
      expected: "PROXY UNKNOWN\r\n",
    },
    {
      description: "unparsable source → UNKNOWN",
      input: ["not-an-ip", 40000, "10.0.0.1", 80],
      expected: "PROXY UNKNOWN\r\n",
    },
    {
      description: "empty destination → UNKNOWN",
      input: ["10.1.2.3", 40000, "", 80],
      expected: "PROXY UNKNOWN\r\n",
    },
    {
      description: "port out of range → UNKNOWN",
      input: ["10.1.2.3", 65536, "10.0.0.1", 80],
      expected: "PROXY UNKNOWN\r\n",
    },
  ];
  it.each(cases)("$description", ({ input, expected }) => {
    const buf = proxyV1Header(...input);
    expect(buf.toString("latin1")).toBe(expected);
    expect(buf.length).toBeLessThanOrEqual(107);
  });

  it("keeps the longest possible TCP6 line within the spec's 107 bytes", () => {
    const max = "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255";
    const line = proxyV1Header(max, 65535, max, 65535);
    expect(line.toString("latin1")).toBe(
      "PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n",
    );
    expect(line.length).toBe(104);
  });
});

describe("proxyV2Header", () => {
  const cases: {
    description: string;
    input: [string, number, string, number, "tcp" | "udp"];
    expected: string;
  }[] = [
    {
      // The same bytes HAProxy sent for this connection (captured in seriousben/experiment-proxy-protocol).
      description: "TCP4: 172.19.0.1:42578 → 172.19.0.3:80",
      input: ["172.19.0.1", 42578, "172.19.0.3", 80, "tcp"],
      expected: SIG + "21" + "11" + "000c" + "ac130001" + "ac130003" + "a652" + "0050",
    },
    {
      description: "TCP4 from IPv4-mapped addresses",
      input: ["::ffff:172.19.0.1", 42578, "::ffff:172.19.0.3", 80, "tcp"],
      expected: SIG + "21" + "11" + "000c" + "ac130001" + "ac130003" + "a652" + "0050",
    },
    {
      description: "UDP4: 10.0.0.1:5353 → 10.0.0.2:53",
      input: ["10.0.0.1", 5353, "10.0.0.2", 53, "udp"],
      expected: SIG + "21" + "12" + "000c" + "0a000001" + "0a000002" + "14e9" + "0035",
    },
    {
      description: "TCP6: [2001:db8::1]:51000 → [2001:db8::2]:443",
      input: ["2001:db8::1", 51000, "2001:db8::2", 443, "tcp"],
      expected:
        SIG +
        "21" +
        "21" +
        "0024" +
        "20010db8000000000000000000000001" +
        "20010db8000000000000000000000002" +
        "c738" +
        "01bb",
    },
    {
      description: "UDP6: [::1]:1 → [fe80::a:b]:65535",
      input: ["::1", 1, "fe80::a:b", 65535, "udp"],
      expected:
        SIG +
        "21" +
        "22" +
        "0024" +
        "00000000000000000000000000000001" +
        "fe80" + "00000000000000000000" + "000a000b" +
        "0001" +
        "ffff",
    },
    {
      description: "IPv4-mapped next to genuine IPv6 → TCP6 with the mapped address",
      input: ["::ffff:1.2.3.4", 40000, "2001:db8::1", 80, "tcp"],
      expected:
        SIG +
        "21" +
        "21" +
        "0024" +
        "00000000000000000000ffff01020304" +
        "20010db8000000000000000000000001" +
        "9c40" +
        "0050",
    },
    {
      description: "plain IPv4 next to genuine IPv6 → LOCAL, AF_UNSPEC, no addresses",
      input: ["10.1.2.3", 40000, "2001:db8::1", 80, "tcp"],
      expected: SIG + "20" + "00" + "0000",
    },
    {
      description: "unparsable address over UDP → LOCAL, AF_UNSPEC",
      input: ["garbage", 40000, "10.0.0.1", 80, "udp"],
      expected: SIG + "20" + "00" + "0000",
    },
    {
      description: "non-integer port → LOCAL, AF_UNSPEC",
      input: ["10.1.2.3", 1.5, "10.0.0.1", 80, "tcp"],
      expected: SIG + "20" + "00" + "0000",
    },
  ];
  it.each(cases)("$description", ({ input, expected }) => {
    expect(proxyV2Header(...input).toString("hex")).toBe(expected);
  });

  it("returns a fresh buffer for LOCAL, so a caller writing into it cannot corrupt the next one", () => {
    const a = proxyV2Header("x", 1, "y", 2, "tcp");
    a.fill(0);
    expect(proxyV2Header("x", 1, "y", 2, "tcp").toString("hex")).toBe(SIG + "20000000");
  });
});

describe("formatIPv6", () => {
  const cases: { description: string; input: number[]; expected: string }[] = [
    { description: "all zero", input: [0, 0, 0, 0, 0, 0, 0, 0], expected: "::" },
    { description: "loopback", input: [0, 0, 0, 0, 0, 0, 0, 1], expected: "::1" },
    { description: "trailing zeros", input: [0x2001, 0xdb8, 0, 0, 0, 0, 0, 0], expected: "2001:db8::" },
    { description: "a single zero group is not compressed", input: [1, 0, 2, 3, 4, 5, 6, 7], expected: "1:0:2:3:4:5:6:7" },
    { description: "longest run wins", input: [1, 0, 0, 2, 0, 0, 0, 3], expected: "1:0:0:2::3" },
    { description: "first of equal runs wins", input: [1, 0, 0, 2, 3, 0, 0, 4], expected: "1::2:3:0:0:4" },
    { description: "mapped IPv4", input: [0, 0, 0, 0, 0, 0xffff, 0x0a01, 0x0203], expected: "::ffff:10.1.2.3" },
  ];
  it.each(cases)("$description", ({ input, expected }) => {
    expect(formatIPv6(Uint16Array.from(input))).toBe(expected);
  });
});

describe("parseProxyHeader", () => {
  const roundTrips: {
    description: string;
    input: { version: 1 | 2; src: string; srcPort: number; dst: string; dstPort: number; transport: "tcp" | "udp" };
    expected: { local: boolean; src: string; dst: string; length: number };
  }[] = [
    {
      description: "v1 TCP4",
      input: { version: 1, src: "192.168.0.1", srcPort: 56324, dst: "192.168.0.11", dstPort: 443, transport: "tcp" },
      expected: { local: false, src: "192.168.0.1", dst: "192.168.0.11", length: 47 },
    },
    {
      description: "v1 TCP6",
      input: { version: 1, src: "2001:db8::1", srcPort: 51000, dst: "2001:db8::2", dstPort: 443, transport: "tcp" },
      expected: { local: false, src: "2001:db8::1", dst: "2001:db8::2", length: 46 },
    },
    {
      description: "v1 mapped comes back as plain IPv4",
      input: { version: 1, src: "::ffff:10.1.2.3", srcPort: 1000, dst: "::ffff:10.0.0.1", dstPort: 80, transport: "tcp" },
      expected: { local: false, src: "10.1.2.3", dst: "10.0.0.1", length: 38 },
    },
    {
      description: "v1 UNKNOWN",
      input: { version: 1, src: "10.1.2.3", srcPort: 1000, dst: "2001:db8::1", dstPort: 80, transport: "tcp" },
      expected: { local: true, src: "", dst: "", length: 15 },
    },
    {
      description: "v2 TCP4",
      input: { version: 2, src: "172.19.0.1", srcPort: 42578, dst: "172.19.0.3", dstPort: 80, transport: "tcp" },
      expected: { local: false, src: "172.19.0.1", dst: "172.19.0.3", length: 28 },
    },
    {
      description: "v2 UDP4",
      input: { version: 2, src: "10.0.0.1", srcPort: 5353, dst: "10.0.0.2", dstPort: 53, transport: "udp" },
      expected: { local: false, src: "10.0.0.1", dst: "10.0.0.2", length: 28 },
    },
    {
      description: "v2 TCP6",
      input: { version: 2, src: "2001:db8::1", srcPort: 51000, dst: "2001:db8::2", dstPort: 443, transport: "tcp" },
      expected: { local: false, src: "2001:db8::1", dst: "2001:db8::2", length: 52 },
    },
    {
      description: "v2 UDP6 with a mapped source",
      input: { version: 2, src: "::ffff:1.2.3.4", srcPort: 53, dst: "2001:db8::53", dstPort: 53, transport: "udp" },
      expected: { local: false, src: "::ffff:1.2.3.4", dst: "2001:db8::53", length: 52 },
    },
    {
      description: "v2 LOCAL",
      input: { version: 2, src: "garbage", srcPort: 1, dst: "10.0.0.1", dstPort: 2, transport: "tcp" },
      expected: { local: true, src: "", dst: "", length: 16 },
    },
  ];
  it.each(roundTrips)("round trip: $description", ({ input, expected }) => {
    const header =
      input.version === 1
        ? proxyV1Header(input.src, input.srcPort, input.dst, input.dstPort)
        : proxyV2Header(input.src, input.srcPort, input.dst, input.dstPort, input.transport);
    const payload = Buffer.from("GET / HTTP/1.0\r\n\r\n");
    const parsed = parseProxyHeader(Buffer.concat([header, payload]));
    expect(parsed).not.toBeNull();
    expect(parsed!.version).toBe(input.version);
    expect(parsed!.local).toBe(expected.local);
    expect(parsed!.src).toBe(expected.src);
    expect(parsed!.dst).toBe(expected.dst);
    expect(parsed!.length).toBe(expected.length);
    expect(parsed!.length).toBe(header.length);
    if (!expected.local) {
      expect(parsed!.srcPort).toBe(input.srcPort);
      expect(parsed!.dstPort).toBe(input.dstPort);
      expect(parsed!.transport).toBe(input.transport);
    }
  });

  it("skips v2 TLVs: length covers them", () => {
    const header = proxyV2Header("10.0.0.1", 1, "10.0.0.2", 2, "tcp");
    const tlv = Buffer.from("0400020000", "hex"); // PP2_TYPE_NOOP, length 2
    header.writeUInt16BE(12 + tlv.length, 14);
    const parsed = parseProxyHeader(Buffer.concat([header, tlv, Buffer.from("data")]));
    expect(parsed).toMatchObject({ version: 2, src: "10.0.0.1", dst: "10.0.0.2", length: 16 + 12 + 5 });
  });

  const invalid: { description: string; input: Buffer; expected: null }[] = [
    { description: "empty", input: Buffer.alloc(0), expected: null },
    { description: "plain HTTP", input: Buffer.from("GET / HTTP/1.1\r\n\r\n"), expected: null },
    { description: "v1 without CRLF yet", input: Buffer.from("PROXY TCP4 1.2.3.4 5.6.7.8 1 2"), expected: null },
    { description: "v1 CRLF past 107 bytes", input: Buffer.from(`PROXY UNKNOWN ${"x".repeat(100)}\r\n`), expected: null },
    { description: "v1 TCP4 with an IPv6 address", input: Buffer.from("PROXY TCP4 ::1 5.6.7.8 1 2\r\n"), expected: null },
    { description: "v1 TCP6 with an IPv4 address", input: Buffer.from("PROXY TCP6 1.2.3.4 ::1 1 2\r\n"), expected: null },
    { description: "v1 port out of range", input: Buffer.from("PROXY TCP4 1.2.3.4 5.6.7.8 1 70000\r\n"), expected: null },
    { description: "v1 missing field", input: Buffer.from("PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n"), expected: null },
    { description: "v1 unknown protocol", input: Buffer.from("PROXY SCTP4 1.2.3.4 5.6.7.8 1 2\r\n"), expected: null },
    { description: "v2 truncated address block", input: Buffer.from(`${SIG}2111000cac130001`, "hex"), expected: null },
    { description: "v2 wrong version", input: Buffer.from(`${SIG}11000000`, "hex"), expected: null },
    { description: "v2 unknown command", input: Buffer.from(`${SIG}22000000`, "hex"), expected: null },
    { description: "v2 unknown family", input: Buffer.from(`${SIG}21410000`, "hex"), expected: null },
    {
      description: "v2 TCP4 with an address block too short for it",
      input: Buffer.from(`${SIG}21110004ac130001`, "hex"),
      expected: null,
    },
  ];
  it.each(invalid)("null for $description", ({ input, expected }) => {
    expect(parseProxyHeader(input)).toBe(expected);
  });
});
