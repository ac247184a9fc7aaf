// PROXY protocol headers (HAProxy doc/proxy-protocol.txt, v1 text and v2 binary) that tell a backend the
// client's address, written once per connection toward the backend; plus a parser for tests and demo backends.
import { IP_INVALID, IP_V4, isV4Mapped, parseIPv4, readIP } from "../../shared/ip.js";

/** The v2 signature: "\r\n\r\n\0\r\nQUIT\n". */
export const PROXY_V2_SIGNATURE: Buffer = Buffer.from([
  0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a,
]);

// v2 byte 13: address family (high nibble) and transport (low nibble).
const V2_PROXY = 0x21;
const V2_LOCAL = 0x20;
const V2_TCP4 = 0x11;
const V2_UDP4 = 0x12;
const V2_TCP6 = 0x21;
const V2_UDP6 = 0x22;
const V2_UNIX_STREAM = 0x31;
const V2_UNIX_DGRAM = 0x32;
const V2_HEADER_LEN = 16;
const V2_INET_LEN = 12;
const V2_INET6_LEN = 36;
/** v1 lines are at most 107 bytes, CRLF included (spec section 2.1). */
const V1_MAX_LEN = 107;

const V1_UNKNOWN = "PROXY UNKNOWN\r\n";
// LOCAL with AF_UNSPEC and no address block, as HAProxy sends when it has no usable address pair: the
// receiver must accept it and use the connection's own endpoints (the v2 counterpart of v1 UNKNOWN).
const V2_LOCAL_HEADER: Buffer = Buffer.concat([PROXY_V2_SIGNATURE, Buffer.from([V2_LOCAL, 0x00, 0x00, 0x00])]);

// Scratch for the address pair being written: JS builds one header at a time.
const srcGroups = new Uint16Array(8);
const dstGroups = new Uint16Array(8);

const PAIR_NONE = 0;
const PAIR_V4 = 4;
const PAIR_V6 = 6;

/**
 * Reads both addresses into the scratch groups and says how the pair can be written: as IPv4 when both
 * are IPv4 or IPv4-mapped (what Node reports on dual-stack sockets), as IPv6 when both are IPv6 (a mapped
 * address next to a genuine IPv6 one stays in mapped form), otherwise not at all (plain IPv4 next to
 * genuine IPv6, an unparsable address, or a port outside 0-65535).
 */
function readPair(src: string, srcPort: number, dst: string, dstPort: number): number {
  if (!isPort(srcPort) || !isPort(dstPort)) return PAIR_NONE;
  const fs = readIP(src, srcGroups);
  const fd = readIP(dst, dstGroups);
  if (fs === IP_INVALID || fd === IP_INVALID) return PAIR_NONE;
  // readIP leaves IPv4 in mapped form, so "IPv4 or mapped" is one check.
  if (isV4Mapped(srcGroups) && isV4Mapped(dstGroups)) return PAIR_V4;
  if (fs !== IP_V4 && fd !== IP_V4) return PAIR_V6;
  return PAIR_NONE;
}

function isPort(port: number): boolean {
  return Number.isInteger(port) && port >= 0 && port <= 65535;
}

function v4Text(g: Uint16Array): string {
  return `${g[6] >>> 8}.${g[6] & 0xff}.${g[7] >>> 8}.${g[7] & 0xff}`;
}

/**
 * IPv6 text for a v1 line: the caller's text when it is already short and zone-free (Node gives the
 * compressed form), else the RFC 5952 form, so the line stays within 107 bytes.
 */
function v6Text(text: string, g: Uint16Array): string {
  return text.length <= 39 && text.indexOf("%") < 0 ? text : formatIPv6(g);
}

/** RFC 5952 text for eight 16-bit groups: lowercase, longest zero run (2+ groups) as "::", mapped as ::ffff:a.b.c.d. */
export function formatIPv6(g: Uint16Array): string {
  if (isV4Mapped(g)) return `::ffff:${v4Text(g)}`;
  let bestStart = -1;
  let bestLen = 1;
  let runStart = -1;
  for (let i = 0; i < 8; i++) {
    if (g[i] !== 0) {
      runStart = -1;
      continue;
    }
    if (runStart < 0) runStart = i;
    if (i - runStart + 1 > bestLen) {
      bestStart = runStart;
      bestLen = i - runStart + 1;
    }
  }
  let out = "";
  for (let i = 0; i < 8; i++) {
    if (i === bestStart) {
      out += "::";
      i += bestLen - 1;
      continue;
    }
    if (out.length > 0 && !out.endsWith(":")) out += ":";
    out += g[i].toString(16);
  }
  return out;
}

