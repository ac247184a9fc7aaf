// The authoritative DNS responder of a node (UDP and TCP): answers for the cluster's zone from the DNS
// view (live nodes' public addresses per service name), SOA and NS at the apex, NXDOMAIN for unknown
// names, REFUSED outside the zone (no recursion), EDNS (payload size, client subnet), TC on UDP when an
// answer does not fit so the client retries over TCP, and response rate limiting per source. A query
// never awaits anything and nothing a client sends can throw out of answer().
import dgram from "node:dgram";
import net from "node:net";
import * as packet from "dns-packet";
import type { Logger } from "pino";
import { parseHostPort } from "../../shared/address.js";
import { hashString } from "../lb/hash.js";
import { AnswerCache, type CachedQuery, type CachedReply } from "./answer-cache.js";
import { ResponseRateLimiter, type RrlOptions } from "./rrl.js";
import { type AddressSet, clientZoneOf, type DnsAddress, type DnsView, orderAnswers, rotationKey } from "./view.js";

export const RCODE = { NOERROR: 0, FORMERR: 1, SERVFAIL: 2, NXDOMAIN: 3, NOTIMP: 4, REFUSED: 5 } as const;
/** Extended rcode 16 (BADVERS): upper bits in the OPT record, lower four (0) in the header. */
const BADVERS_HIGH = 1;
/** What we announce and the most we send over UDP (the DNS flag day 2020 size: no fragmentation). */
export const EDNS_PAYLOAD = 1232;
const PLAIN_UDP = 512;
/** A query carries OPT and perhaps TSIG/SIG(0): more additional records than this is not a query. */
const MAX_ADDITIONALS = 4;
/** Unsent reply bytes one TCP client may hold before it is disconnected. */
const MAX_TCP_PENDING = 256 * 1024;
const QR = 0x8000;
const AA = 0x0400;
const TC = 0x0200;
const RD = 0x0100;
/** Replies the cache holds at most (a few hundred bytes each): names × types × rotations of a large zone fit. */
const MAX_CACHED_REPLIES = 8192;
/**
 * Longer queries are answered without the cache: the key is the query itself, and a TCP frame may be
 * 64 KiB of padding. One question with OPT, an ECS and a cookie takes well under this.
 */
const MAX_CACHED_QUERY = 512;

/** Where the slow path's reply goes in the cache: the query's key, what varies by client, and the labels to count. */
interface CacheSlot {
  /** null: the query is not cached (longer than MAX_CACHED_QUERY). */
  key: string | null;
  query: Omit<CachedQuery, "replies">;
  variant: string;
  type: string;
  rcode: string;
  answers: number;
}

/** Query types counted by name in metrics; everything else is "other" (a bounded label set). */
export const COUNTED_TYPES = ["A", "AAAA", "SOA", "NS", "ANY", "other", "malformed"] as const;
export const RCODE_NAMES = ["NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED", "BADVERS"] as const;

/** Plain counters read at scrape time (as the data plane's): a query costs no label lookup. */
export class DnsStats {
  /** `${type}|${rcode}` → count, over the bounded label sets above. */
  readonly queries = new Map<string, number>();
  answers = 0;
  truncated = 0;
  rrlDropped = 0;
  rrlSlipped = 0;
  /** Datagrams or frames that were not queries at all (too short, a response): dropped, no reply. */
  dropped = 0;
  tcpConnections = 0;
  tcpRefused = 0;

  count(type: string, rcode: string): void {
    const key = `${type}|${rcode}`;
    this.queries.set(key, (this.queries.get(key) ?? 0) + 1);
  }
}

export interface DnsResponderOptions {
  listen: string;
  rrl: RrlOptions;
  maxTcpConnections: number;
  tcpIdleMs: number;
}

type Answer = packet.Answer;

function typeLabel(type: string): string {
  return type === "A" || type === "AAAA" || type === "SOA" || type === "NS" || type === "ANY" ? type : "other";
}

