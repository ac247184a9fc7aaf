// The one schema for everything people write: service and backend records (etcd values or YAML
// entries) and the node's config file. Defaults live here and nowhere else; unknown keys are rejected.
import net from "node:net";
import { z } from "zod";
import { parseHostPort } from "./address.js";
import { parseDuration } from "./duration.js";
import { BACKEND_ID, NODE_ID, SERVICE_NAME } from "./keys.js";

/**
 * Node's timers take a signed 32-bit delay: anything longer (about 24.8 days) fires after 1 ms, so an
 * interval of `100000h` would probe hundreds of times a second. Durations are bounded here, at the source.
 */
export const MAX_DURATION_MS = 2 ** 31 - 1;

const duration = (fallback: string) =>
  z
    .union([z.string(), z.number()])
    .default(fallback)
    .transform((v, ctx) => {
      const ms = parseDuration(v);
      if (Number.isNaN(ms)) {
        ctx.addIssue({ code: "custom", message: `expected a duration like "500ms", "5s", "2m" or milliseconds, got ${JSON.stringify(v)}` });
        return z.NEVER;
      }
      if (ms > MAX_DURATION_MS) {
        ctx.addIssue({ code: "custom", message: `expected a duration of at most ${MAX_DURATION_MS}ms (about 24 days), got ${JSON.stringify(v)}` });
        return z.NEVER;
      }
      return ms;
    });

