// TCP full proxy for one service listener: accept, admit (limits, access, rate), pick, connect with a
// timeout and bounded retries on other backends, then relay both ways with backpressure and half-close.
import net from "node:net";
import type { Logger } from "pino";
import { clientAddress } from "../../shared/ip.js";
import type { Exclude } from "../lb/algorithm.js";
import type { ServiceState, Target } from "../model/snapshot.js";
import type { Closable, ConnectFailureReason, RefuseReason, ServiceCounters } from "../model/stats.js";
import { type Termination, terminationOf } from "./access-log.js";
import { admit } from "./admit.js";
import { FDS_PER_CONNECTION, isLocalResourceError } from "../model/fd-budget.js";
import type { ListenerHost } from "./host.js";
import { type ProxyHeader, parseProxyHeader, proxyV1Header, proxyV2Header } from "./proxy-protocol.js";
import { limiterFor, type SourceRateLimiter } from "./rate-limit.js";

const noop = () => {};

/** acceptProxy: the header must arrive within this long and this many bytes (v2 with TLVs included). */
const PROXY_HEADER_TIMEOUT_MS = 3000;
const PROXY_HEADER_MAX = 4096;

/**
 * Reads the PROXY header a trusted balancer sends first. Calls `done` once with the header and the bytes
 * that followed it (the start of the client's stream), or with null when the peer sent something else,
 * too much, or nothing in time. The socket is left paused.
 */
function readProxyHeader(socket: net.Socket, version: "v1" | "v2", done: (h: ProxyHeader | null, rest: Buffer | null, eof: { ended: boolean }) => void): void {
  let buf: Buffer = Buffer.alloc(0);
  // A client that sends its FIN with the header: 'end' can fire before the relay listens for it, so
  // it is remembered here and the relay forwards it.
  const eof = { ended: false };
  socket.once("end", () => {
    eof.ended = true;
  });
  let settled = false;
  const finish = (h: ProxyHeader | null, rest: Buffer | null) => {
    if (settled) return;
    settled = true;
    clearTimeout(timer);
    socket.off("data", onData);
    socket.off("close", onClose);
    socket.pause();
    done(h, rest, eof);
  };
  const onData = (chunk: Buffer) => {
    buf = buf.length === 0 ? chunk : Buffer.concat([buf, chunk]);
    const h = parseProxyHeader(buf);
    if (h !== null) {
      // The version the service expects, and a header that names a TCP client (or LOCAL: a health check).
      if ((h.version === 1) !== (version === "v1") || h.transport !== "tcp") finish(null, null);
      else finish(h, buf.length > h.length ? buf.subarray(h.length) : null);
      return;
    }
    // Not (yet) a header: give up once it cannot be one (a v1 line is at most 107 bytes).
    if (buf.length >= PROXY_HEADER_MAX || (version === "v1" && buf.length >= 107) || !couldBeHeader(buf)) finish(null, null);
  };
  const onClose = () => finish(null, null);
  const timer = setTimeout(() => finish(null, null), PROXY_HEADER_TIMEOUT_MS);
  socket.on("data", onData);
  socket.on("close", onClose);
  socket.resume();
}

/** Whether `buf` is a prefix of a v1 or v2 header (so more bytes are worth waiting for). */
function couldBeHeader(buf: Buffer): boolean {
  const v1 = Buffer.from("PROXY ");
  const v2 = Buffer.from([0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a]);
  const n1 = Math.min(buf.length, v1.length);
  const n2 = Math.min(buf.length, v2.length);
  return buf.compare(v1, 0, n1, 0, n1) === 0 || buf.compare(v2, 0, n2, 0, n2) === 0;
}

export function classifyConnectError(code: string | undefined): ConnectFailureReason {
  switch (code) {
    case "ECONNREFUSED":
      return "refused";
    case "ETIMEDOUT":
      return "timeout";
    case "ECONNRESET":
    case "EPIPE":
      return "reset";
    case "EHOSTUNREACH":
    case "ENETUNREACH":
    case "EADDRNOTAVAIL":
      return "unreachable";
    default:
      return "other";
  }
}

