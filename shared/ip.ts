// IP address text → numbers, allocation-free (they run on every new connection): the one parser used by
// access rules, the PROXY protocol writer, and the client-address normaliser used by access, affinity
// and the source hash.

/** readIP result: not an IP address. */
export const IP_INVALID = 0;
/** readIP result: dotted-quad IPv4 text. */
export const IP_V4 = 4;
/** readIP result: IPv6 text (IPv4-mapped included; see isV4Mapped). */
export const IP_V6 = 6;
export type IPFamily = typeof IP_INVALID | typeof IP_V4 | typeof IP_V6;

/**
 * Dotted-quad IPv4 text (or the slice [start, end) of it) → unsigned 32-bit value, or -1. Exactly four
 * decimal parts of 0-255, no leading zeros (as inet_pton and net.isIPv4). Allocates nothing.
 */
export function parseIPv4(text: string, start = 0, end = text.length): number {
  let value = 0;
  let part = 0;
  let digits = 0;
  let dots = 0;
  for (let i = start; i < end; i++) {
    const c = text.charCodeAt(i);
    if (c >= 48 && c <= 57) {
      if (digits === 1 && part === 0) return -1;
      part = part * 10 + (c - 48);
      if (part > 255) return -1;
      digits++;
    } else if (c === 46 && digits > 0 && dots < 3) {
      value = value * 256 + part;
      part = 0;
      digits = 0;
      dots++;
    } else {
      return -1;
    }
  }
  if (digits === 0 || dots !== 3) return -1;
  return value * 256 + part;
}

function hexValue(c: number): number {
  if (c >= 48 && c <= 57) return c - 48;
  if (c >= 97 && c <= 102) return c - 87;
  if (c >= 65 && c <= 70) return c - 55;
  return -1;
}

/**
 * IPv6 text → eight 16-bit groups written into `out`; false if malformed (then `out` holds garbage).
 * Accepts "::" compression, an embedded dotted quad in the last 32 bits, and ignores a "%zone" suffix
 * (a zone does not change which rules an address falls in). Allocates nothing.
 */
export function parseIPv6(text: string, out: Uint16Array): boolean {
  let end = text.length;
  const zone = text.indexOf("%");
  if (zone >= 0) {
    if (zone === end - 1) return false;
    end = zone;
  }
  // The longest form is "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255" (45 characters).
  if (end < 2 || end > 45) return false;
  let n = 0;
  let gap = -1;
  let i = 0;
  if (text.charCodeAt(0) === 58) {
    if (text.charCodeAt(1) !== 58) return false;
    gap = 0;
    i = 2;
  }
  while (i < end) {
    if (n === 8) return false;
    let value = 0;
    let j = i;
    while (j < end) {
      const h = hexValue(text.charCodeAt(j));
      if (h < 0) break;
      value = value * 16 + h;
      j++;
    }
    if (j < end && text.charCodeAt(j) === 46) {
      // Embedded IPv4: must be the last 32 bits.
      if (n > 6) return false;
      const v4 = parseIPv4(text, i, end);
      if (v4 < 0) return false;
      out[n++] = v4 >>> 16;
      out[n++] = v4 & 0xffff;
      break;
    }
    if (j === i || j - i > 4) return false;
    out[n++] = value;
    if (j === end) break;
    if (text.charCodeAt(j) !== 58) return false;
    j++;
    if (j < end && text.charCodeAt(j) === 58) {
      if (gap >= 0) return false;
      gap = n;
      j++;
    } else if (j === end) {
      return false;
    }
    i = j;
  }
  if (gap < 0) return n === 8;
  // "::" stands for at least one zero group.
  if (n === 8) return false;
  const tail = n - gap;
  for (let k = tail - 1; k >= 0; k--) out[8 - tail + k] = out[gap + k];
  for (let k = gap; k < 8 - tail; k++) out[k] = 0;
  return true;
}

/** True when the groups are ::ffff:a.b.c.d; the IPv4 value is then groups[6] * 65536 + groups[7]. */
export function isV4Mapped(groups: Uint16Array): boolean {
  return (
    groups[5] === 0xffff && groups[4] === 0 && groups[3] === 0 && groups[2] === 0 && groups[1] === 0 && groups[0] === 0
  );
}

/**
 * Reads an address into `groups`: IP_V4 (groups then hold its mapped form ::ffff:a.b.c.d, so the value
 * is always groups[6] * 65536 + groups[7]), IP_V6, or IP_INVALID. Never throws, whatever it is given.
 */
export function readIP(text: unknown, groups: Uint16Array): IPFamily {
  if (typeof text !== "string") return IP_INVALID;
  if (text.indexOf(":") < 0) {
    const v4 = parseIPv4(text);
    if (v4 < 0) return IP_INVALID;
    groups.fill(0, 0, 5);
    groups[5] = 0xffff;
    groups[6] = v4 >>> 16;
    groups[7] = v4 & 0xffff;
    return IP_V4;
  }
  return parseIPv6(text, groups) ? IP_V6 : IP_INVALID;
}

/**
 * The one spelling of a client address: IPv4-mapped IPv6 ("::ffff:10.1.2.3", what Node reports on
 * dual-stack sockets) becomes the IPv4 address it carries, so a client is the same client (same
 * affinity entry, same source hash, same rate bucket) whichever socket family it arrived on. Returns
 * the input itself when there is nothing to unmap: no allocation in the common case.
 */
export function clientAddress(ip: string): string {
  return ip.length > 7 && ip.charCodeAt(0) === 58 /* ':' */ && ip.startsWith("::ffff:") && parseIPv4(ip, 7) >= 0 ? ip.slice(7) : ip;
}
