// Encoded replies of the current DNS view, so a repeated query is answered without decoding it or
// encoding a reply (the codec is nearly all of a query's cost: ~25 µs plain, ~35 µs with EDNS, against
// ~1 µs for a hit). Keyed by the query's bytes after the ID (name, type, flags, EDNS options, EDNS
// Client Subnet included) and by transport; for A/AAAA names also by what the client changes in the
// answer: its zone and the rotation it sees (view.ts rotationKey). The cache belongs to one view: the
// responder empties it whenever the view changes (any revision), so it never answers from an older one.
import type { AddressSet } from "./view.js";

/** One reply as the slow path produced it, with what the hit must count. */
export interface CachedReply {
  /** What a client that passes RRL gets (truncated with TC when the full reply did not fit). */
  readonly reply: Buffer;
  /** What RRL's slip sends instead: the same reply truncated, so a real client retries over TCP. */
  readonly slip: Buffer;
  /** Metric labels and counts of the slow path (queries by type and rcode, answers, truncated). */
  readonly type: string;
  readonly rcode: string;
  readonly answers: number;
  readonly truncated: boolean;
}

/** What the reply to one query's bytes depends on besides them. */
export interface CachedQuery {
  /** The answered A/AAAA set (the reply varies by client zone and rotation); null: the reply is the same for every client. */
  readonly set: AddressSet | null;
  /** The name puts the client zone's nodes first (`locality: prefer-zone`). */
  readonly preferZone: boolean;
  /** The EDNS Client Subnet address the query carries: it, not the source, is the client. */
  readonly ecs: string | null;
  /** Replies by rotationKey ("" when `set` is null). */
  readonly replies: Map<string, CachedReply>;
}

export class AnswerCache {
  private readonly queries = new Map<string, CachedQuery>();
  private count = 0;
  /** Queries answered from the cache (ballast_dns_cache_hits_total). */
  hits = 0;

  /** At most `maxReplies` replies: past it the cache starts over (a flood of distinct names cannot grow it). */
  constructor(readonly maxReplies: number) {}

  get size(): number {
    return this.count;
  }

  clear(): void {
    this.queries.clear();
    this.count = 0;
  }

  get(key: string): CachedQuery | undefined {
    return this.queries.get(key);
  }

  put(key: string, query: Omit<CachedQuery, "replies">, variant: string, reply: CachedReply): void {
    if (this.count >= this.maxReplies) this.clear();
    let entry = this.queries.get(key);
    if (entry === undefined) {
      entry = { ...query, replies: new Map() };
      this.queries.set(key, entry);
    }
    if (!entry.replies.has(variant)) this.count++;
    entry.replies.set(variant, reply);
  }
}