export class DnsResponder {
  view: DnsView | null = null;
  readonly stats = new DnsStats();
  readonly rrl: ResponseRateLimiter;
  /** Encoded replies of `view` (emptied when it changes). */
  readonly cache = new AnswerCache(MAX_CACHED_REPLIES);
  private udp: dgram.Socket | null = null;
  private tcp: net.Server | null = null;
  private readonly sockets = new Set<net.Socket>();
  /** "host:port" actually bound (port 0 in tests resolves here). */
  address = "";
  port = 0;
  error: string | null = null;

  constructor(
    readonly options: DnsResponderOptions,
    private readonly log: Logger,
  ) {
    this.rrl = new ResponseRateLimiter(options.rrl);
  }

  update(view: DnsView | null): void {
    // Replies of the old view must never answer for the new one.
    if (view !== this.view) this.cache.clear();
    this.view = view;
  }

  /** Binds UDP, then TCP on the same port (retrying a few ports when the listen port is 0). */
  async listen(): Promise<void> {
    const hp = parseHostPort(this.options.listen);
    if (!hp) {
      this.error = `dns.listen ${this.options.listen}: not address:port`;
      return;
    }
    const family = net.isIPv6(hp.host) ? "udp6" : "udp4";
    for (let attempt = 0; attempt < 5; attempt++) {
      const udp = dgram.createSocket({ type: family, reuseAddr: false });
      try {
        await new Promise<void>((resolve, reject) => {
          udp.once("error", reject);
          udp.bind(hp.port, hp.host, () => {
            udp.off("error", reject);
            resolve();
          });
        });
      } catch (err) {
        udp.close();
        this.error = `dns udp ${this.options.listen}: ${(err as Error).message}`;
        return;
      }
      const port = udp.address().port;
      const tcp = net.createServer({ pauseOnConnect: false, noDelay: true }, (s) => this.onTcp(s));
      try {
        await new Promise<void>((resolve, reject) => {
          tcp.once("error", reject);
          tcp.listen({ host: hp.host, port }, () => {
            tcp.off("error", reject);
            resolve();
          });
        });
      } catch (err) {
        udp.close();
        if (hp.port === 0 && (err as NodeJS.ErrnoException).code === "EADDRINUSE") continue;
        this.error = `dns tcp ${this.options.listen}: ${(err as Error).message}`;
        return;
      }
      udp.on("message", (msg, rinfo) => this.onDatagram(msg, rinfo));
      udp.on("error", (err) => this.log.warn({ err: err.message }, "dns udp socket error"));
      tcp.on("error", (err) => this.log.warn({ err: err.message }, "dns tcp server error"));
      this.udp = udp;
      this.tcp = tcp;
      this.port = port;
      this.address = hp.host.includes(":") ? `[${hp.host}]:${port}` : `${hp.host}:${port}`;
      this.error = null;
      return;
    }
    this.error = `dns ${this.options.listen}: no port free for both UDP and TCP`;
  }

  async close(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    this.sockets.clear();
    const udp = this.udp;
    const tcp = this.tcp;
    this.udp = null;
    this.tcp = null;
    if (udp) await new Promise<void>((r) => udp.close(() => r()));
    if (tcp) await new Promise<void>((r) => tcp.close(() => r()));
  }

  private onDatagram(msg: Buffer, rinfo: dgram.RemoteInfo): void {
    const reply = this.answer(msg, rinfo.address, true);
    if (reply === null) return;
    this.udp?.send(reply, rinfo.port, rinfo.address);
  }

  private onTcp(socket: net.Socket): void {
    socket.on("error", () => {});
    if (this.sockets.size >= this.options.maxTcpConnections) {
      this.stats.tcpRefused++;
      socket.destroy();
      return;
    }
    this.stats.tcpConnections++;
    this.sockets.add(socket);
    socket.setTimeout(this.options.tcpIdleMs, () => socket.destroy());
    socket.on("close", () => this.sockets.delete(socket));
    const client = socket.remoteAddress ?? "";
    // RFC 7766 framing: a two-byte length, then the message; several queries may share a connection.
    let buf: Buffer = Buffer.alloc(0);
    socket.on("data", (chunk: Buffer) => {
      buf = buf.length === 0 ? chunk : Buffer.concat([buf, chunk]);
      while (buf.length >= 2) {
        const len = buf.readUInt16BE(0);
        if (buf.length < 2 + len) break;
        const msg = buf.subarray(2, 2 + len);
        buf = buf.subarray(2 + len);
        const reply = this.answer(msg, client, false);
        if (reply === null) {
          // Not a query at all: nothing sensible follows on this stream.
          socket.destroy();
          return;
        }
        const framed = Buffer.allocUnsafe(2 + reply.length);
        framed.writeUInt16BE(reply.length, 0);
        reply.copy(framed, 2);
        socket.write(framed);
        // A client that pipelines queries but never reads its replies would make us buffer without end.
        if (socket.writableLength > MAX_TCP_PENDING) {
          socket.destroy();
          return;
        }
      }
    });
  }

