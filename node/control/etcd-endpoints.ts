// Which etcd endpoints answer, and moving this node's calls off one that does not (issue 19).
//
// etcd3 picks an endpoint at random for every call and every stream and keeps no memory of failures
// (its per-endpoint circuit breaker is off: see etcd-store.ts), and a stream, once open, stays on its
// endpoint until gRPC's keepalive gives up on the connection (15 s). When one member of a cluster
// dies without closing its connections (a killed container, a partition, a paused process), the
// node's lease keepalives, its watch and a share of its writes sit on that member: keepalives went
// unanswered for 2 × TTL, the node counted its leases lost and went to fallback although the
// cluster kept quorum (chaos 6, one of three members killed). The etcd Go client and HAProxy do the
// same thing here: check each server on its own, and stop sending to one that fails.
//
// So each endpoint is asked, once a second and with a one-second deadline, for its status on a
// connection of its own. An endpoint that does not answer, or answers without a raft leader, while
// another one answers in the same round is *avoided*: new calls and streams go to the others, and
// the calls and streams open on it are cancelled (UNAVAILABLE), so etcd3 re-opens them elsewhere at
// once instead of after the keepalive timeout. When no endpoint answers, that is an etcd outage, not
// an endpoint's: nothing is avoided and the store's fail-static handling applies as before. An
// avoided endpoint is used again after one answered round.

import { Channel, type ChannelCredentials, type ChannelOptions, status as GrpcStatus } from "@grpc/grpc-js";
import type { Etcd3 } from "etcd3";
import { describe, type FaultPolicy, faultPolicy } from "./etcd-common.js";

/** How often each endpoint is asked, and how long an answer may take. */
export const ENDPOINT_PROBE_INTERVAL_MS = 1_000;
export const ENDPOINT_PROBE_TIMEOUT_MS = 1_000;
/**
 * An avoided endpoint that did not answer is asked only every this many rounds (one that answered
 * without a raft leader, every round: it is reachable, and elections end). Its name may no longer
 * resolve, and a lookup that hangs (10 s on a Docker network without outside DNS, measured) holds one of libuv's
 * four threads, which every lookup shares: asked every second, a dead member's name starved the
 * lookups of the live members' names, and the node's calls waited "for name resolution" (chaos 6).
 */
export const AVOIDED_PROBE_EVERY = 5;
const NO_LEADER = "it has no raft leader";

export interface EndpointState {
  /** As configured, e.g. "http://10.0.0.5:2379". */
  endpoint: string;
  /** false: calls avoid it (it failed its probe while another endpoint answered). */
  up: boolean;
  /** Why it is avoided (the probe's error), or null. */
  reason: string | null;
  /** Transitions to avoided since start. */
  avoidances: number;
}

export type EndpointChange = (state: Readonly<EndpointState>) => void;

/** A call on a channel (grpc-js's internal call interface, not the surface call it exports as Call). */
type GrpcCall = ReturnType<Channel["createCall"]>;

/** A call etcd3 should place on another endpoint (not recoverable: etcd3 moves on without closing anything). */
export class EndpointAvoidedError extends Error {
  constructor(address: string, reason: string | null) {
    super(`etcd endpoint ${address} avoided: ${reason ?? "it failed its health probe"}`);
    this.name = "EndpointAvoidedError";
  }
}

