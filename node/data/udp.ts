// UDP proxy for one service listener: a flow per client address:port with its own upstream socket
// (connected to the backend), replies sent back from the service socket, idle expiry by a coarse sweep.
import dgram from "node:dgram";
import net from "node:net";
import type { Logger } from "pino";
import { clientAddress } from "../../shared/ip.js";
import type { Exclude } from "../lb/algorithm.js";
import type { ServiceState, Target } from "../model/snapshot.js";
import type { Closable, ServiceCounters, UdpDiscardReason } from "../model/stats.js";
import { terminationOf } from "./access-log.js";
import { admit } from "./admit.js";
import { FDS_PER_FLOW } from "../model/fd-budget.js";
import type { ListenerHost } from "./host.js";
import { proxyV2Header } from "./proxy-protocol.js";
import { limiterFor, type SourceRateLimiter } from "./rate-limit.js";

const MAX_PENDING = 64;

/** Whether a dgram socket is connected (remoteAddress() throws when it is not). Off the hot path: once per flow. */
function isConnected(sock: dgram.Socket): boolean {
  try {
    sock.remoteAddress();
    return true;
  } catch {
    return false;
  }
}

function sendUpstream(flow: Flow, msg: Buffer): void {
  // With a callback, a refused send is counted there instead of becoming an 'error' event.
  if (flow.header !== null) flow.socket.send([flow.header, msg], flow.onSent);
  else flow.socket.send(msg, flow.onSent);
}

class Flow implements Closable {
  lastSeen: number;
  header: Buffer | null = null;
  closed = false;
  /** Datagrams that arrived before the upstream socket finished connecting (bounded). */
  pending: Buffer[] | null = [];
  /** For the access log. */
  readonly start: number;
  bytesIn = 0;
  bytesOut = 0;
  /** One send callback per flow (not per datagram): counts sends the kernel refused. */
  readonly onSent: (err: Error | null) => void;

  constructor(
    readonly listener: UdpListener,
    readonly key: string,
    readonly address: string,
    readonly port: number,
    readonly target: Target,
    readonly socket: dgram.Socket,
    now: number,
  ) {
    this.lastSeen = now;
    this.start = now;
    const counters = listener.counters;
    this.onSent = (err) => {
      if (err !== null) {
        counters.udpDropped++;
        counters.udpDiscarded["send-error"]++;
      }
    };
  }

  close(reason: string): void {
    this.listener.removeFlow(this, reason);
  }
}

export class UdpListener {
  readonly socket: dgram.Socket;
  svc: ServiceState;
  readonly counters: ServiceCounters;
  readonly flows = new Map<string, Flow>();
  limiter: SourceRateLimiter | null = null;
  /** New-flow exclusion (ejected or full backends), built once per service update as in TCP. */
  exclude: Exclude = () => false;
  boundPort = 0;
  error: string | null = null;
  /** Set once close() began: the service socket is gone, nothing may be sent on it. */
  closed = false;
  /** "address|port" of every backend of the service (any state): datagrams from them are loops. */
  private backendEndpoints = new Set<string>();
  private sweeper: NodeJS.Timeout | null = null;
  private readonly debug: boolean;
  /** One reply-send callback for the listener (not one per datagram). */
  private readonly onReplySent = (err: Error | null): void => {
    if (err !== null) this.discard("send-error");
  };

  constructor(
    readonly plane: ListenerHost,
    svc: ServiceState,
    readonly log: Logger,
  ) {
    this.svc = svc;
    this.counters = plane.stats.service(svc.name);
    this.debug = log.isLevelEnabled("debug");
    this.socket = dgram.createSocket({ type: net.isIPv6(plane.bindHost(svc)) ? "udp6" : "udp4", reuseAddr: false });
    this.socket.on("error", (err) => {
      // Sends carry callbacks, so what arrives here is the socket itself failing.
      this.error = err.message;
      log.error({ service: svc.name, err: err.message }, "udp listener error");
    });
    this.socket.on("message", (msg, rinfo) => this.onMessage(msg, rinfo));
    this.update(svc);
  }