  /**
   * The reply to one message from `client` (null: send nothing). `udp` applies RRL and the UDP size
   * limit. Never throws: a message the codec cannot read gets FORMERR (when it has a header) or is dropped.
   */
  answer(msg: Buffer, client: string, udp: boolean): Buffer | null {
    const s = this.stats;
    // Shorter than a header, or a response (QR set): answering could start a reflection loop.
    if (msg.length < 12 || (msg[2] & 0x80) !== 0) {
      s.dropped++;
      return null;
    }
    const reqFlags = msg.readUInt16BE(2);
    const opcodeBits = reqFlags & 0x7800;
    const rd = reqFlags & RD;
    // Header checks before the codec: it allocates arrays of the header's counts (4 × 65535 slots
    // for a 12-byte datagram, ~15 ms of CPU), so a query must look like one before it is decoded.
    if (opcodeBits !== 0) {
      s.count("other", "NOTIMP");
      if (udp && this.limited(client)) return null;
      return bareReply(msg, QR | opcodeBits | rd | RCODE.NOTIMP);
    }
    const arcount = msg.readUInt16BE(10);
    if (msg.readUInt16BE(4) !== 1 || msg.readUInt16BE(6) !== 0 || msg.readUInt16BE(8) !== 0 || arcount > MAX_ADDITIONALS || 17 + arcount * 11 > msg.length) {
      s.count("malformed", "FORMERR");
      if (udp && this.limited(client)) return null;
      return bareReply(msg, QR | opcodeBits | rd | RCODE.FORMERR);
    }
    // Same bytes after the ID (name, type, flags, EDNS) as an earlier query of this view: its reply.
    const key = msg.length <= MAX_CACHED_QUERY ? (udp ? "u" : "t") + msg.toString("latin1", 2) : null;
    const cached = key === null ? undefined : this.cache.get(key);
    if (cached !== undefined && this.view !== null) {
      const who = cached.ecs ?? client;
      const variant = cached.set === null ? "" : rotationKey(cached.set, cached.preferZone ? clientZoneOf(this.view, who) : "", hashString(who));
      const hit = cached.replies.get(variant);
      if (hit !== undefined) {
        this.cache.hits++;
        return this.fromCache(msg, hit, client, udp);
      }
    }
    let q: packet.DecodedPacket;
    try {
      q = packet.decode(msg);
    } catch {
      s.count("malformed", "FORMERR");
      if (udp && this.limited(client)) return null;
      return bareReply(msg, QR | opcodeBits | rd | RCODE.FORMERR);
    }
    try {
      return this.respond(q, client, udp, opcodeBits, rd, key);
    } catch (err) {
      // A bug of ours, not the client's: answer SERVFAIL rather than nothing, and say so once in a while.
      this.log.debug({ err: (err as Error).message }, "dns answer failed");
      s.count("other", "SERVFAIL");
      return bareReply(msg, QR | opcodeBits | rd | RCODE.SERVFAIL);
    }
  }

  /** RRL for a header-only reply (NOTIMP, FORMERR before decoding): over the limit it is dropped (a slip would say no more). */
  private limited(client: string): boolean {
    if (this.rrl.take(client, Date.now()) === "pass") return false;
    this.stats.rrlDropped++;
    return true;
  }