// What node's http.request accepts (its checkIsHttpToken, INVALID_PATH_REGEX and header-value checks):
// a value it would reject must fail here, with its field path, not throw from a probe timer later.
const httpToken = /^[\^_`a-zA-Z\-0-9!#$%&'*+.|~]+$/;
const httpPath = /^\/[\u0021-\u00ff]*$/;
const headerValue = /^[\t\x20-\x7e\x80-\xff]*$/;

const hostPort = z.string().refine((s) => parseHostPort(s) !== null, {
  message: 'expected "address:port" (IPv6 as "[::1]:port"), port 0-65535',
});

const ipAddress = z.string().refine((s) => net.isIP(s) !== 0, { message: "expected an IPv4 or IPv6 address" });

const cidr = z.string().refine((s) => /^[0-9a-fA-F:.]+(\/\d{1,3})?$/.test(s), { message: 'expected a CIDR like "10.0.0.0/8" or an address' });

export const ALGORITHMS = ["round-robin", "least-conn", "p2c", "maglev", "source-ip"] as const;
export type AlgorithmName = (typeof ALGORITHMS)[number];

export const BACKEND_STATES = ["active", "drain", "disabled"] as const;
export type BackendState = (typeof BACKEND_STATES)[number];

export const CHECK_TYPES = ["tcp", "http", "send-expect", "udp", "none"] as const;

export const healthSchema = z
  .object({
    /** Default: tcp (connect) for TCP services, udp (datagram out, reply in) for UDP services. */
    type: z.enum(CHECK_TYPES).optional(),
    interval: duration("2s"),
    timeout: duration("1s"),
    rise: z.number().int().min(1).max(100).default(2),
    fall: z.number().int().min(1).max(100).default(3),
    /** Fraction of the interval over which checks are spread (0 = all at once). */
    jitter: z.number().min(0).max(1).default(0.5),
    /** Whether backends with no verdict yet take traffic (a fresh cluster serves at once). */
    unknownRoutes: z.boolean().default(true),
    /** Close open connections to a backend once it is verdicted down. */
    closeOnDown: z.boolean().default(false),
    /**
     * Observer quorum: how many nodes judge each backend (the health leader and observers chosen from
     * the ready nodes; all nodes when fewer). A verdict goes down or up only on a majority of them.
     * 1: the leader alone decides.
     */
    observers: z.number().int().min(1).max(15).default(3),
    http: z
      .object({
        method: z.string().regex(httpToken, "expected an HTTP method token like GET or HEAD").default("GET"),
        path: z.string().max(2048).regex(httpPath, 'expected a path starting with "/", without spaces or control characters').default("/"),
        host: z.string().max(255).regex(headerValue, "expected a Host header value without control characters").optional(),
        expectStatus: z.tuple([z.number().int(), z.number().int()]).default([200, 399]),
        bodyMatch: z.string().optional(),
      })
      .strict()
      .optional(),
    send: z.string().optional(),
    expect: z.string().optional(),
  })
  .strict();

export const affinitySchema = z
  .object({
    mode: z.enum(["none", "source-ip"]).default("none"),
    ttl: duration("30m"),
  })
  .strict();

export const LOCALITIES = ["none", "prefer-zone"] as const;
export type Locality = (typeof LOCALITIES)[number];

export const zoneAwareSchema = z
  .object({
    /**
     * Share of the local zone's weight that must be healthy for all its clients to stay in the zone.
     * Below it, the zone keeps (healthy share / minHealthyShare) of its clients and the rest spill over.
     */
    minHealthyShare: z.number().gt(0).max(1).default(0.7),
  })
  .strict();

/**
 * How a service's packets reach its backends: the userspace proxy, kernel NAT (nftables), or
 * stateless kernel forwarding with direct return from the backends (dsr, deploy/dsr/README.md).
 */
export const FORWARDING_MODES = ["proxy", "nat", "dsr"] as const;

/** Options of `forwarding: nat` (docs/keys.md). */
export const natSchema = z
  .object({
    /** Rewrite the source to the node's address toward backends (full NAT), so backends need no route back. */
    snat: z.boolean().default(true),
    /** Remove a backend's tracked flows when it is verdicted down, so clients learn at once instead of hanging. */
    flushOnDown: z.boolean().default(true),
  })
  .strict();

/** A service record: what an operator puts at services/<name> (name comes from the key in etcd). */
const serviceObject = z
  .object({
    name: z.string().regex(SERVICE_NAME, "expected 1-63 characters of letters, digits, '_', '.', '-'").optional(),
    listen: hostPort,
    protocol: z.enum(["tcp", "udp"]).default("tcp"),
    /** Omitted: round-robin, or source-ip when affinity is on (so every node picks alike before entries replicate). */
    algorithm: z.enum(ALGORITHMS).optional(),
    proxyProtocol: z.enum(["none", "v1", "v2"]).default("none"),
    /** proxy (default): Ballast terminates connections; nat: the node programs the kernel (nftables) to forward. */
    forwarding: z.enum(FORWARDING_MODES).default("proxy"),
    /** Only with `forwarding: nat`. */
    nat: natSchema.optional(),
    timeouts: z
      .object({
        connect: duration("3s"),
        idle: duration("5m"),
        udpIdle: duration("30s"),
        /**
         * Idle timeout once either side has sent its FIN (HAProxy's client-fin/server-fin): a client
         * that half-closed toward a backend that never answers must not hold a slot for `idle`.
         */
        halfClosed: duration("30s"),
        drain: duration("30s"),
      })
      .strict()
      .prefault({}),
    limits: z
      .object({
        maxConnections: z.number().int().min(0).default(0),
        maxConnectionsPerBackend: z.number().int().min(0).default(0),
        maxFlows: z.number().int().min(1).default(65536),
        /** New connections per second allowed from one source IP (0 = unlimited), with a burst. */
        sourceRate: z.number().min(0).default(0),
        sourceBurst: z.number().int().min(1).default(20),
        /** IPv6 sources are rate-limited per network of this many bits (a subscriber typically holds a /64). */
        sourceIpv6Prefix: z.number().int().min(1).max(128).default(64),
        /** Connect attempts on other backends after a failed connect. */
        retries: z.number().int().min(0).max(10).default(2),
      })
      .strict()
      .prefault({}),
    access: z
      .object({ allow: z.array(cidr).default([]), deny: z.array(cidr).default([]) })
      .strict()
      .prefault({}),
    affinity: affinitySchema.prefault({}),
    health: healthSchema.prefault({}),
    /**
     * Zone-aware routing (Envoy's zone-aware routing, simplified): `prefer-zone` sends a node's new
     * clients to backends of the node's own zone while that zone keeps at least `minHealthyShare` of
     * its weight healthy, and spills the rest over to the other zones in proportion to their healthy
     * weight when it does not. Affinity entries still win.
     */
    locality: z.enum(LOCALITIES).default("none"),
    zoneAware: zoneAwareSchema.prefault({}),
    /**
     * TCP: clients are balancers in front of this one that send a PROXY header (v1 text or v2 binary)
     * first; the client address in it is the one affinity, access rules, rate limits and the PROXY
     * header sent onward use. Only peers in `from` may connect; anything else is refused.
     */
    acceptProxy: z
      .object({ version: z.enum(["none", "v1", "v2"]).default("none"), from: z.array(cidr).default([]) })
      .strict()
      .refine((a) => a.version === "none" || a.from.length > 0, { message: "acceptProxy.from: list the balancers trusted to send PROXY headers", path: ["from"] })
      .prefault({}),
    /**
     * A backend whose verdict turned up less than this ago (new or recovered) takes a weight that ramps
     * from 10% to its full weight, in steps, measured from the verdict's `since` so every node ramps
     * alike. 0: off.
     */
    slowStart: duration("0s"),
  })
  .strict();

/** Rules across fields of one service record (shared by etcd records and the YAML file). */
function checkService(s: z.output<typeof serviceObject>, ctx: z.RefinementCtx): void {
  // PROXY v1 is a text line at the start of a TCP stream; UDP has no stream to prefix, so a v1 UDP
  // service would send no header at all while claiming to, and a client could forge one.
  if (s.protocol === "udp" && s.proxyProtocol === "v1") {
    ctx.addIssue({ code: "custom", path: ["proxyProtocol"], message: "v1 is TCP only; UDP services use none or v2" });
  }
}

export const serviceSchema = serviceObject.superRefine(checkService);

export type ServiceInput = z.input<typeof serviceSchema>;
export type CheckType = (typeof CHECK_TYPES)[number];
export type ServiceSpec = z.output<typeof serviceSchema> & { name: string; algorithm: AlgorithmName; health: { type: CheckType } };

const backendObject = z
  .object({
    id: z.string().regex(BACKEND_ID, "expected 1-128 characters of letters, digits, '_', '.', ':', '-'").optional(),
    address: z.string().min(1),
    port: z.number().int().min(1).max(65535),
    weight: z.number().int().min(0).max(1000).default(1),
    zone: z.string().default(""),
    state: z.enum(BACKEND_STATES).default("active"),
    checkAddress: z.string().optional(),
    checkPort: z.number().int().min(1).max(65535).optional(),
  })
  .strict();

/** A backend record: JSON object, or the short form "10.0.0.5:8080". */
export const backendSchema = z.union([
  backendObject,
  z.string().transform((s, ctx) => {
    const hp = parseHostPort(s);
    if (!hp || hp.port === 0) {
      ctx.addIssue({ code: "custom", message: 'expected an object or the short form "address:port"' });
      return z.NEVER;
    }
    return backendObject.parse({ address: hp.host, port: hp.port });
  }),
]);

export type BackendInput = z.input<typeof backendObject>;
export type BackendSpec = z.output<typeof backendObject> & { id: string };

const embeddedBackend = backendObject.extend({ id: backendObject.shape.id.unwrap() });

/** Node config file (YAML). With `etcd` the cluster state comes from etcd; without, `services` is the state. */
export const nodeConfigSchema = z
  .object({
    node: z
      .object({
        id: z.string().regex(NODE_ID).optional(),
        zone: z.string().default(""),
        /** Address other nodes and the CLI use to reach this node's admin API (defaults to admin.listen). */
        advertise: z.string().optional(),
        /**
         * Bind every service on this address instead of the host in its `listen` (the port is kept): for
         * several nodes on one machine (the demo, tests), or nodes whose VIP is bound under another name.
         */
        bindAddress: z.string().optional(),
        /**
         * The addresses clients reach this node's services on (its VIPs or public IPs): what the DNS
         * responders of the cluster answer for this node (IPv4 → A, IPv6 → AAAA). Empty: not in DNS.
         */
        publicAddresses: z.array(ipAddress).max(64).default([]),
      })
      .strict()
      .prefault({}),
    /** The authoritative DNS responder (node/dns/): off unless `listen` is set. Zone and names come from etcd (`dns` key). */
    dns: z
      .object({
        /** UDP and TCP, e.g. "0.0.0.0:53". */
        listen: hostPort,
        /** Response rate limiting per source prefix (UDP only: TCP sources cannot be spoofed). */
        rrl: z
          .object({
            /** Responses per second per source prefix; 0 turns RRL off. */
            responsesPerSecond: z.number().min(0).default(50),
            burst: z.number().int().min(1).default(100),
            /** Every n-th limited query gets a truncated (TC) reply so a real client retries over TCP; 0 = drop all. */
            slip: z.number().int().min(0).max(10).default(2),
            /** Prefix lengths that group sources (RRL's usual /24 and /56). */
            ipv4Prefix: z.number().int().min(8).max(32).default(24),
            ipv6Prefix: z.number().int().min(16).max(128).default(56),
            /** Bounded memory: at most this many source prefixes are tracked; the least recently seen go first. */
            maxSources: z.number().int().min(16).max(10_000_000).default(100_000),
          })
          .strict()
          .prefault({}),
        /** TCP: at most this many open connections, each closed after this long idle. */
        maxTcpConnections: z.number().int().min(1).max(100_000).default(1024),
        tcpIdle: duration("10s"),
      })
      .strict()
      .optional(),
    cluster: z.string().regex(/^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$/).default("default"),
    etcd: z
      .object({
        endpoints: z.array(z.string().min(1)).min(1),
        prefix: z.string().optional(),
        username: z.string().optional(),
        password: z.string().optional(),
        tls: z
          .object({ ca: z.string().optional(), cert: z.string().optional(), key: z.string().optional() })
          .strict()
          .optional(),
        /** Lease TTL of this node's registration and of health leadership, in seconds. */
        leaseTtl: z.number().int().min(1).max(300).default(5),
        /**
         * etcd's space quota (keep equal to its --quota-backend-bytes; 2 GiB is etcd's default): the node
         * warns at 80% and 95% of it and on any alarm (metrics ballast_etcd_db_*, ballast_etcd_alarm, a log line).
         */
        quotaBytes: z.number().int().min(1).default(2 * 1024 ** 3),
        /** How often the node reads etcd's database size and alarms. */
        spaceCheck: duration("30s"),
      })
      .strict()
      .optional(),
    admin: z
      .object({
        listen: hostPort.default("127.0.0.1:9090"),
        token: z.string().min(1).optional(),
        /**
         * Other nodes' admin hosts the status page may send the token to: CIDRs/addresses for IP hosts,
         * exact DNS names. Empty (default): the token never leaves the page's own origin.
         */
        /**
         * Host names the admin API answers to, besides IP literals, localhost and the names in
         * node.advertise and admin.listen (DNS-rebinding guard: other Host headers get 403).
         */
        allowedHosts: z.array(z.string().regex(/^[a-zA-Z0-9.-]{1,253}$/, "expected a DNS name")).default([]),
        /** Open admin connections at most; the rest are closed at once (they share the fd budget). */
        maxConnections: z.number().int().min(1).max(10_000).default(64),
        trustedPeers: z
          .array(z.string().refine((s) => /^[0-9a-fA-F:.]+(\/\d{1,3})?$/.test(s) || /^[a-zA-Z0-9.-]{1,253}$/.test(s), { message: 'expected a CIDR like "10.0.0.0/8", an address or a DNS name' }))
          .default([]),
      })
      .strict()
      .prefault({}),
    log: z
      .object({ level: z.enum(["trace", "debug", "info", "warn", "error", "fatal", "silent"]).default("info") })
      .strict()
      .prefault({}),
    /** `forwarding: dsr` on this node (deploy/dsr/README.md). */
    dsr: z
      .object({
        /** The interface on the backends' L2 segment: DSR packets arrive and leave here (e.g. "eth0"). */
        interface: z.string().regex(/^[A-Za-z0-9_.:@-]{1,15}$/, "expected a network interface name (1-15 characters)"),
      })
      .strict()
      .optional(),
    /**
     * `forwarding: nat` on this node. `sourceAddresses`: at most one IPv4 and one IPv6 address of this
     * node that full-NAT flows leave with toward backends (`snat to`), instead of the outgoing
     * interface's address (`masquerade`). Give the node an address that its own connections (proxy
     * services, health checks) do not use: NAT keeps the client's source port, and a backend that
     * still holds TIME_WAIT for the node's own earlier connection on that address and port answers
     * the NAT'ed SYN with an ACK, which costs the client a 1 s SYN retransmit. Applied at start.
     */
    nat: z
      .object({
        sourceAddresses: z
          .array(ipAddress)
          .max(2)
          .refine((a) => a.filter((x) => net.isIPv4(x)).length <= 1 && a.filter((x) => net.isIPv6(x)).length <= 1, { message: "at most one IPv4 and one IPv6 address" })
          .default([]),
      })
      .strict()
      .prefault({}),
    /**
     * One JSON line (msg "access") per finished TCP connection and ended UDP flow, written in batches.
     * On by default; `ratePerSecond` caps lines per node (the rest are counted, not written), `sample`
     * logs that share of connections. Switch, rate and sample apply on reload; `path` at start.
     */
    accessLog: z
      .object({
        enabled: z.boolean().default(true),
        ratePerSecond: z.number().int().min(1).max(1_000_000).default(1000),
        sample: z.number().min(0).max(1).default(1),
        /** Append to this file instead of standard output. */
        path: z.string().default(""),
      })
      .strict()
      .prefault({}),
    /**
     * How this node resolves backends given as host names (docs/keys.md "Host-name backends"). No
     * `servers`: the system resolver (getaddrinfo: /etc/hosts, nsswitch, resolv.conf), which reports no
     * TTL, so names are re-resolved every `interval`. With `servers`: A and AAAA queries to them, and
     * each name is re-resolved when its answer's TTL runs out, at most `interval` later, at least 1 s.
     */
    resolver: z
      .object({
        servers: z.array(z.string().refine((s) => net.isIP(s) !== 0 || (parseHostPort(s) !== null && net.isIP(parseHostPort(s)!.host) !== 0), { message: 'expected an IP address or "address:port" ("[::1]:53")' })).max(8).default([]),
        interval: duration("30s"),
        /** Per query (with servers): how long to wait for an answer, and how many times to ask. */
        timeout: duration("2s"),
      })
      .strict()
      .prefault({}),
    /**
     * Directory for this node's last known good snapshot (clustered mode): the routing records and
     * revision last applied, served at start while etcd cannot be reached. Empty: not kept.
     */
    stateDir: z.string().default(""),
    /**
     * Data-plane processes (issue 18). 1: today's single process. N > 1: this process stays the one
     * control plane (etcd, health, affinity replication, admin, kernel forwarding) and forks N workers
     * that run the proxy listeners; "auto": one per available core (os.availableParallelism()).
     */
    workers: z.union([z.literal("auto"), z.number().int().min(1).max(256)], { message: 'expected a whole number ≥ 1 or "auto"' }).default(1),
    drainTimeout: duration("30s"),
    /**
     * On SIGTERM, how long the node keeps accepting after /readyz turns 503, so anycast withdraws the
     * route (or a load balancer stops sending) before the listeners close. Behind anycast: ≥ 1s.
     */
    withdrawDelay: duration("0s"),
    health: z
      .object({
        /** Verdicts older than this (leader heartbeat age) switch the node to local checking. */
        staleAfter: duration("10s"),
        /** Passive ejection: a connect failure ejects the backend locally for this long (doubling, capped). */
        ejectBase: duration("1s"),
        ejectMax: duration("30s"),
        maxEjectedShare: z.number().min(0).max(1).default(0.5),
      })
      .strict()
      .prefault({}),
    affinity: z
      .object({
        maxEntries: z.number().int().min(1).default(1_000_000),
        batchInterval: duration("100ms"),
        batchMax: z.number().int().min(1).max(5000).default(500),
        /**
         * `mesh`: every node's entries go to every node. `exception`: client records go to a few shard
         * owners, and only entries whose backend differs from the table's pick go to every node
         * (docs/keys.md). The same on every node of a cluster.
         */
        replication: z.enum(["mesh", "exception"]).default("exception"),
      })
      .strict()
      .prefault({}),
    services: z
      .array(
        serviceObject
          .extend({ name: z.string().regex(SERVICE_NAME), backends: z.array(embeddedBackend).default([]) })
          .superRefine(checkService),
      )
      .default([]),
  })
  .strict()
  .superRefine((c, ctx) => {
    c.services.forEach((s, i) => {
      for (const line of forwardingRefusals(s)) {
        const colon = line.indexOf(": ");
        ctx.addIssue({ code: "custom", path: ["services", i, ...line.slice(0, colon).split(".")], message: line.slice(colon + 2) });
      }
    });
  });

export type NodeConfig = z.output<typeof nodeConfigSchema>;

/** How many data-plane processes `workers` asks for ("auto": one per available core). */
export function workerCount(c: Pick<NodeConfig, "workers">, cores: () => number): number {
  return c.workers === "auto" ? Math.max(1, cores()) : c.workers;
}

const dnsName = z
  .string()
  .min(1)
  .max(253)
  .regex(/^([a-zA-Z0-9_]([a-zA-Z0-9_-]{0,61}[a-zA-Z0-9_])?\.)*[a-zA-Z0-9_]([a-zA-Z0-9_-]{0,61}[a-zA-Z0-9_])?\.?$/, "expected a DNS name like lb.example.com");

/** The cluster's DNS record (etcd key `dns`, JSON): the zone every node's responder is authoritative for. */
export const dnsRecordSchema = z
  .object({
    /** e.g. "lb.example.com" (a trailing dot is allowed). */
    zone: dnsName,
    /** TTL of A/AAAA answers in seconds: short, so a dead node leaves resolvers' caches quickly. */
    ttl: z.number().int().min(0).max(86_400).default(5),
    /** At most this many addresses per answer. */
    answers: z.number().int().min(1).max(64).default(8),
    /** NS names of the zone; names inside the zone answer with every live node. Default: ns.<zone>. */
    nameservers: z.array(dnsName).max(16).optional(),
    soa: z
      .object({
        /** Responsible mailbox as a DNS name; default hostmaster.<zone>. */
        rname: dnsName.optional(),
        refresh: z.number().int().min(0).default(60),
        retry: z.number().int().min(0).default(30),
        expire: z.number().int().min(0).default(600),
        /** Negative-answer TTL (NXDOMAIN, NODATA); default the zone's ttl. */
        minimum: z.number().int().min(0).max(86_400).optional(),
      })
      .strict()
      .prefault({}),
    /** Client zones by source subnet, for `locality: prefer-zone` answers: {"a": ["10.1.0.0/16"]}. */
    clientZones: z.record(z.string().min(1).max(63), z.array(cidr).max(1024)).default({}),
    /**
     * Per service: its name in the zone (default: the service name), TTL, answers, and whether
     * clients of a zone get that zone's nodes first. Services not listed are published with the defaults.
     */
    services: z
      .record(
        z.string(),
        z
          .object({
            name: dnsName.optional(),
            publish: z.boolean().default(true),
            ttl: z.number().int().min(0).max(86_400).optional(),
            answers: z.number().int().min(1).max(64).optional(),
            locality: z.enum(LOCALITIES).default("none"),
          })
          .strict(),
      )
      .default({}),
  })
  .strict();

export type DnsRecordInput = z.input<typeof dnsRecordSchema>;
export type DnsRecordSpec = z.output<typeof dnsRecordSchema>;

const WILDCARDS = new Set(["", "0.0.0.0", "::", "[::]", "*"]);

/**
 * What a service record asks that its forwarding mode cannot do, as "field: reason" lines (empty when
 * fine). The kernel path hashes, rewrites addresses and lets conntrack keep flows: it cannot
 * terminate connections (PROXY protocol), run stateful pickers, or count per backend.
 */
export function forwardingRefusals(s: z.output<typeof serviceSchema>): string[] {
  const out: string[] = [];
  if (s.forwarding === "dsr") return dsrRefusals(s);
  if (s.forwarding !== "nat") {
    if (s.nat !== undefined) out.push("nat: only for forwarding: nat");
    return out;
  }
  if (s.proxyProtocol !== "none") out.push("proxyProtocol: needs forwarding: proxy (the kernel does not terminate connections)");
  if (s.acceptProxy.version !== "none") out.push("acceptProxy: needs forwarding: proxy (the kernel does not read the stream, so it cannot take a PROXY header)");
  if (s.slowStart > 0) out.push("slowStart: needs forwarding: proxy (the kernel table is not ramped)");
  if (s.algorithm !== undefined && s.algorithm !== "maglev" && s.algorithm !== "source-ip") {
    out.push(`algorithm: ${s.algorithm} needs forwarding: proxy; forwarding nat hashes in the kernel (maglev or source-ip)`);
  }
  if (s.limits.maxConnectionsPerBackend > 0) out.push("limits.maxConnectionsPerBackend: needs forwarding: proxy (the kernel counts per service, not per backend)");
  // Refused rather than silently ignored: the kernel map is the service's one Maglev table, not a plan per zone.
  if (s.locality !== "none") out.push("locality: prefer-zone needs forwarding: proxy (the kernel forwards by the service's one table, the same on every node; it has no zone plan)");
  const hp = parseHostPort(s.listen);
  if (hp && WILDCARDS.has(hp.host)) out.push("listen: forwarding nat needs the service's own address (the VIP), not a wildcard");
  if (hp && hp.port === 0) out.push("listen: forwarding nat needs a fixed port, not 0");
  return out;
}

const IPV4 = /^(25[0-5]|2[0-4]\d|1?\d?\d)(\.(25[0-5]|2[0-4]\d|1?\d?\d)){3}$/;

/**
 * What `forwarding: dsr` cannot do. The node forwards each packet statelessly (no connection
 * tracking, the IP header untouched) and the backend answers the client itself: nothing can be added
 * to the stream, ports cannot be translated (checked per backend in the snapshot), and the node
 * neither sees replies nor tracks connections, so it cannot count or cap them.
 */
function dsrRefusals(s: z.output<typeof serviceSchema>): string[] {
  const out: string[] = [];
  if (s.nat !== undefined) out.push("nat: only for forwarding: nat");
  if (s.proxyProtocol !== "none") out.push("proxyProtocol: needs forwarding: proxy (dsr does not touch the stream: the backend sees the client's own address)");
  if (s.acceptProxy.version !== "none") out.push("acceptProxy: needs forwarding: proxy (dsr does not read the stream)");
  if (s.slowStart > 0) out.push("slowStart: needs forwarding: proxy (the kernel table is not ramped)");
  if (s.algorithm !== undefined && s.algorithm !== "maglev" && s.algorithm !== "source-ip") {
    out.push(`algorithm: ${s.algorithm} needs forwarding: proxy; forwarding dsr hashes in the kernel (maglev or source-ip)`);
  }
  if (s.affinity.mode !== "none") out.push("affinity.mode: needs forwarding: proxy or nat (dsr keeps flows by hash and per-node pins; algorithm: source-ip keeps a client on one backend)");
  if (s.limits.maxConnectionsPerBackend > 0) out.push("limits.maxConnectionsPerBackend: needs forwarding: proxy (dsr tracks no connections)");
  if (s.limits.maxConnections > 0) out.push("limits.maxConnections: needs forwarding: proxy or nat (dsr tracks no connections)");
  if (s.limits.sourceRate > 0) out.push("limits.sourceRate: needs forwarding: proxy or nat (dsr tracks no connections, so it cannot tell new ones)");
  // A table per zone would break what dsr is for: any node hashes a flow to the same backend.
  if (s.locality !== "none") out.push("locality: prefer-zone needs forwarding: proxy (dsr needs the same table on every node, so a flow survives a node's death)");
  for (const kind of ["allow", "deny"] as const) {
    s.access[kind].forEach((c, i) => {
      if (c.includes(":")) out.push(`access.${kind}[${i}]: forwarding dsr is IPv4 only, got ${c}`);
    });
  }
  const hp = parseHostPort(s.listen);
  if (hp && !IPV4.test(hp.host)) out.push(`listen: forwarding dsr needs the service's own IPv4 address (the VIP on the backends' lo), got ${hp.host}`);
  else if (hp && hp.host === "0.0.0.0") out.push("listen: forwarding dsr needs the service's own address (the VIP), not a wildcard");
  if (hp && hp.port === 0) out.push("listen: forwarding dsr needs a fixed port, not 0");
  return out;
}

/** Turns a zod error into lines naming the field path, e.g. `services[0].listen: expected "address:port"`. */
export function formatIssues(error: z.ZodError): string[] {
  return error.issues.map((issue) => {
    let path = "";
    for (const part of issue.path) {
      path += typeof part === "number" ? `[${part}]` : path ? `.${String(part)}` : String(part);
    }
    let msg = issue.message;
    if (issue.code === "unrecognized_keys") msg = `unknown key(s) ${issue.keys.map((k) => JSON.stringify(k)).join(", ")}`;
    return `${path || "(root)"}: ${msg}`;
  });
}

/** Fills algorithm defaults that depend on other fields. */
export function resolveService(name: string, parsed: z.output<typeof serviceSchema>): ServiceSpec {
  const refused = forwardingRefusals(parsed);
  if (refused.length > 0) throw new Error(refused.join("; "));
  // A NAT service hashes in the kernel: maglev over the flow unless affinity asks for the source alone.
  const algorithm: AlgorithmName = parsed.algorithm ?? (parsed.affinity.mode === "source-ip" ? "source-ip" : parsed.forwarding === "nat" || parsed.forwarding === "dsr" ? "maglev" : "round-robin");
  const type: CheckType = parsed.health.type ?? (parsed.protocol === "udp" ? "udp" : "tcp");
  return { ...parsed, name, algorithm, health: { ...parsed.health, type } };
}
