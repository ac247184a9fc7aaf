// TCP full proxy for one service listener: accept, admit (limits, access, rate), pick, connect with a
// timeout and bounded retries on other backends, then relay both ways with backpressure and half-close.
import net from "node:net";
import type { Logger } from "pino";
import { clientAddress } from "../../shared/ip.js";
import type { Exclude } from "../lb/algorithm.js";
import type { ServiceState, Target } from "../model/snapshot.js";
import type { Closable, ConnectFailureReason, RefuseReason, ServiceCounters } from "../model/stats.js";
import { admit } from "./admit.js";
import { FDS_PER_CONNECTION, isLocalResourceError } from "../model/fd-budget.js";
import type { ListenerHost } from "./host.js";
import { proxyV1Header, proxyV2Header } from "./proxy-protocol.js";
import { limiterFor, type SourceRateLimiter } from "./rate-limit.js";

const noop = () => {};

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
    const routed = this.plane.router.route(svc, ip, socket.remotePort ?? 0, this.exclude, now);
    if (routed.target === null) {
      this.plane.fds.release(FDS_PER_CONNECTION);
      this.refuse(socket, ip, routed.reason);
      return;
    }
    this.counters.accepted++;
    new Connection(this, svc, socket, ip, routed.target).connect();
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

  constructor(
    private readonly listener: TcpListener,
    private readonly svc: ServiceState,
    private readonly client: net.Socket,
    private readonly ip: string,
    private target: Target,
  ) {
    listener.counters.active++;
    client.setTimeout(svc.spec.timeouts.idle);
    client.on("timeout", () => this.close("idle timeout"));
    client.on("close", () => this.finish());
  }

  connect(): void {
    const t = this.target;
    t.stats.active++;
    t.stats.connections++;
    t.stats.open.add(this);
    this.attempts++;
    this.connectStart = performance.now();
    const up = net.connect({ host: t.host, port: t.port, allowHalfOpen: true, noDelay: true });
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
      // The socket's own spelling of the client (the header keeps its family as the socket saw it).
      const src = this.client.remoteAddress ?? this.ip;
      const srcPort = this.client.remotePort ?? 0;
      const dst = this.client.localAddress ?? "";
      const dstPort = this.client.localPort ?? 0;
      up.write(pp === "v1" ? proxyV1Header(src, srcPort, dst, dstPort) : proxyV2Header(src, srcPort, dst, dstPort, "tcp"));
    }
    this.relay(up);
  }

  private relay(up: net.Socket): void {
    const client = this.client;
    const bs = this.target.stats;
    const sc = this.listener.counters;
    client.on("data", (chunk: Buffer) => {
      bs.bytesIn += chunk.length;
      sc.bytesIn += chunk.length;
      if (!up.write(chunk)) client.pause();
    });
    up.on("drain", () => client.resume());
    client.on("end", () => {
      up.end();
      this.onHalfClose();
    });
    up.on("data", (chunk: Buffer) => {
      bs.bytesOut += chunk.length;
      sc.bytesOut += chunk.length;
      if (!client.write(chunk)) up.pause();
    });
    client.on("drain", () => up.resume());
    up.on("end", () => {
      client.end();
      this.onHalfClose();
    });
    client.resume();
  }

  /** One side sent its FIN: the shorter half-closed timeout applies from now on. */
  private onHalfClose(): void {
    const t = this.svc.spec.timeouts;
    if (t.halfClosed < t.idle) this.client.setTimeout(t.halfClosed);
  }

  private onUpstreamError(up: net.Socket, err: NodeJS.ErrnoException): void {
    if (this.connected) {
      // Established: a reset from the backend ends the session for the client too.
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
      this.client.destroy();
      return;
    }
    const reason = classifyConnectError(err.code);
    plane.onConnectFailure(this.svc, failed, reason);
    if (this.attempts > this.svc.spec.limits.retries) {
      this.client.destroy();
      return;
    }
    if (this.tried === null) this.tried = [];
    const tried = this.tried;
    tried.push(failed);
    const base = this.listener.exclude;
    const next = plane.router.route(this.svc, this.ip, this.client.remotePort ?? 0, (t) => tried.includes(t as Target) || base(t), Date.now());
    if (next.target === null) {
      this.listener.counters.refused[next.reason]++;
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

  close(_reason: string): void {
    this.client.destroy();
    this.upstream?.destroy();
  }

  private finish(): void {
    if (this.finished) return;
    this.finished = true;
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
    this.listener.counters.active--;
    this.listener.plane.fds.release(FDS_PER_CONNECTION);
    this.listener.plane.onConnectionClosed();
  }
}