  /** A cached reply with this query's ID, counted and rate limited as the slow path would. */
  private fromCache(msg: Buffer, r: CachedReply, client: string, udp: boolean): Buffer | null {
    const s = this.stats;
    s.count(r.type, r.rcode);
    s.answers += r.answers;
    let out = r.reply;
    if (udp) {
      const action = this.rrl.take(client, Date.now());
      if (action === "drop") {
        s.rrlDropped++;
        return null;
      }
      if (action === "slip") {
        s.rrlSlipped++;
        out = r.slip;
      } else if (r.truncated) s.truncated++;
    }
    // A copy: the cached bytes may still be queued for another client, under its own ID.
    const reply = Buffer.allocUnsafe(out.length);
    out.copy(reply);
    reply[0] = msg[0];
    reply[1] = msg[1];
    return reply;
  }

  private respond(q: packet.DecodedPacket, client: string, udp: boolean, opcodeBits: number, rd: number, key: string | null): Buffer | null {
    const s = this.stats;
    const question = q.questions?.[0];
    const qtype = question ? typeLabel(question.type) : "other";
    // EDNS: at most one OPT record; version 0 only.
    let opt: packet.OptAnswer | null = null;
    let opts = 0;
    for (const a of q.additionals ?? []) if (a.type === "OPT") {
      opt = a as packet.OptAnswer;
      opts++;
    }
    const flagsOut = QR | opcodeBits | rd;
    const reply = (rcode: number, extended = 0) => {
      const label = extended === BADVERS_HIGH ? "BADVERS" : (RCODE_NAMES[rcode] ?? "other");
      s.count(qtype, label);
      const res: packet.Packet = { type: "response", id: q.id, flags: flagsOut | rcode, questions: q.questions ?? [] };
      if (opt) res.additionals = [optRecord(extended, null)];
      return this.finish(res, client, udp, opt, { key, query: { set: null, preferZone: false, ecs: null }, variant: "", type: qtype, rcode: label, answers: 0 });
    };
    if (!question || (q.questions?.length ?? 0) !== 1 || opts > 1) return reply(RCODE.FORMERR);
    if (opt && opt.ednsVersion !== 0) return reply(RCODE.NOERROR, BADVERS_HIGH);
    const view = this.view;
    const name = question.name.toLowerCase().replace(/\.$/, "");
    if (view === null || (name !== view.zone && !name.endsWith(`.${view.zone}`))) return reply(RCODE.REFUSED);
    if (question.class !== "IN" && question.class !== "ANY") return reply(RCODE.REFUSED);

    // The client: EDNS Client Subnet when a resolver sent one, else the source address.
    let who = client;
    let ecs: packet.PacketOpt | null = null;
    for (const o of opt?.options ?? []) {
      const e = o as { code?: number; ip?: string; sourcePrefixLength?: number; family?: number };
      if (e.code === 8 && typeof e.ip === "string" && net.isIP(e.ip) !== 0) {
        who = e.ip;
        ecs = { code: 8, family: e.family, sourcePrefixLength: e.sourcePrefixLength, scopePrefixLength: 0, ip: e.ip } as unknown as packet.PacketOpt;
      }
    }
    const owner = question.name;
    const type = question.type as string;
    const answers: Answer[] = [];
    const authorities: Answer[] = [];
    const additionals: Answer[] = [];
    let rcode: number = RCODE.NOERROR;
    const soa = (): packet.SoaAnswer => ({ name: view.zone, type: "SOA", ttl: view.negativeTtl, class: "IN", data: { ...view.soa } });
    const entry = view.names.get(name);
    // What the reply varies by per client (only A/AAAA answers rotate): the cache's second key.
    let varying: AddressSet | null = null;
    let variant = "";
    if (name === view.zone) {
      if (question.type === "SOA") answers.push({ ...soa(), name: owner, ttl: view.ttl });
      else if (question.type === "NS") {
        for (const ns of view.nameservers) answers.push({ name: owner, type: "NS", ttl: view.ttl, class: "IN", data: ns });
        for (const ns of view.nameservers) {
          const glue = view.names.get(ns);
          if (glue) for (const a of [...glue.v4.all.slice(0, glue.answers), ...glue.v6.all.slice(0, glue.answers)]) additionals.push(addressRecord(ns, a, glue.ttl));
        }
      } else if (type === "ANY") answers.push(rfc8482(owner, view.ttl));
      else authorities.push(soa());
    } else if (entry) {
      if (question.type === "A" || question.type === "AAAA") {
        const set = question.type === "A" ? entry.v4 : entry.v6;
        const zone = entry.locality === "prefer-zone" ? clientZoneOf(view, who) : "";
        if (zone !== "" && ecs !== null) (ecs as { scopePrefixLength?: number }).scopePrefixLength = (ecs as { sourcePrefixLength?: number }).sourcePrefixLength;
        const hash = hashString(who);
        varying = set;
        variant = rotationKey(set, zone, hash);
        for (const a of orderAnswers(set, zone, hash, entry.answers)) answers.push(addressRecord(owner, a, entry.ttl));
        if (answers.length === 0) authorities.push(soa());
      } else if (type === "ANY") answers.push(rfc8482(owner, entry.ttl));
      else authorities.push(soa());
    } else if (view.emptyNonTerminals.has(name)) {
      authorities.push(soa());
    } else {
      rcode = RCODE.NXDOMAIN;
      authorities.push(soa());
    }
    s.count(qtype, RCODE_NAMES[rcode]);
    s.answers += answers.length;
    const res: packet.Packet = {
      type: "response",
      id: q.id,
      flags: flagsOut | AA | rcode,
      questions: q.questions,
      answers,
      authorities,
      additionals: opt ? [...additionals, optRecord(0, ecs)] : additionals,
    };
    const query = { set: varying, preferZone: entry?.locality === "prefer-zone", ecs: ecs === null ? null : who };
    return this.finish(res, client, udp, opt, { key, query, variant, type: qtype, rcode: RCODE_NAMES[rcode], answers: answers.length });
  }

