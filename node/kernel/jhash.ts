// The kernel's flow hash in TypeScript: nft's `jhash <key> mod M seed S` is Linux's jhash (Bob
// Jenkins' lookup3, include/linux/jhash.h) over the key registers, scaled into [0, M) with
// reciprocal_scale. Route explain uses it to say which slot — and so which backend — the kernel picks.

const INITVAL = 0xdeadbeef;

const rol = (x: number, k: number) => (x << k) | (x >>> (32 - k));

/** jhash(key, length, initval) over bytes, as the kernel computes it on a little-endian CPU. */
export function jhashBytes(k: Uint8Array, seed: number): number {
  let length = k.length;
  let a = (INITVAL + length + seed) | 0;
  let b = a;
  let c = a;
  let o = 0;
  while (length > 12) {
    a = (a + (k[o] | (k[o + 1] << 8) | (k[o + 2] << 16) | (k[o + 3] << 24))) | 0;
    b = (b + (k[o + 4] | (k[o + 5] << 8) | (k[o + 6] << 16) | (k[o + 7] << 24))) | 0;
    c = (c + (k[o + 8] | (k[o + 9] << 8) | (k[o + 10] << 16) | (k[o + 11] << 24))) | 0;
    // __jhash_mix
    a = (a - c) | 0; a ^= rol(c, 4); c = (c + b) | 0;
    b = (b - a) | 0; b ^= rol(a, 6); a = (a + c) | 0;
    c = (c - b) | 0; c ^= rol(b, 8); b = (b + a) | 0;
    a = (a - c) | 0; a ^= rol(c, 16); c = (c + b) | 0;
    b = (b - a) | 0; b ^= rol(a, 19); a = (a + c) | 0;
    c = (c - b) | 0; c ^= rol(b, 4); b = (b + a) | 0;
    length -= 12;
    o += 12;
  }
  if (length === 0) return c >>> 0;
  // The tail: bytes added from the highest down, as the kernel's fall-through switch does.
  let ta = 0;
  let tb = 0;
  let tc = 0;
  for (let i = 0; i < length; i++) {
    const v = k[o + i] << ((i & 3) * 8);
    if (i < 4) ta |= v;
    else if (i < 8) tb |= v;
    else tc |= v;
  }
  a = (a + ta) | 0;
  b = (b + tb) | 0;
  c = (c + tc) | 0;
  // __jhash_final
  c ^= b; c = (c - rol(b, 14)) | 0;
  a ^= c; a = (a - rol(c, 11)) | 0;
  b ^= a; b = (b - rol(a, 25)) | 0;
  c ^= b; c = (c - rol(b, 16)) | 0;
  a ^= c; a = (a - rol(c, 4)) | 0;
  b ^= a; b = (b - rol(a, 14)) | 0;
  c ^= b; c = (c - rol(b, 24)) | 0;
  return c >>> 0;
}

/** reciprocal_scale(val, n): the kernel's `mod` for jhash, (val · n) >> 32 rather than val % n. */
export function reciprocalScale(val: number, n: number): number {
  return Number((BigInt(val >>> 0) * BigInt(n >>> 0)) >> 32n);
}

/** IPv4 dotted quad → its 4 bytes in network order; null if not an IPv4 address. */
export function ipv4Bytes(ip: string): Uint8Array | null {
  const parts = ip.split(".");
  if (parts.length !== 4) return null;
  const out = new Uint8Array(4);
  for (let i = 0; i < 4; i++) {
    if (!/^\d{1,3}$/.test(parts[i])) return null;
    const v = Number(parts[i]);
    if (v > 255) return null;
    out[i] = v;
  }
  return out;
}

/**
 * The slot nft picks for `jhash ip saddr . th sport mod M seed S` (or `jhash ip saddr mod M seed S`
 * when `port` is null): nft pads each part of a concatenation to 4 bytes, the port in network order.
 */
export function kernelSlot(clientIp: string, port: number | null, modulus: number, seed: number): number {
  const ip = ipv4Bytes(clientIp);
  if (!ip) throw new RangeError(`not an IPv4 address: ${clientIp}`);
  const key = new Uint8Array(port === null ? 4 : 8);
  key.set(ip, 0);
  if (port !== null) {
    key[4] = (port >>> 8) & 0xff;
    key[5] = port & 0xff;
  }
  return reciprocalScale(jhashBytes(key, seed >>> 0), modulus);
}