/**
 * v1 header: "PROXY TCP4 <src> <dst> <srcPort> <dstPort>\r\n" (or TCP6). "PROXY UNKNOWN\r\n" when the
 * pair cannot be written (different families, unparsable address or port); the backend then uses the
 * connection's own endpoints. IPv4-mapped IPv6 is written as the IPv4 it carries.
 */
export function proxyV1Header(src: string, srcPort: number, dst: string, dstPort: number): Buffer {
  const pair = readPair(src, srcPort, dst, dstPort);
  let line: string;
  if (pair === PAIR_V4) {
    const s = src.indexOf(":") < 0 ? src : v4Text(srcGroups);
    const d = dst.indexOf(":") < 0 ? dst : v4Text(dstGroups);
    line = `PROXY TCP4 ${s} ${d} ${srcPort} ${dstPort}\r\n`;
  } else if (pair === PAIR_V6) {
    line = `PROXY TCP6 ${v6Text(src, srcGroups)} ${v6Text(dst, dstGroups)} ${srcPort} ${dstPort}\r\n`;
  } else {
    line = V1_UNKNOWN;
  }
  return Buffer.from(line, "latin1");
}

/**
 * v2 header: signature, PROXY command, TCP4/UDP4/TCP6/UDP6, then addresses and ports in network order.
 * When the pair cannot be written, a LOCAL command with AF_UNSPEC and no addresses (16 bytes), which the
 * spec requires receivers to accept, using the connection's own endpoints.
 */
export function proxyV2Header(src: string, srcPort: number, dst: string, dstPort: number, transport: "tcp" | "udp"): Buffer {
  const pair = readPair(src, srcPort, dst, dstPort);
  if (pair === PAIR_NONE) return Buffer.from(V2_LOCAL_HEADER);
  const udp = transport === "udp";
  const v4 = pair === PAIR_V4;
  const addrLen = v4 ? V2_INET_LEN : V2_INET6_LEN;
  // allocUnsafe takes from Node's shared pool for small sizes; every byte is written below.
  const buf = Buffer.allocUnsafe(V2_HEADER_LEN + addrLen);
  PROXY_V2_SIGNATURE.copy(buf, 0);
  buf[12] = V2_PROXY;
  buf[13] = v4 ? (udp ? V2_UDP4 : V2_TCP4) : udp ? V2_UDP6 : V2_TCP6;
  buf.writeUInt16BE(addrLen, 14);
  let at = V2_HEADER_LEN;
  if (v4) {
    buf.writeUInt16BE(srcGroups[6], at);
    buf.writeUInt16BE(srcGroups[7], at + 2);
    buf.writeUInt16BE(dstGroups[6], at + 4);
    buf.writeUInt16BE(dstGroups[7], at + 6);
    at += 8;
  } else {
    for (let k = 0; k < 8; k++) buf.writeUInt16BE(srcGroups[k], at + k * 2);
    for (let k = 0; k < 8; k++) buf.writeUInt16BE(dstGroups[k], at + 16 + k * 2);
    at += 32;
  }
  buf.writeUInt16BE(srcPort, at);
  buf.writeUInt16BE(dstPort, at + 2);
  return buf;
}

/** A parsed PROXY header. */
export interface ProxyHeader {
  version: 1 | 2;
  /**
   * True when the header carries no client address (v1 UNKNOWN, v2 LOCAL, AF_UNSPEC or AF_UNIX): use
   * the connection's own endpoints. Addresses are then "" and ports 0.
   */
  local: boolean;
  src: string;
  srcPort: number;
  dst: string;
  dstPort: number;
  transport: "tcp" | "udp";
  /** Bytes the header takes (v2: including any TLVs); the payload starts here. */
  length: number;
}

/**
 * Parses a v1 or v2 header at the start of `buf`. Null when `buf` does not start with a complete, valid
 * header (not a header, malformed, or not all received yet). v2 TLVs are skipped.
 */