  listen(): Promise<void> {
    return new Promise((resolve) => {
      const onError = (err: Error) => {
        this.error = `listen udp ${this.svc.spec.listen}: ${err.message}`;
        resolve();
      };
      this.socket.once("error", onError);
      // exclusive: in a `workers: N` worker the socket is this process's own, not a cluster-shared one
      // (which would hand a flow's datagrams to any worker); outside a cluster worker it changes nothing.
      this.socket.bind({ address: this.plane.bindHost(this.svc), port: this.svc.port, exclusive: true }, () => {
        this.socket.off("error", onError);
        this.error = null;
        this.boundPort = this.socket.address().port;
        // Coarse idle sweep: no timer per datagram or per flow.
        const every = Math.max(100, Math.min(1000, Math.floor(this.svc.spec.timeouts.udpIdle / 4)));
        this.sweeper = setInterval(() => this.sweep(Date.now()), every);
        this.sweeper.unref();
        resolve();
      });
    });
  }

  update(svc: ServiceState): void {
    this.svc = svc;
    this.limiter = limiterFor(this.limiter, svc.spec.limits.sourceRate, svc.spec.limits.sourceBurst, svc.spec.limits.sourceIpv6Prefix);
    this.exclude = this.plane.availabilityExclude(svc);
    const endpoints = new Set<string>();
    // The same "address|port" form as a flow key, so the loop check is one lookup of the key.
    for (const b of svc.backends) endpoints.add(`${b.spec.address}|${b.spec.port}`);
    this.backendEndpoints = endpoints;
  }

  private discard(reason: UdpDiscardReason): void {
    this.counters.udpDropped++;
    this.counters.udpDiscarded[reason]++;
  }

  private onMessage(msg: Buffer, rinfo: dgram.RemoteInfo): void {
    const c = this.counters;
    c.udpDatagramsIn++;
    const key = `${rinfo.address}|${rinfo.port}`;
    const now = Date.now();
    let flow = this.flows.get(key);
    if (flow === undefined) {
      const created = this.createFlow(key, rinfo, now);
      if (created === null) {
        c.udpDropped++;
        return;
      }
      flow = created;
    }
    flow.lastSeen = now;
    const t = flow.target;
    t.stats.bytesIn += msg.length;
    c.bytesIn += msg.length;
    flow.bytesIn += msg.length;
    if (flow.pending !== null) {
      if (flow.pending.length < MAX_PENDING) flow.pending.push(msg);
      else this.discard("queue-full");
      return;
    }
    sendUpstream(flow, msg);
  }