  /**
   * Encodes and keeps the reply in the cache; on UDP truncates (TC, no records) what does not fit the
   * client's size and applies RRL (a slip is the truncated reply).
   */
  private finish(res: packet.Packet, client: string, udp: boolean, opt: packet.OptAnswer | null, slot: CacheSlot): Buffer | null {
    const full = packet.encode(res);
    const remember = (reply: Buffer, slip: Buffer, truncated: boolean) => {
      if (slot.key !== null) this.cache.put(slot.key, slot.query, slot.variant, { reply, slip, type: slot.type, rcode: slot.rcode, answers: slot.answers, truncated });
    };
    if (!udp) {
      remember(full, full, false);
      return full;
    }
    res.flags = (res.flags ?? 0) | TC;
    res.answers = [];
    res.authorities = [];
    res.additionals = (res.additionals ?? []).filter((a) => a.type === "OPT");
    const truncated = packet.encode(res);
    const max = opt ? Math.max(PLAIN_UDP, Math.min(opt.udpPayloadSize, EDNS_PAYLOAD)) : PLAIN_UDP;
    const fits = full.length <= max;
    remember(fits ? full : truncated, truncated, !fits);
    const action = this.rrl.take(client, Date.now());
    if (action === "drop") {
      this.stats.rrlDropped++;
      return null;
    }
    if (action === "slip") {
      this.stats.rrlSlipped++;
      return truncated;
    }
    if (!fits) this.stats.truncated++;
    return fits ? full : truncated;
  }
}

function addressRecord(name: string, a: DnsAddress, ttl: number): Answer {
  return { name, type: net.isIPv4(a.address) ? "A" : "AAAA", ttl, class: "IN", data: a.address };
}

/** RFC 8482: ANY gets one small synthetic record, never the whole name (an amplification favourite). */
function rfc8482(name: string, ttl: number): Answer {
  return { name, type: "HINFO", ttl, class: "IN", data: { cpu: "RFC8482", os: "" } };
}

function optRecord(extendedRcode: number, ecs: packet.PacketOpt | null): Answer {
  return { name: ".", type: "OPT", udpPayloadSize: EDNS_PAYLOAD, extendedRcode, ednsVersion: 0, flags: 0, flag_do: false, options: ecs ? [ecs] : [] } as packet.OptAnswer;
}

/** A header-only reply (FORMERR, SERVFAIL) built from the query's id when its body cannot be trusted. */
function bareReply(msg: Buffer, flags: number): Buffer {
  const out = Buffer.alloc(12);
  msg.copy(out, 0, 0, 2);
  out.writeUInt16BE(flags, 2);
  return out;
}