export class TcpListener {
  readonly server: net.Server;
  svc: ServiceState;
  readonly counters: ServiceCounters;
  limiter: SourceRateLimiter | null = null;
  /** First-attempt exclusion: ejected or full backends. Built once per service update, not per connection. */
  exclude: Exclude = () => false;
  boundPort = 0;
  error: string | null = null;
  private readonly debug: boolean;

  constructor(
    readonly plane: ListenerHost,
    svc: ServiceState,
    readonly log: Logger,
  ) {
    this.svc = svc;
    this.counters = plane.stats.service(svc.name);
    this.debug = log.isLevelEnabled("debug");
    // allowHalfOpen: a client that shuts its write side still gets the reply.
    this.server = net.createServer({ allowHalfOpen: true, pauseOnConnect: true, noDelay: true }, (socket) => this.accept(socket));
    this.server.on("error", (err) => {
      this.error = err.message;
      log.error({ service: svc.name, err: err.message }, "listener error");
    });
    this.update(svc);
  }

  listen(): Promise<void> {
    return new Promise((resolve) => {
      const onError = (err: Error) => {
        this.error = `listen ${this.svc.spec.listen}: ${err.message}`;
        resolve();
      };
      this.server.once("error", onError);
      this.server.listen({ host: this.plane.bindHost(this.svc), port: this.svc.port }, () => {
        this.server.off("error", onError);
        this.error = null;
        this.boundPort = (this.server.address() as net.AddressInfo).port;
        resolve();
      });
    });
  }

  update(svc: ServiceState): void {
    this.svc = svc;
    this.limiter = limiterFor(this.limiter, svc.spec.limits.sourceRate, svc.spec.limits.sourceBurst, svc.spec.limits.sourceIpv6Prefix);
    this.exclude = this.plane.availabilityExclude(svc);
  }

  close(): Promise<void> {
    return new Promise((resolve) => this.server.close(() => resolve()));
  }

  private refuse(socket: net.Socket, ip: string, reason: RefuseReason): void {
    this.counters.refused[reason]++;
    if (this.debug) this.log.debug({ service: this.svc.name, client: ip, reason }, "connection refused");
    // RST at once: the client learns quickly and we hold no state for it.
    socket.resetAndDestroy();
  }

  private accept(socket: net.Socket): void {
    socket.on("error", noop);
    const svc = this.svc;
    const raw = socket.remoteAddress;
    if (raw === undefined) {
      socket.destroy();
      return;
    }
    const ip = clientAddress(raw);
    if (svc.proxyFrom !== null) {
      if (this.plane.draining) {
        this.refuse(socket, ip, "draining");
        return;
      }
      // Only the balancers in front may speak for a client; the rest are refused before any byte is read.
      if (!svc.proxyFrom.permits(ip)) {
        this.refuse(socket, ip, "proxy-header");
        return;
      }
      const version = svc.spec.acceptProxy.version as "v1" | "v2";
      readProxyHeader(socket, version, (h, rest, eof) => {
        if (h === null) {
          if (!socket.destroyed) this.refuse(socket, ip, "proxy-header");
          else this.counters.refused["proxy-header"]++;
          return;
        }
        if (h.local) this.admitClient(socket, ip, socket.remotePort ?? 0, null, 0, rest, eof);
        else this.admitClient(socket, clientAddress(h.src), h.srcPort, h.dst, h.dstPort, rest, eof);
      });
      return;
    }
    this.admitClient(socket, ip, socket.remotePort ?? 0, null, 0, null, null);
  }