function addressOf(endpoint: string): string {
  // etcd3 strips the scheme before it names a channel (connection-pool.js removeProtocolPrefix).
  return endpoint.replace(/^https?:\/\//, "");
}

interface Tracked {
  readonly state: EndpointState;
  readonly address: string;
  /** Calls started on this endpoint's channels and not yet ended. */
  readonly calls: Set<GrpcCall>;
  probe: Etcd3 | null;
  /** Rounds since this endpoint was last asked (an avoided one is asked every AVOIDED_PROBE_EVERY). */
  skipped: number;
  /** Its last probe got no answer at all (a member answering "no leader" is reachable: asked every round). */
  silent: boolean;
}

/**
 * Endpoint health for one EtcdStore. `channelFactory()` and `hostPolicy()` plug into etcd3's options;
 * `start()` begins probing (only worth it with more than one endpoint).
 */
export class EtcdEndpoints {
  private readonly byAddress = new Map<string, Tracked>();
  private timer: NodeJS.Timeout | undefined;
  private probing = false;
  private closed = false;

  constructor(
    endpoints: readonly string[],
    private readonly probeClient: (endpoint: string) => Etcd3,
    private readonly onChange: EndpointChange = () => {},
  ) {
    for (const endpoint of endpoints) {
      const address = addressOf(endpoint);
      this.byAddress.set(address, { state: { endpoint, up: true, reason: null, avoidances: 0 }, address, calls: new Set(), probe: null, skipped: 0, silent: false });
    }
  }

  /** Every endpoint's state, in configuration order. */
  states(): EndpointState[] {
    return [...this.byAddress.values()].map((t) => ({ ...t.state }));
  }

  /**
   * gRPC options for the store's client: its channels are made here so that the calls on each
   * endpoint are known and can be cancelled when it is avoided. (grpc-js reads channelFactoryOverride
   * from a copy of the options, per client: every endpoint's channel comes through here.)
   */
  channelFactory(): (address: string, credentials: ChannelCredentials, options: ChannelOptions) => Channel {
    return (address, credentials, options) => {
      const channel = new Channel(address, credentials, options);
      const calls = this.byAddress.get(address)?.calls;
      if (calls === undefined) return channel; // not one of ours (cannot happen: etcd3 names channels by endpoint)
      const createCall = channel.createCall.bind(channel);
      channel.createCall = (method, deadline, host, parentCall, propagateFlags) => {
        const call = createCall(method, deadline, host, parentCall, propagateFlags);
        const start = call.start.bind(call);
        call.start = (metadata, listener) => {
          calls.add(call);
          start(metadata, {
            onReceiveMetadata: (m) => listener.onReceiveMetadata(m),
            onReceiveMessage: (m) => listener.onReceiveMessage(m),
            onReceiveStatus: (s) => {
              calls.delete(call);
              listener.onReceiveStatus(s);
            },
          });
        };
        return call;
      };
      return channel;
    };
  }

  /** etcd3's per-endpoint fault policy: refuses (so etcd3 tries the next endpoint) while the endpoint is avoided. */
  hostPolicy(endpoint: string): FaultPolicy {
    const tracked = this.byAddress.get(addressOf(endpoint));
    return faultPolicy(async (fn) => {
      if (tracked !== undefined && this.avoided(tracked)) throw new EndpointAvoidedError(tracked.address, tracked.state.reason);
      return fn();
    });
  }

  start(): void {
    if (this.closed || this.timer !== undefined || this.byAddress.size < 2) return;
    this.timer = setInterval(() => void this.round(), ENDPOINT_PROBE_INTERVAL_MS);
    this.timer.unref();
  }

  close(): void {
    this.closed = true;
    clearInterval(this.timer);
    for (const t of this.byAddress.values()) {
      t.probe?.close();
      t.probe = null;
    }
  }

  /** Avoided only while some other endpoint is up: with none up, every endpoint stays worth a try. */
  private avoided(t: Tracked): boolean {
    if (t.state.up) return false;
    for (const other of this.byAddress.values()) if (other.state.up) return true;
    return false;
  }

  /** One probe of every endpoint; states change only after all answered or timed out. */
  async round(): Promise<void> {
    if (this.probing || this.closed) return;
    this.probing = true;
    try {
      const all = [...this.byAddress.values()].filter((t) => t.state.up || !t.silent || ++t.skipped >= AVOIDED_PROBE_EVERY);
      for (const t of all) t.skipped = 0;
      const results = await Promise.all(all.map((t) => this.probe(t)));
      if (this.closed) return;
      const anyAnswered = results.some((r) => r === null);
      all.forEach((t, i) => {
        const failure = results[i];
        t.silent = failure !== null && failure !== NO_LEADER;
        if (failure === null) {
          if (!t.state.up) {
            t.state.up = true;
            t.state.reason = null;
            this.onChange(t.state);
          }
        } else if (t.state.up && anyAnswered) {
          t.state.up = false;
          t.state.reason = failure;
          t.state.avoidances++;
          this.cancelCalls(t, failure);
          this.onChange(t.state);
        } else if (!t.state.up) {
          t.state.reason = failure;
        }
      });
    } finally {
      this.probing = false;
    }
  }

  /** null: the endpoint answered with a leader; else why not. */
  private async probe(t: Tracked): Promise<string | null> {
    try {
      t.probe ??= this.probeClient(t.state.endpoint);
      const status = await t.probe.maintenance.status({ deadline: Date.now() + ENDPOINT_PROBE_TIMEOUT_MS });
      // A member cut off from the others still answers Status, without a leader: it cannot serve writes.
      if (status.leader === "0" || status.leader === "") return NO_LEADER;
      return null;
    } catch (err) {
      return describe(err);
    }
  }

  private cancelCalls(t: Tracked, reason: string): void {
    const calls = [...t.calls];
    t.calls.clear();
    for (const call of calls) {
      try {
        call.cancelWithStatus(GrpcStatus.UNAVAILABLE, `etcd endpoint ${t.address} avoided (${reason}): moving to another endpoint`);
      } catch {
        // a call that already ended
      }
    }
  }
}
