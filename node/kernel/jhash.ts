// The kernel's flow hash, reimplemented so TypeScript predicts where nftables sends a flow: the
// `jhash` expression (Bob Jenkins' lookup3 as in include/linux/jhash.h) over the key registers,
// then `reciprocal_scale` onto the map size (net/netfilter/nft_hash.c: nft_jhash_eval). Route
// explain and the tests use it; the kernel does the per-packet work.

const JHASH_INITVAL = 0xdeadbeef;

const rol32 = (x: number, k: number) => ((x << k) | (x >>> (32 - k))) >>> 0;

/** Reads 4 bytes as the CPU does (x86: little endian), like get_unaligned_cpu32(). */
const le32 = (k: Uint8Array, i: number) => (k[i] | (k[i + 1] << 8) | (k[i + 2] << 16) | (k[i + 3] << 24)) >>> 0;

/** jhash(key, length, initval) from include/linux/jhash.h. */
export function jhash(key: Uint8Array, initval: number): number {
  let length = key.length;
  let a = (JHASH_INITVAL + length + initval) >>> 0;
  let b = a;
  let c = a;
  let i = 0;
  while (length > 12) {
    a = (a + le32(key, i)) >>> 0;
    b = (b + le32(key, i + 4)) >>> 0;
    c = (c + le32(key, i + 8)) >>> 0;
    // __jhash_mix
    a = (a - c) >>> 0; a = (a ^ rol32(c, 4)) >>> 0; c = (c + b) >>> 0;
    b = (b - a) >>> 0; b = (b ^ rol32(a, 6)) >>> 0; a = (a + c) >>> 0;
    c = (c - b) >>> 0; c = (c ^ rol32(b, 8)) >>> 0; b = (b + a) >>> 0;
    a = (a - c) >>> 0; a = (a ^ rol32(c, 16)) >>> 0; c = (c + b) >>> 0;
    b = (b - a) >>> 0; b = (b ^ rol32(a, 19)) >>> 0; a = (a + c) >>> 0;
    c = (c - b) >>> 0; c = (c ^ rol32(b, 4)) >>> 0; b = (b + a) >>> 0;
    length -= 12;
    i += 12;
  }
  if (length === 0) return c;
  // The tail, byte by byte into a, b, c (the switch's fall-through in the C source).
  const tail = [0, 0, 0];
  for (let j = 0; j < length; j++) tail[j >> 2] += key[i + j] * 2 ** (8 * (j & 3));
  a = (a + tail[0]) >>> 0;
  b = (b + tail[1]) >>> 0;
  c = (c + tail[2]) >>> 0;
  // __jhash_final
  c = (c ^ b) >>> 0; c = (c - rol32(b, 14)) >>> 0;
  a = (a ^ c) >>> 0; a = (a - rol32(c, 11)) >>> 0;
  b = (b ^ a) >>> 0; b = (b - rol32(a, 25)) >>> 0;
  c = (c ^ b) >>> 0; c = (c - rol32(b, 16)) >>> 0;
  a = (a ^ c) >>> 0; a = (a - rol32(c, 4)) >>> 0;
  b = (b ^ a) >>> 0; b = (b - rol32(a, 14)) >>> 0;
  c = (c ^ b) >>> 0; c = (c - rol32(b, 24)) >>> 0;
  return c;
}

/** reciprocal_scale(val, ep_ro): maps a 32-bit hash onto [0, ep_ro) without a division. */
export function reciprocalScale(val: number, n: number): number {
  // (u64)val * n >> 32, exactly: split val to stay within 2^53.
  const hi = (val >>> 16) * n;
  const lo = (val & 0xffff) * n;
  return Math.floor((hi + Math.floor(lo / 65536)) / 65536);
}

function addressBytes(ip: string): Uint8Array | null {
  if (/^\d+\.\d+\.\d+\.\d+$/.test(ip)) {
    const parts = ip.split(".").map(Number);
    return parts.every((p) => p >= 0 && p <= 255) ? Uint8Array.from(parts) : null;
  }
  if (!ip.includes(":")) return null;
  // IPv6: expand "::" and any embedded IPv4 tail into 8 groups.
  let s = ip;
  const v4 = /(\d+\.\d+\.\d+\.\d+)$/.exec(s);
  if (v4) {
    const b = addressBytes(v4[1]);
    if (!b) return null;
    s = `${s.slice(0, -v4[1].length)}${((b[0] << 8) | b[1]).toString(16)}:${((b[2] << 8) | b[3]).toString(16)}`;
  }
  const halves = s.split("::");
  if (halves.length > 2) return null;
  const head = halves[0] ? halves[0].split(":") : [];
  const tail = halves.length === 2 && halves[1] ? halves[1].split(":") : [];
  const fill = halves.length === 2 ? 8 - head.length - tail.length : 0;
  const groups = [...head, ...Array(Math.max(0, fill)).fill("0"), ...tail];
  if (groups.length !== 8) return null;
  const out = new Uint8Array(16);
  for (let g = 0; g < 8; g++) {
    const v = Number.parseInt(groups[g], 16);
    if (!(v >= 0 && v <= 0xffff)) return null;
    out[2 * g] = v >> 8;
    out[2 * g + 1] = v & 0xff;
  }
  return out;
}

/**
 * The key register contents of `jhash ip saddr . tcp sport` (or the source address alone): the
 * address in network order, then the port in network order padded to a 4-byte register.
 */
export function flowKey(ip: string, port: number, sourceOnly: boolean): Uint8Array | null {
  const addr = addressBytes(ip);
  if (!addr) return null;
  if (sourceOnly) return addr;
  const key = new Uint8Array(addr.length + 4);
  key.set(addr);
  key[addr.length] = (port >> 8) & 0xff;
  key[addr.length + 1] = port & 0xff;
  return key;
}

/** The map slot the kernel's rule picks for a flow: reciprocal_scale(jhash(key, seed), size). -1 for a bad address. */
export function kernelSlot(ip: string, port: number, sourceOnly: boolean, seed: number, size: number): number {
  const key = flowKey(ip, port, sourceOnly);
  return key ? reciprocalScale(jhash(key, seed >>> 0), size) : -1;
}