  /**
   * Admission and the pick for a client at `ip:port` (the socket's peer, or the client a trusted
   * balancer's PROXY header names; then `dst` is the address it connected to and `head` the bytes that
   * followed the header).
   */
  private admitClient(socket: net.Socket, ip: string, port: number, dst: string | null, dstPort: number, head: Buffer | null, eof: { ended: boolean } | null): void {
    const svc = this.svc;
    const now = Date.now();
    const max = svc.spec.limits.maxConnections;
    const refused = admit(this.plane.draining, max > 0 && this.counters.active >= max ? "max-connections" : null, svc, this.limiter, ip, now);
    if (refused !== null) {
      this.refuse(socket, ip, refused);
      return;
    }
    // Before the pick: a refused connection must not leave an affinity entry behind. Released in finish().
    if (!this.plane.fds.take(FDS_PER_CONNECTION)) {
      this.refuse(socket, ip, "fd-budget");
      return;
    }
    const routed = this.plane.router.route(svc, ip, port, this.exclude, now);
    if (routed.target === null) {
      this.plane.fds.release(FDS_PER_CONNECTION);
      this.refuse(socket, ip, routed.reason);
      return;
    }
    this.counters.accepted++;
    new Connection(this, svc, socket, ip, routed.target, port, dst, dstPort, head, eof).connect();
  }
}

/**
 * Both directions read through net.Socket `onread` instead of a fresh 64 KiB allocation per read (page
 * faults, cache-cold copies in the kernel) and the readable-stream machinery ('data' events) per chunk:
 * on loopback iperf3 through a bare relay, 3.0 → 0.9 CPU s per GB relayed (see the commits).
 * - Every read of a quiet direction lands in one scratch buffer the whole process shares, and its bytes
 *   are copied out (a small pooled allocation, as Node's own read path makes) before the callback
 *   returns, so nothing can still refer to the scratch buffer when the next read arrives on any
 *   connection: an idle or keep-alive connection holds no read buffer of its own.
 * - A read of SMALL_READ bytes or more moves that direction to a large buffer of its own from a shared
 *   pool, written from without a copy (bulk), and it goes back to the scratch buffer after a run of
 *   small reads, returning the large one. A buffer of its own is never read into while a write of its
 *   bytes is pending: the direction stops reading until that write completes.
 */
const SMALL_READ = 4096;
const LARGE_READ = 65536;
const LARGE_POOL_MAX = 64;
/** Consecutive reads under SMALL_READ before a direction gives its large buffer back. */
const SMALL_READS_TO_SHRINK = 16;
const largePool: Buffer[] = [];
const scratch = Buffer.allocUnsafeSlow(LARGE_READ);

/**
 * Node 20 takes `onread` only for sockets it creates (net.connect), not for accepted ones. An accepted
 * socket with pauseOnConnect has not read yet, so it can be given the same user buffer the constructor
 * would have set up: the three per-socket slots `onread` fills (own symbol properties of every
 * net.Socket) and the handle's useUserBuffer(). Found once by their names; if a Node version lacks
 * them, accepted sockets keep 'data' events (readIntoUserBuffer returns false).
 */
const socketSlots = (() => {
  const probe = new net.Socket();
  const find = (name: string) => Object.getOwnPropertySymbols(probe).find((s) => s.description === name);
  const slots = { buffer: find("kBuffer"), callback: find("kBufferCb"), generator: find("kBufferGen") };
  probe.destroy();
  return slots.buffer !== undefined && slots.callback !== undefined && slots.generator !== undefined ? (slots as { buffer: symbol; callback: symbol; generator: symbol }) : null;
})();

/** Makes a paused accepted socket read through `onread`, as net.connect({onread}) does. False: not possible here. */
function readIntoUserBuffer(socket: net.Socket, onread: Pump["onread"]): boolean {
  const slots = socketSlots;
  const s = socket as unknown as Record<symbol, unknown> & { _handle?: { reading?: boolean; useUserBuffer?: (b: Buffer) => void } | null };
  const handle = s._handle;
  // Only before the first read: bytes already pushed into the readable side would be skipped.
  if (slots === null || handle == null || typeof handle.useUserBuffer !== "function" || handle.reading === true || s[slots.buffer] !== null || socket.readableLength > 0) return false;
  const buf = onread.buffer();
  s[slots.buffer] = buf;
  s[slots.generator] = onread.buffer;
  s[slots.callback] = onread.callback;
  handle.useUserBuffer(buf);
  return true;
}

