// Deterministic 32-bit hashing for the hot path: flow hashes for Maglev and backend ids for table
// permutations. Fixed seeds only, so every node and process computes the same values.

const C1 = 0xcc9e2d51;
const C2 = 0x1b873593;

/** Seed spreading the port across the seed space, so neighbouring ports give unrelated flow hashes. */
const PORT_SPREAD = 0x9e3779b1;

/**
 * MurmurHash3 x86_32 of the string's UTF-16LE encoding (two code units per 32-bit block), computed
 * from char codes so it allocates nothing. Result is an unsigned 32-bit integer.
 */
export function hashString(s: string, seed = 0): number {
  let h = seed | 0;
  const len = s.length;
  const even = len & ~1;
  let i = 0;
  for (; i < even; i += 2) {
    let k = s.charCodeAt(i) | (s.charCodeAt(i + 1) << 16);
    k = Math.imul(k, C1);
    k = (k << 15) | (k >>> 17);
    k = Math.imul(k, C2);
    h ^= k;
    h = (h << 13) | (h >>> 19);
    h = (Math.imul(h, 5) + 0xe6546b64) | 0;
  }
  if (i < len) {
    let k = s.charCodeAt(i);
    k = Math.imul(k, C1);
    k = (k << 15) | (k >>> 17);
    k = Math.imul(k, C2);
    h ^= k;
  }
  h ^= len * 2;
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

/** Hash of a client flow (ip, port). The source-only hash of the same client is `hashString(ip)`. */
export function flowHash(ip: string, port: number): number {
  return hashString(ip, Math.imul((port & 0xffff) + 1, PORT_SPREAD));
}