export function parseProxyHeader(buf: Buffer): ProxyHeader | null {
  if (buf.length >= V2_HEADER_LEN && buf.compare(PROXY_V2_SIGNATURE, 0, 12, 0, 12) === 0) return parseV2(buf);
  if (buf.length >= 8 && buf.toString("latin1", 0, 6) === "PROXY ") return parseV1(buf);
  return null;
}

function localHeader(version: 1 | 2, transport: "tcp" | "udp", length: number): ProxyHeader {
  return { version, local: true, src: "", srcPort: 0, dst: "", dstPort: 0, transport, length };
}

function parsePortText(text: string): number {
  if (!/^\d{1,5}$/.test(text)) return -1;
  const port = Number(text);
  return port <= 65535 ? port : -1;
}

function parseV1(buf: Buffer): ProxyHeader | null {
  const limit = Math.min(buf.length, V1_MAX_LEN);
  let cr = -1;
  for (let i = 6; i + 1 < limit; i++) {
    if (buf[i] === 0x0d && buf[i + 1] === 0x0a) {
      cr = i;
      break;
    }
  }
  if (cr < 0) return null;
  const fields = buf.toString("latin1", 6, cr).split(" ");
  // UNKNOWN may be followed by anything up to the CRLF, which the receiver ignores.
  if (fields[0] === "UNKNOWN") return localHeader(1, "tcp", cr + 2);
  if (fields.length !== 5) return null;
  const [proto, src, dst, srcPortText, dstPortText] = fields;
  const groups = new Uint16Array(8);
  if (proto === "TCP4") {
    if (parseIPv4(src) < 0 || parseIPv4(dst) < 0) return null;
  } else if (proto === "TCP6") {
    if (src.indexOf(":") < 0 || dst.indexOf(":") < 0) return null;
    if (readIP(src, groups) === IP_INVALID || readIP(dst, groups) === IP_INVALID) return null;
  } else {
    return null;
  }
  const srcPort = parsePortText(srcPortText);
  const dstPort = parsePortText(dstPortText);
  if (srcPort < 0 || dstPort < 0) return null;
  return { version: 1, local: false, src, srcPort, dst, dstPort, transport: "tcp", length: cr + 2 };
}

function readGroups(buf: Buffer, at: number): Uint16Array {
  const g = new Uint16Array(8);
  for (let k = 0; k < 8; k++) g[k] = buf.readUInt16BE(at + k * 2);
  return g;
}

function parseV2(buf: Buffer): ProxyHeader | null {
  const verCmd = buf[12];
  if (verCmd >>> 4 !== 2) return null;
  const command = verCmd & 0x0f;
  if (command > 1) return null;
  const fam = buf[13];
  const addrLen = buf.readUInt16BE(14);
  const length = V2_HEADER_LEN + addrLen;
  if (buf.length < length) return null;
  const transport = (fam & 0x0f) === 2 ? "udp" : "tcp";
  // LOCAL: the receiver ignores the address block, whatever the family says.
  if (command === 0) return localHeader(2, transport, length);
  const at = V2_HEADER_LEN;
  switch (fam) {
    case V2_TCP4:
    case V2_UDP4: {
      if (addrLen < V2_INET_LEN) return null;
      const src = `${buf[at]}.${buf[at + 1]}.${buf[at + 2]}.${buf[at + 3]}`;
      const dst = `${buf[at + 4]}.${buf[at + 5]}.${buf[at + 6]}.${buf[at + 7]}`;
      const srcPort = buf.readUInt16BE(at + 8);
      const dstPort = buf.readUInt16BE(at + 10);
      return { version: 2, local: false, src, srcPort, dst, dstPort, transport, length };
    }
    case V2_TCP6:
    case V2_UDP6: {
      if (addrLen < V2_INET6_LEN) return null;
      const src = formatIPv6(readGroups(buf, at));
      const dst = formatIPv6(readGroups(buf, at + 16));
      const srcPort = buf.readUInt16BE(at + 32);
      const dstPort = buf.readUInt16BE(at + 34);
      return { version: 2, local: false, src, srcPort, dst, dstPort, transport, length };
    }
    case 0x00:
    case V2_UNIX_STREAM:
    case V2_UNIX_DGRAM:
      return localHeader(2, transport, length);
    default:
      return null;
  }
}