/** One direction of the relay: reads from `src` (through the scratch buffer or its own) and writes each read to `dst`. */
class Pump {
  /** Where reads go; null until the relay runs and once the connection has finished (reads then stop). */
  dst: net.Socket | null = null;
  src: net.Socket | null = null;
  /** This direction's own large buffer while it carries bulk; null: reads go to the shared scratch buffer. */
  private own: Buffer | null = null;
  private smallReads = 0;
  /** Reading stopped until the pending write completes. */
  stopped = false;
  /** Write callback: the chunk has left, so its buffer may be read into again. */
  private readonly afterWrite = (): void => {
    if (!this.stopped) return;
    this.stopped = false;
    this.src?.resume();
  };
  readonly onread = {
    buffer: (): Buffer => this.own ?? scratch,
    callback: (n: number, buf: Buffer): boolean => this.onRead(n, buf),
  };

  constructor(
    private readonly conn: Connection,
    private readonly toBackend: boolean,
  ) {}

  /**
   * n bytes from `src` are in buf. Returns false to stop reading until that write completes
   * (afterWrite) — a pending write may still hold buf, so nothing may be read into it before then. Not
   * 'drain': that fires only after write() returned false, i.e. past the high-water mark.
   */
  private onRead(n: number, buf: Buffer): boolean {
    const dst = this.dst;
    if (dst === null) return false;
    this.conn.count(this.toBackend, n);
    let out: Buffer;
    let shrink = false;
    if (buf === scratch) {
      out = Buffer.allocUnsafe(n);
      scratch.copy(out, 0, 0, n);
      if (n >= SMALL_READ) {
        this.own = largePool.pop() ?? Buffer.allocUnsafeSlow(LARGE_READ);
        this.smallReads = 0;
      }
    } else {
      out = buf.subarray(0, n);
      // Only after a run of small reads: a stream arriving in MTU-sized pieces has small reads between
      // large ones, and going back and forth would cost a copy each time.
      if (n >= SMALL_READ) this.smallReads = 0;
      else shrink = ++this.smallReads >= SMALL_READS_TO_SHRINK;
    }
    dst.write(out, this.afterWrite);
    // Written through to the kernel at once (nothing queued): buf is free again.
    const free = dst.writableLength === 0;
    if (!free) this.stopped = true;
    else if (shrink) {
      if (largePool.length < LARGE_POOL_MAX) largePool.push(buf);
      this.own = null;
    }
    return free;
  }

  /**
   * The connection finished: no more reads are relayed. Its large buffer goes back to the pool only
   * when nothing can still read into it or send from it (`srcDone`: its socket is destroyed).
   */
  finish(srcDone: boolean): void {
    this.dst = null;
    const own = this.own;
    if (own !== null && !this.stopped && srcDone && largePool.length < LARGE_POOL_MAX) largePool.push(own);
    this.own = null;
  }
}

/** One proxied connection. Its state lives in fields, so the relay handlers are bound once per connection. */
class Connection implements Closable {
  private upstream: net.Socket | null = null;
  private connected = false;
  private finished = false;
  private attempts = 0;
  private tried: Target[] | null = null;
  private connectStart = 0;
  /** For the access log: when it began, bytes each way, and the first cause of its end. */
  private readonly start = Date.now();
  private bytesIn = 0;
  private bytesOut = 0;
  private ended: Termination | null = null;
  /** Backend → client: the upstream socket reads through it from its connect on. */
  private readonly fromBackend = new Pump(this, false);
  /** Client → backend: null when the client socket could not take a user buffer ('data' events then). */
  private fromClient: Pump | null = null;

