// Response rate limiting (BIND's RRL, simplified): a DNS server on the internet is an amplification
// target, since UDP sources can be spoofed. Each source prefix (/24, /56) gets a token bucket; over the
// limit, replies are dropped, except every `slip`-th which goes out truncated (TC) so a real client
// retries over TCP, which cannot be spoofed. Memory is bounded: at most `maxSources` prefixes, the
// oldest forgotten first.
import { IP_INVALID, IP_V4, isV4Mapped, readIP } from "../../shared/ip.js";

export type RrlAction = "pass" | "slip" | "drop";

export interface RrlOptions {
  responsesPerSecond: number;
  burst: number;
  slip: number;
  ipv4Prefix: number;
  ipv6Prefix: number;
  maxSources: number;
}

interface Bucket {
  tokens: number;
  last: number;
  limited: number;
}

const scratch = new Uint16Array(8);

export class ResponseRateLimiter {
  private readonly buckets = new Map<string, Bucket>();
  evicted = 0;

  constructor(readonly options: RrlOptions) {}

  get size(): number {
    return this.buckets.size;
  }

  /** The bucket key of a source: its prefix, as text. Unreadable addresses share one bucket. */
  keyOf(ip: string): string {
    const family = readIP(ip, scratch);
    if (family === IP_INVALID) return "?";
    if (family === IP_V4 || isV4Mapped(scratch)) {
      const v4 = (scratch[6] * 65536 + scratch[7]) >>> 0;
      const bits = this.options.ipv4Prefix;
      return `4/${bits === 32 ? v4 : Math.floor(v4 / 2 ** (32 - bits))}`;
    }
    let key = "6";
    let bits = this.options.ipv6Prefix;
    for (let g = 0; g < 8 && bits > 0; g++, bits -= 16) key += `/${bits >= 16 ? scratch[g] : scratch[g] >>> (16 - bits)}`;
    return key;
  }

  take(ip: string, nowMs: number): RrlAction {
    const o = this.options;
    if (o.responsesPerSecond <= 0) return "pass";
    const key = this.keyOf(ip);
    let b = this.buckets.get(key);
    if (b === undefined) {
      if (this.buckets.size >= o.maxSources) {
        // Map iteration order is insertion order: the first key is the prefix tracked longest.
        const oldest = this.buckets.keys().next().value as string;
        this.buckets.delete(oldest);
        this.evicted++;
      }
      b = { tokens: o.burst, last: nowMs, limited: 0 };
      this.buckets.set(key, b);
    } else {
      const refill = ((nowMs - b.last) / 1000) * o.responsesPerSecond;
      if (refill > 0) {
        b.tokens = Math.min(o.burst, b.tokens + refill);
        b.last = nowMs;
      }
    }
    if (b.tokens >= 1) {
      b.tokens -= 1;
      return "pass";
    }
    b.limited++;
    return o.slip > 0 && b.limited % o.slip === 0 ? "slip" : "drop";
  }
}