  private createFlow(key: string, rinfo: dgram.RemoteInfo, now: number): Flow | null {
    const svc = this.svc;
    // Checked once per new flow, not per datagram. No reply can go to port 0 (sending one throws).
    if (rinfo.port === 0) {
      this.counters.udpDiscarded["source-port-0"]++;
      return null;
    }
    // A source that is one of the service's backends or one of this node's listeners would make the
    // node relay replies back into itself (one spoofed datagram → tens of thousands of echoes).
    if (this.backendEndpoints.has(key) || this.plane.isOwnUdpEndpoint(rinfo.address, rinfo.port)) {
      this.counters.udpDiscarded.loop++;
      return null;
    }
    const ip = clientAddress(rinfo.address);
    const refused = admit(this.plane.draining, this.flows.size >= svc.spec.limits.maxFlows ? "max-flows" : null, svc, this.limiter, ip, now);
    if (refused !== null) {
      this.counters.refused[refused]++;
      return null;
    }
    const routed = this.plane.router.route(svc, ip, rinfo.port, this.exclude, now);
    if (routed.target === null) {
      this.counters.refused[routed.reason]++;
      return null;
    }
    // Last, so only a flow that would be made spends budget; released in removeFlow().
    if (!this.plane.fds.take(FDS_PER_FLOW)) {
      this.counters.refused["fd-budget"]++;
      return null;
    }
    const target = routed.target;
    const sock = dgram.createSocket(net.isIPv6(target.host) ? "udp6" : "udp4");
    const flow = new Flow(this, key, rinfo.address, rinfo.port, target, sock, now);
    sock.on("error", (err: NodeJS.ErrnoException) => {
      if (this.debug) this.log.debug({ service: svc.name, backend: target.label, err: err.message }, "udp upstream error");
      // ICMP port unreachable surfaces as ECONNREFUSED on a connected UDP socket.
      if (err.code === "ECONNREFUSED") {
        this.counters.udpDropped++;
        this.plane.onConnectFailure(svc, target, "refused");
        return;
      }
      if (flow.pending !== null) {
        // The socket never got made (EMFILE, ENOBUFS…: this node's shortage, not the backend's fault):
        // the flow must not sit in the table holding queued datagrams until the idle sweep.
        this.abandonFlow(flow);
        return;
      }
      this.counters.udpDropped++;
    });
    sock.on("message", (reply) => {
      if (this.closed) {
        // The service socket is gone (listener moved or removed): nothing to reply from.
        this.discard("listener-closed");
        return;
      }
      flow.lastSeen = Date.now();
      target.stats.bytesOut += reply.length;
      flow.bytesOut += reply.length;
      this.counters.bytesOut += reply.length;
      this.counters.udpDatagramsOut++;
      this.socket.send(reply, flow.port, flow.address, this.onReplySent);
    });
    // A connected socket only accepts replies from the backend and reports ICMP unreachable; sends
    // must wait for the connect callback, so the first datagrams queue briefly.
    sock.connect(target.port, target.host, () => {
      // Node calls back also when connect() failed (e.g. EACCES toward a broadcast address): an
      // unconnected socket would take send(msg, cb)'s callback for a port and throw.
      if (!isConnected(sock)) {
        this.abandonFlow(flow);
        return;
      }
      const queued = flow.pending;
      flow.pending = null;
      if (queued !== null && !flow.closed) for (const m of queued) sendUpstream(flow, m);
    });
    if (svc.spec.proxyProtocol === "v2") {
      const local = this.socket.address();
      flow.header = proxyV2Header(rinfo.address, rinfo.port, local.address, local.port, "udp");
    }
    this.flows.set(key, flow);
    target.stats.active++;
    target.stats.connections++;
    target.stats.open.add(flow);
    this.counters.active++;
    this.counters.udpFlows++;
    this.counters.accepted++;
    return flow;
  }

  /** A flow whose upstream socket could not be made or connected: its queued datagrams are dropped, it leaves the table. */
  private abandonFlow(flow: Flow): void {
    if (flow.closed || flow.pending === null) return;
    this.counters.udpDropped += flow.pending.length;
    this.counters.udpDiscarded["no-socket"] += flow.pending.length;
    flow.pending = null;
    this.removeFlow(flow, "shutdown");
  }

  removeFlow(flow: Flow, reason: string): void {
    if (flow.closed) return;
    flow.closed = true;
    this.flows.delete(flow.key);
    flow.target.stats.active--;
    flow.target.stats.open.delete(flow);
    this.counters.active--;
    this.plane.fds.release(FDS_PER_FLOW);
    try {
      flow.socket.close();
    } catch {
      // a socket whose bind failed may already be closed
    }
    this.plane.onConnectionClosed();
    const log = this.plane.accessLog;
    const now = Date.now();
    if (log?.admit(now)) {
      const t = flow.target;
      log.push({
        service: this.svc.name,
        protocol: "udp",
        client: flow.address,
        clientPort: flow.port,
        backend: t.id,
        backendAddress: t.label,
        start: flow.start,
        end: now,
        bytesIn: flow.bytesIn,
        bytesOut: flow.bytesOut,
        termination: terminationOf(reason),
        attempts: 1,
      });
    }
  }

  sweep(now: number): void {
    const idle = this.svc.spec.timeouts.udpIdle;
    for (const flow of this.flows.values()) if (now - flow.lastSeen >= idle) this.removeFlow(flow, "udp idle");
  }

  /**
   * Closes the service socket and ends its flows: a flow's replies can only go out from the service
   * socket, so without it the flow is an upstream socket nobody sweeps (an fd leak).
   */
  close(): Promise<void> {
    if (this.sweeper) clearInterval(this.sweeper);
    this.closed = true;
    for (const flow of [...this.flows.values()]) this.removeFlow(flow, "shutdown");
    return new Promise((resolve) => {
      try {
        this.socket.close(() => resolve());
      } catch {
        resolve();
      }
    });
  }

  /** Ends every flow: at the end of the node's drain grace (UDP has no end of a flow to wait for). */
  closeFlows(): void {
    for (const flow of [...this.flows.values()]) this.removeFlow(flow, "udp drain");
  }
}