  constructor(
    private readonly listener: TcpListener,
    private readonly svc: ServiceState,
    private readonly client: net.Socket,
    private readonly ip: string,
    private target: Target,
    private readonly port: number,
    /** With acceptProxy: the address the client connected to (from its header); null: this socket's. */
    private readonly dst: string | null,
    private readonly dstPort: number,
    /** With acceptProxy: client bytes that came with the header, sent before anything else. */
    private head: Buffer | null,
    private readonly eof: { ended: boolean } | null,
  ) {
    listener.counters.active++;
    client.setTimeout(svc.spec.timeouts.idle);
    client.on("timeout", () => this.close("idle timeout"));
    client.on("close", (hadError) => this.finish(hadError));
  }

  /** Relayed bytes: the backend's, the service's and this connection's counters. */
  count(toBackend: boolean, n: number): void {
    if (toBackend) {
      this.target.stats.bytesIn += n;
      this.listener.counters.bytesIn += n;
      this.bytesIn += n;
    } else {
      this.target.stats.bytesOut += n;
      this.listener.counters.bytesOut += n;
      this.bytesOut += n;
    }
  }

  connect(): void {
    const t = this.target;
    t.stats.active++;
    t.stats.connections++;
    t.stats.open.add(this);
    this.attempts++;
    this.connectStart = performance.now();
    const up = net.connect({ host: t.host, port: t.port, allowHalfOpen: true, noDelay: true, onread: this.fromBackend.onread });
    this.upstream = up;
    up.setTimeout(this.svc.spec.timeouts.connect);
    up.once("timeout", () => {
      if (!this.connected) up.destroy(Object.assign(new Error("connect timeout"), { code: "ETIMEDOUT" }));
    });
    up.once("connect", () => this.onConnect(up));
    up.on("error", (err: NodeJS.ErrnoException) => this.onUpstreamError(up, err));
    up.on("close", () => {
      // A backend that closed cleanly has had client.end() called: let the client's write queue
      // flush (the idle timeout still bounds it). Anything else ends the client at once.
      if (this.connected && !this.client.writableEnded) this.client.destroy();
    });
  }

  private onConnect(up: net.Socket): void {
    if (this.finished) {
      up.destroy();
      return;
    }
    this.connected = true;
    up.setTimeout(0);
    const plane = this.listener.plane;
    plane.onConnected(this.svc, this.target, (performance.now() - this.connectStart) / 1000);
    const pp = this.svc.spec.proxyProtocol;
    if (pp !== "none") {
      // From a trusted balancer's header: its client and destination. Otherwise the socket's own
      // spelling of the client (the header keeps its family as the socket saw it).
      const src = this.dst !== null ? this.ip : (this.client.remoteAddress ?? this.ip);
      const srcPort = this.port;
      const dst = this.dst ?? this.client.localAddress ?? "";
      const dstPort = this.dst !== null ? this.dstPort : (this.client.localPort ?? 0);
      up.write(pp === "v1" ? proxyV1Header(src, srcPort, dst, dstPort) : proxyV2Header(src, srcPort, dst, dstPort, "tcp"));
    }
    if (this.head !== null) {
      this.count(true, this.head.length);
      up.write(this.head);
      this.head = null;
    }
    this.relay(up);
  }

  private relay(up: net.Socket): void {
    const client = this.client;
    // A client whose PROXY header was read ('data' events) may have more bytes queued in its readable
    // side: it keeps 'data'. Any other was paused since its accept and reads through a user buffer.
    const pump = new Pump(this, true);
    if (this.eof === null && readIntoUserBuffer(client, pump.onread)) {
      pump.src = client;
      pump.dst = up;
      this.fromClient = pump;
    } else {
      client.on("data", (chunk: Buffer) => {
        this.count(true, chunk.length);
        if (!up.write(chunk)) client.pause();
      });
      up.on("drain", () => client.resume());
    }
    client.on("end", () => {
      this.ended ??= "client-closed";
      up.end();
      this.onHalfClose();
    });
    this.fromBackend.src = up;
    this.fromBackend.dst = client;
    up.on("end", () => {
      this.ended ??= "backend-closed";
      client.end();
      this.onHalfClose();
    });
    if (this.eof?.ended) {
      this.ended ??= "client-closed";
      up.end();
      this.onHalfClose();
    }
    // Flowing, so each side's EOF is delivered as 'end' (with a user buffer its bytes come through
    // onread, not 'data').
    client.resume();
    up.resume();
  }

  /** One side sent its FIN: the shorter half-closed timeout applies from now on. */
  private onHalfClose(): void {
    const t = this.svc.spec.timeouts;
    if (t.halfClosed < t.idle) this.client.setTimeout(t.halfClosed);
  }

  private onUpstreamError(up: net.Socket, err: NodeJS.ErrnoException): void {
    if (this.connected) {
      // Established: a reset from the backend ends the session for the client too.
      this.ended ??= "backend-reset";
      this.client.destroy();
      return;
    }
    if (up !== this.upstream || this.finished) return;
    const failed = this.target;
    this.release(failed);
    const plane = this.listener.plane;
    if (isLocalResourceError(err.code)) {
      // This node could not make the socket: not the backend's failure (no ejection), and another
      // backend would fare no better right now.
      this.listener.counters.refused["local-resources"]++;
      this.ended ??= "connect-failed";
      this.client.destroy();
      return;
    }
    const reason = classifyConnectError(err.code);
    plane.onConnectFailure(this.svc, failed, reason);
    if (this.attempts > this.svc.spec.limits.retries) {
      this.ended ??= "connect-failed";
      this.client.destroy();
      return;
    }
    if (this.tried === null) this.tried = [];
    const tried = this.tried;
    tried.push(failed);
    const base = this.listener.exclude;
    const next = plane.router.route(this.svc, this.ip, this.port, (t) => tried.includes(t as Target) || base(t), Date.now());
    if (next.target === null) {
      this.listener.counters.refused[next.reason]++;
      this.ended ??= "connect-failed";
      this.client.destroy();
      return;
    }
    this.listener.counters.retries++;
    this.target = next.target;
    this.connect();
  }

  private release(t: Target): void {
    t.stats.active--;
    t.stats.open.delete(this);
  }

  close(reason: string): void {
    this.ended ??= terminationOf(reason);
    this.client.destroy();
    this.upstream?.destroy();
  }

  private finish(hadError: boolean): void {
    if (this.finished) return;
    this.finished = true;
    this.ended ??= hadError ? "client-reset" : this.connected ? "client-closed" : "client-aborted";
    const up = this.upstream;
    if (up !== null && this.connected && up.writableEnded && !up.writableFinished && !up.destroyed) {
      // The client closed cleanly after its FIN was forwarded: let the upstream flush what it still
      // holds for the backend (bounded by the idle timeout), then close it; nobody reads it any more.
      up.setTimeout(this.svc.spec.timeouts.idle);
      up.once("timeout", () => up.destroy());
      up.once("finish", () => up.destroy());
    } else up?.destroy();
    if (this.connected || this.upstream !== null) {
      // The current target holds this connection unless a failed attempt already released it.
      if (this.target.stats.open.has(this)) this.release(this.target);
    }
    // An upstream kept open to flush its writes could still read into its buffer; the client is closed.
    this.fromBackend.finish(up === null || up.destroyed);
    this.fromClient?.finish(true);
    this.listener.counters.active--;
    const plane = this.listener.plane;
    plane.fds.release(FDS_PER_CONNECTION);
    plane.onConnectionClosed();
    const log = plane.accessLog;
    const now = Date.now();
    if (log?.admit(now)) {
      const t = this.target;
      log.push({
        service: this.svc.name,
        protocol: "tcp",
        client: this.ip,
        clientPort: this.port,
        backend: t.id,
        backendAddress: t.label,
        start: this.start,
        end: now,
        bytesIn: this.bytesIn,
        bytesOut: this.bytesOut,
        termination: this.ended,
        attempts: this.attempts,
      });
    }
  }
}
