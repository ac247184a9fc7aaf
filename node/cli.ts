// The `ballast` command: runs a node (`ballast node --config FILE`) and manages the cluster through
// etcd (services, backends, nodes, status) and the nodes' admin APIs (route explain).
import { readFileSync, watchFile } from "node:fs";
import { Command, Option } from "commander";
import type { ApiError, DnsStateView, ForwardingStateView, NodeSummaryView, RouteAnswer, ServiceStateView, StateView } from "../shared/api.js";
import type { NodeRecord } from "../shared/codec.js";
import { KeySchema } from "../shared/keys.js";
import type { NodeConfig } from "../shared/schema.js";
import { VERSION } from "../shared/version.js";
import { getJson } from "./admin-client.js";
import { PeerTrust } from "./admin/peer-trust.js";
import type { Store } from "./control/store.js";
import { type BallastEvent, eventsPrefix } from "./events.js";
// Type only: `ballast node` loads the node (the whole data plane) when it runs; every other command
// starts faster without it (`ballast status` at 100 nodes: issue 19).
import type { BallastNode } from "./node.js";
import { registerRolloutCommands } from "./rollout/commands.js";

// Issue 19: every command pays for what this file loads before it parses the command line, so only
// commander and small modules are imported here. The rest is imported by the commands that use it:
// etcd3 (gRPC and protobufjs: ~0.5 s of CPU here) when a command writes or watches (status and node ls
// list through etcd's JSON gateway instead), zod-built parsers (codec, records, the config schema)
// when one validates, yaml, pino and the kernel forwarders only for `ballast node`. None of these
// modules depends on being imported before another.

class CliError extends Error {}

/** Loads and validates a node config file (node/config-file.ts, loaded when a command needs it). */
async function loadConfig(path: string): Promise<NodeConfig> {
  const { loadConfig: load, ConfigFileError } = await import("./config-file.js");
  try {
    return load(path);
  } catch (err) {
    throw err instanceof ConfigFileError ? new CliError(err.message) : err;
  }
}

/** yaml, only for the commands that take a YAML file. */
async function parseYaml(text: string): Promise<Record<string, unknown>> {
  const { parse } = await import("yaml");
  return parse(text) as Record<string, unknown>;
}

export interface GlobalOpts {
  etcd?: string;
  cluster: string;
  prefix?: string;
  output: "table" | "json";
  user?: string;
  password?: string;
  cacert?: string;
  cert?: string;
  key?: string;
  trust?: string;
}

async function etcdFrom(opts: GlobalOpts): Promise<{ store: Store; keys: KeySchema }> {
  const { EtcdStore } = await import("./control/etcd-store.js");
  const endpoints = (opts.etcd ?? process.env.BALLAST_ETCD ?? "http://127.0.0.1:2379").split(",").map((s) => s.trim());
  const store = new EtcdStore({
    endpoints,
    username: opts.user,
    password: opts.password,
    tls: opts.cacert || opts.cert ? { ca: opts.cacert, cert: opts.cert, key: opts.key } : undefined,
    dialTimeoutMs: 3000,
    probeEndpoints: false, // one command's worth of calls: nothing to move
  });
  return { store, keys: KeySchema.forCluster(opts.cluster, opts.prefix) };
}

/** What the read-only commands need of etcd: prefix listings. */
type PrefixReader = Pick<Store, "list" | "close">;

/** etcd's JSON gateway over node:http(s) (node/control/etcd-gateway.ts): lists without loading etcd3. */
async function gatewayFrom(opts: GlobalOpts): Promise<{ store: PrefixReader; keys: KeySchema }> {
  const { EtcdGatewayReader } = await import("./control/etcd-gateway.js");
  const endpoints = (opts.etcd ?? process.env.BALLAST_ETCD ?? "http://127.0.0.1:2379").split(",").map((s) => s.trim());
  const tls = opts.cacert || opts.cert ? { ca: opts.cacert, cert: opts.cert, key: opts.key } : undefined;
  const store = new EtcdGatewayReader({ endpoints, username: opts.user, password: opts.password, tls, timeoutMs: 3000 });
  return { store, keys: KeySchema.forCluster(opts.cluster, opts.prefix) };
}

/**
 * Runs a command that only lists prefixes (`status`, `node ls`) over etcd's JSON gateway: ~0.5 s of CPU
 * less than etcd3's gRPC stack takes to load (issue 19). An endpoint without the gateway (disabled, or
 * an etcd before 3.4) is asked again through etcd3, as every other command asks it.
 */
async function withReader<T>(cmd: Command, fn: (store: PrefixReader, keys: KeySchema, opts: GlobalOpts) => Promise<T>, timeoutMs = 10_000): Promise<T> {
  try {
    return await runWithEtcd(cmd, gatewayFrom, fn, timeoutMs);
  } catch (err) {
    if ((err as Error).name !== "GatewayUnavailable") throw err;
    return runWithEtcd(cmd, etcdFrom, fn, timeoutMs);
  }
}

/** Runs `fn` with a store; `timeoutMs` bounds the whole command (Infinity: a long-running one, e.g. a rollout). */
function withStore<T>(cmd: Command, fn: (store: Store, keys: KeySchema, opts: GlobalOpts) => Promise<T>, timeoutMs = 10_000): Promise<T> {
  return runWithEtcd(cmd, etcdFrom, fn, timeoutMs);
}

/** Opens a store with `open`, runs `fn`, closes it; etcd's errors become one clear line naming the endpoint. */
async function runWithEtcd<S extends PrefixReader, T>(cmd: Command, open: (opts: GlobalOpts) => Promise<{ store: S; keys: KeySchema }>, fn: (store: S, keys: KeySchema, opts: GlobalOpts) => Promise<T>, timeoutMs: number): Promise<T> {
  const opts = cmd.optsWithGlobals() as GlobalOpts;
  const { store, keys } = await open(opts);
  const where = opts.etcd ?? process.env.BALLAST_ETCD ?? "http://127.0.0.1:2379";
  try {
    if (!Number.isFinite(timeoutMs)) return await fn(store, keys, opts);
    return await withTimeout(fn(store, keys, opts), timeoutMs, `etcd at ${where} did not answer within ${Math.round(timeoutMs / 1000)} s (is it running? set --etcd or BALLAST_ETCD)`);
  } catch (err) {
    const e = err as { code?: string; message?: string };
    if (e.code === "STORE_UNAVAILABLE") {
      // gRPC's message is long; the operator needs the address and the socket error.
      const cause = /Last error: (?:Error: )?(.+?)\.(?:\s|$)/.exec(e.message ?? "")?.[1] ?? e.message;
      throw new CliError(`cannot reach etcd at ${where}: ${cause} (is it running? set --etcd or BALLAST_ETCD)`);
    }
    if (e.code === "STORE_AUTH") {
      throw new CliError(`etcd at ${where} refused the credentials${opts.user ? ` of user ${opts.user}` : ""}: ${e.message} (check --user and --password)`);
    }
    throw err;
  } finally {
    await store.close().catch(() => {});
  }
}

function withTimeout<T>(p: Promise<T>, ms: number, message: string): Promise<T> {
  let timer: NodeJS.Timeout;
  return Promise.race([p, new Promise<T>((_, reject) => { timer = setTimeout(() => reject(new CliError(message)), ms); })]).finally(() => clearTimeout(timer));
}

/** Prints rows as an aligned table (default) or JSON (`-o json`, for scripts). */
function print(opts: GlobalOpts, rows: Record<string, unknown>[], json: unknown = rows): void {
  if (opts.output === "json") {
    process.stdout.write(`${JSON.stringify(json, null, 2)}\n`);
    return;
  }
  if (rows.length === 0) {
    process.stdout.write("(none)\n");
    return;
  }
  const cols = Object.keys(rows[0]);
  const cell = (v: unknown) => (v === null || v === undefined ? "-" : typeof v === "object" ? JSON.stringify(v) : String(v));
  const width = cols.map((c) => Math.max(c.length, ...rows.map((r) => cell(r[c]).length)));
  const line = (vals: string[]) => vals.map((v, i) => v.padEnd(width[i])).join("  ").trimEnd();
  process.stdout.write(`${line(cols.map((c) => c.toUpperCase()))}\n`);
  for (const r of rows) process.stdout.write(`${line(cols.map((c) => cell(r[c])))}\n`);
}


/** A node's admin API answer, typed by the contract in shared/api.ts (the one place the JSON is trusted to match it). */
async function fetchJson<T>(url: string, token?: string): Promise<T> {
  let res: { status: number; body: unknown };
  try {
    res = await getJson(url, token, 3000);
  } catch (err) {
    throw new CliError(`${url}: ${(err as Error).message}`);
  }
  if (res.status !== 200) throw new CliError(`${url}: ${res.status} ${(res.body as ApiError | null)?.error ?? ""}`);
  if (res.body === null) throw new CliError(`${url}: the answer is not JSON`);
  return res.body as T;
}

/** `ballast status`: node summaries in flight at once (each is small; a node answers in milliseconds). */
const STATUS_CONCURRENCY = 32;
/** `ballast status`: how long one node's summary may take (as every admin call here) before its row says so. */
const SUMMARY_TIMEOUT_MS = 3000;

/** fn over items with at most `limit` calls in flight; results in the items' order. */
async function mapBounded<T, R>(items: readonly T[], limit: number, fn: (item: T) => Promise<R>): Promise<R[]> {
  const out = new Array<R>(items.length);
  let next = 0;
  const worker = async () => {
    while (next < items.length) {
      const i = next++;
      out[i] = await fn(items[i]);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return out;
}

/**
 * One node's /api/summary; a node of an older version (404) is asked for /api/state and its summary
 * fields read from that. Never throws: an unreachable node is a row that says so.
 */
async function fetchSummary(n: NodeRecord, token: string | undefined, withheld: boolean): Promise<{ ok: true; summary: NodeSummaryView } | { ok: false; why: string }> {
  const get = (path: string) => getJson(`http://${n.admin}${path}`, token, SUMMARY_TIMEOUT_MS);
  try {
    let r = await get("/api/summary");
    if (r.status === 404) r = await get("/api/state");
    if (r.status === 401 && withheld) return { ok: false, why: "token withheld (not in --trust)" };
    const b = r.body as Partial<NodeSummaryView> | null;
    if (r.status !== 200 || b === null || typeof b.node?.id !== "string" || typeof b.health !== "object") return { ok: false, why: "unreachable" };
    return { ok: true, summary: b as NodeSummaryView };
  } catch (err) {
    return { ok: false, why: (err as Error).name === "TimeoutError" ? `no answer within ${SUMMARY_TIMEOUT_MS / 1000} s` : "unreachable" };
  }
}

/** Node records, validated as the nodes validate them: bad ones come back under `invalid`, never as a node to contact. */
async function listNodes(store: PrefixReader, keys: KeySchema): Promise<{ nodes: NodeRecord[]; invalid: Array<{ key: string; reason: string }> }> {
  const [{ kvs }, { parseNodeRecord }] = await Promise.all([store.list(keys.nodes), import("../shared/codec.js")]);
  const nodes: NodeRecord[] = [];
  const invalid: Array<{ key: string; reason: string }> = [];
  for (const kv of kvs) {
    const k = keys.parse(kv.key);
    try {
      if (k?.kind !== "node") throw new Error(keys.reason(kv.key) ?? "not a node key");
      nodes.push(parseNodeRecord(k.node!, kv.value));
    } catch (err) {
      invalid.push({ key: kv.key, reason: `node record: ${(err as Error).message}` });
    }
  }
  return { nodes, invalid };
}

/** Member records and drain keys (for the DOWN rows), with the modules that read them loaded on first use. */
async function readMembersAndDrains(store: PrefixReader, keys: KeySchema) {
  const [{ readDrains }, { readMembers }, { membersDown }] = await Promise.all([import("./rollout/guard.js"), import("./rollout/members.js"), import("../shared/members.js")]);
  const [members, drained] = await Promise.all([readMembers(store, keys), readDrains(store, keys)]);
  return { members, drained, membersDown };
}

/**
 * The admin token goes only to nodes whose admin host is in --trust (or BALLAST_TRUST): a node record
 * is whatever its writer put in etcd, and `--token` must not be handed to any address found there.
 */
function peerTrust(opts: GlobalOpts): PeerTrust {
  const list = (opts.trust ?? process.env.BALLAST_TRUST ?? "").split(",").map((s) => s.trim()).filter((s) => s !== "");
  try {
    return new PeerTrust(list, "--trust");
  } catch (err) {
    throw new CliError((err as Error).message);
  }
}

/** "proxy", "nat", or "nat (not programmed: reason)" from a service's /api/state entry. */
function forwardingCell(f: ForwardingStateView): string {
  if (!f.programmed) return `${f.mode} (not programmed: ${f.reason ?? "pending"})`;
  return f.reason ? `${f.mode} (${f.reason})` : f.mode;
}

export function buildCli(): Command {
  const program = new Command("ballast")
    .description("Ballast: a clustered L4 load balancer (TCP/UDP) sharing state through etcd")
    .version(VERSION)
    .option("--etcd <urls>", "etcd endpoints, comma separated (env BALLAST_ETCD; default http://127.0.0.1:2379)")
    .option("--cluster <name>", "cluster name: keys live under /ballast/<cluster>/", "default")
    .option("--prefix <prefix>", "key prefix instead of /ballast/<cluster>/")
    .option("--user <name>", "etcd username")
    .option("--password <password>", "etcd password")
    .option("--cacert <file>", "CA certificate for etcd TLS")
    .option("--cert <file>", "client certificate for etcd TLS")
    .option("--key <file>", "client key for etcd TLS")
    .option("--trust <hosts>", "admin hosts (CIDRs, addresses, DNS names; comma separated) that may be sent --token (env BALLAST_TRUST; default none)")
    .addOption(new Option("-o, --output <format>", "output format").choices(["table", "json"]).default("table"))
    .showHelpAfterError();

  const node = program
    .command("node")
    .description("run a node (--config FILE), or list the cluster's nodes (node ls)")
    .option("-c, --config <file>", "node config file (YAML)")
    .option("--check", "validate the config file and exit")
    .option("--flush", "remove this cluster's nftables tables (inet for forwarding: nat, netdev for forwarding: dsr) from this network namespace and exit")
    .option("--watch", "reload the config file when it changes (as SIGHUP does)")
    .action(async (o: { config?: string; check?: boolean; flush?: boolean; watch?: boolean }) => {
      if (!o.config) throw new CliError("ballast node needs --config FILE (see deploy/examples/standalone.yaml)");
      const config = await loadConfig(o.config);
      if (o.check) {
        process.stdout.write(`config ${o.config} is valid\n`);
        return;
      }
      if (o.flush) {
        // The kernel keeps forwarding after the node stops (fail-static); this is how to stop it.
        const [{ KernelForwarder }, { DsrForwarder }, { createLogger }] = await Promise.all([import("./kernel/forwarder.js"), import("./kernel/dsr.js"), import("./log.js")]);
        const k = new KernelForwarder({ cluster: config.cluster, log: createLogger("silent") });
        const r = await k.flush();
        if (r.error) throw new CliError(`cannot remove nftables table inet ${k.table}: ${r.error}`);
        process.stdout.write(r.removed ? `removed nftables table inet ${k.table}\n` : `no nftables table inet ${k.table} here\n`);
        const d = new DsrForwarder({ cluster: config.cluster, device: undefined, log: createLogger("silent") });
        const dr = await d.flush();
        if (dr.error) throw new CliError(`cannot remove nftables table netdev ${d.table}: ${dr.error}`);
        process.stdout.write(dr.removed ? `removed nftables table netdev ${d.table}\n` : `no nftables table netdev ${d.table} here\n`);
        return;
      }
      await runNode(config, o.config, o.watch === true);
    });
  node
    .command("ls")
    .description("list registered nodes")
    .action(async (_o, cmd: Command) =>
      withReader(cmd, async (store, keys, opts) => {
        const { nodes, invalid } = await listNodes(store, keys);
        for (const r of invalid) process.stderr.write(`ballast: invalid ${r.key}: ${r.reason}\n`);
        print(opts, nodes.map((n) => ({ id: n.id, admin: n.admin, zone: n.zone, public: (n.public ?? []).join(","), version: n.version, ready: n.ready, draining: n.draining, drain: n.drain ? `${n.drain.state} (${n.drain.openAtStart} open at start, ${n.drain.open} ${n.drain.state === "drained" ? "cut" : "open"})` : "", mode: n.mode })), nodes);
      }),
    );

  // node drain|undrain and rollout restart|status|abort (node/rollout/).
  registerRolloutCommands(program, node, { withStore, print, trusts: (opts, admin) => peerTrust(opts).trusts(admin) });

  const service = program.command("service").description("manage services (etcd keys services/<name>)");
  service
    .command("put <name>")
    .description("create or replace a service from JSON (--json) or a JSON/YAML file (--file), or from flags")
    .option("--json <json>", "the service record as JSON")
    .option("-f, --file <file>", "the service record as a JSON or YAML file")
    .option("--listen <address:port>", "listen address")
    .option("--protocol <tcp|udp>", "protocol")
    .option("--algorithm <name>", "round-robin | least-conn | p2c | maglev | source-ip")
    .option("--affinity-ttl <duration>", "turn on source-ip affinity with this TTL")
    .option("--locality <none|prefer-zone>", "zone-aware routing: prefer backends of the node's zone")
    .option("--min-healthy-share <share>", "with prefer-zone: spill over when less than this share (0-1] of the zone's weight is healthy")
    .option("--forwarding <proxy|nat|dsr>", "proxy (default): Ballast terminates connections; nat: the kernel forwards (nftables); dsr: the kernel forwards statelessly and backends answer clients directly (deploy/dsr/README.md)")
    .action(async (name: string, o: Record<string, string | undefined>, cmd: Command) =>
      withStore(cmd, async (store, keys) => {
        const { parseServiceValue } = await import("./control/records.js");
        let record: Record<string, unknown>;
        if (o.json) record = JSON.parse(o.json);
        else if (o.file) record = await parseYaml(readFileSync(o.file, "utf8"));
        else {
          if (!o.listen) throw new CliError("service put needs --json, --file or at least --listen");
          record = { listen: o.listen };
          if (o.protocol) record.protocol = o.protocol;
          if (o.algorithm) record.algorithm = o.algorithm;
          if (o.affinityTtl) record.affinity = { mode: "source-ip", ttl: o.affinityTtl };
          if (o.locality) record.locality = o.locality;
          if (o.minHealthyShare) record.zoneAware = { minHealthyShare: Number(o.minHealthyShare) };
          if (o.forwarding) record.forwarding = o.forwarding;
        }
        const raw = Buffer.from(JSON.stringify(record));
        try {
          parseServiceValue(name, raw);
        } catch (err) {
          throw new CliError(`service ${name} is invalid: ${(err as Error).message}`);
        }
        const rev = await store.put(keys.service(name), raw);
        process.stdout.write(`service ${name} written at revision ${rev}\n`);
      }),
    );
  service
    .command("get <name>")
    .action(async (name: string, _o, cmd: Command) =>
      withStore(cmd, async (store, keys) => {
        const kv = await store.get(keys.service(name));
        if (!kv) throw new CliError(`no service ${name}`);
        process.stdout.write(`${kv.value.toString()}\n`);
      }),
    );
  service
    .command("rm <name>")
    .description("delete a service and its backends")
    .action(async (name: string, _o, cmd: Command) =>
      withStore(cmd, async (store, keys) => {
        const had = await store.delete(keys.service(name));
        const n = await store.deletePrefix(keys.backendsOf(name));
        if (!had) throw new CliError(`no service ${name}`);
        process.stdout.write(`service ${name} deleted (and ${n} backends)\n`);
      }),
    );
  service
    .command("ls")
    .action(async (_o, cmd: Command) =>
      withStore(cmd, async (store, keys, opts) => {
        const [{ kvs }, { parseServiceValue }] = await Promise.all([store.list(keys.services), import("./control/records.js")]);
        const rows = kvs.map((kv) => {
          const name = kv.key.slice(keys.services.length);
          try {
            const s = parseServiceValue(name, kv.value);
            return { name, listen: s.listen, protocol: s.protocol, forwarding: s.forwarding, algorithm: s.algorithm, affinity: s.affinity.mode, locality: s.locality, health: s.health.type, error: "" };
          } catch (err) {
            return { name, listen: "", protocol: "", forwarding: "", algorithm: "", affinity: "", locality: "", health: "", error: (err as Error).message };
          }
        });
        print(opts, rows);
      }),
    );

  const backend = program.command("backend").description("manage backends (etcd keys backends/<service>/<id>)");
  backend
    .command("add <service> <id> <address:port>")
    .option("--weight <n>", "weight (0-1000)", "1")
    .option("--zone <zone>", "zone", "")
    .action(async (svc: string, id: string, addr: string, o: { weight: string; zone: string }, cmd: Command) =>
      withStore(cmd, async (store, keys) => {
        const { parseBackendValue } = await import("./control/records.js");
        const probe = parseBackendValue(id, Buffer.from(JSON.stringify(addr)));
        const record = { address: probe.address, port: probe.port, weight: Number(o.weight), zone: o.zone, state: "active" };
        const raw = Buffer.from(JSON.stringify(record));
        try {
          parseBackendValue(id, raw);
        } catch (err) {
          throw new CliError(`backend ${id} is invalid: ${(err as Error).message}`);
        }
        if (!(await store.get(keys.service(svc)))) process.stderr.write(`warning: service ${svc} does not exist (yet)\n`);
        const rev = await store.put(keys.backend(svc, id), raw);
        process.stdout.write(`backend ${svc}/${id} → ${addr} written at revision ${rev}\n`);
      }),
    );
  backend
    .command("rm <service> <id>")
    .action(async (svc: string, id: string, _o, cmd: Command) =>
      withStore(cmd, async (store, keys) => {
        if (!(await store.delete(keys.backend(svc, id)))) throw new CliError(`no backend ${svc}/${id}`);
        process.stdout.write(`backend ${svc}/${id} deleted\n`);
      }),
    );
  for (const [verb, state, what] of [
    ["drain", "drain", "no new connections; open ones and affinity entries stay until they end"],
    ["enable", "active", "take new connections again"],
    ["disable", "disabled", "no traffic at all (open connections end after the drain timeout)"],
  ] as const) {
    backend
      .command(`${verb} <service> <id>`)
      .description(what)
      .action(async (svc: string, id: string, _o, cmd: Command) =>
        withStore(cmd, async (store, keys) => {
          const [kv, { parseBackendValue }] = await Promise.all([store.get(keys.backend(svc, id)), import("./control/records.js")]);
          if (!kv) throw new CliError(`no backend ${svc}/${id}`);
          const b = parseBackendValue(id, kv.value);
          const { id: _id, ...rest } = b;
          await store.put(keys.backend(svc, id), JSON.stringify({ ...rest, state }));
          process.stdout.write(`backend ${svc}/${id} is now ${state}\n`);
        }),
      );
  }
  backend
    .command("ls [service]")
    .action(async (svc: string | undefined, _o, cmd: Command) =>
      withStore(cmd, async (store, keys, opts) => {
        const [{ kvs }, { parseBackendValue }] = await Promise.all([store.list(svc ? keys.backendsOf(svc) : keys.backends), import("./control/records.js")]);
        const rows = kvs.map((kv) => {
          const k = keys.parse(kv.key);
          try {
            const b = parseBackendValue(k?.id ?? "?", kv.value);
            return { service: k?.service, id: b.id, address: `${b.address}:${b.port}`, weight: b.weight, zone: b.zone, state: b.state, error: "" };
          } catch (err) {
            return { service: k?.service, id: k?.id, address: "", weight: "", zone: "", state: "", error: (err as Error).message };
          }
        });
        print(opts, rows);
      }),
    );

  program
    .command("status")
    .description("the cluster at a glance: nodes and the revision each applied, services, backends and verdicts, invalid records")
    .option("--token <token>", "admin API bearer token")
    .action(async (o: { token?: string }, cmd: Command) =>
      withReader(cmd, async (store, keys, opts) => {
        const trust = peerTrust(opts);
        // Node records, member records and drain keys at once (three range reads in one round trip).
        // Members are read from etcd here, not from a node: a cluster whose nodes are all down still shows them.
        const [{ nodes, invalid: badNodes }, { members, drained, membersDown }] = await Promise.all([listNodes(store, keys), readMembersAndDrains(store, keys)]);
        // Every node is asked for its summary (a size independent of the cluster's), all at once but at
        // most STATUS_CONCURRENCY in flight; one node is asked for the full state (services, backends,
        // verdicts, invalid records), whose nodes[] grows with the cluster. Issue 19: the N full states
        // took 2.4 s at 40 nodes.
        const summaries = await mapBounded(nodes, STATUS_CONCURRENCY, (n) => fetchSummary(n, trust.trusts(n.admin) ? o.token : undefined, Boolean(o.token) && !trust.trusts(n.admin)));
        const nodeRows = nodes.map((n, i) => {
          const s = summaries[i];
          const sm = s.ok ? s.summary : null;
          // Leader only when the node that answered is the one its record names and says it leads: a
          // record carrying another node's admin address must not be shown as a second leader.
          const leader = sm !== null && sm.health.isLeader === true && sm.node.id === n.id;
          // drained/draining: the operator drain (its report in the record), else a SIGTERM drain.
          const drain = n.drain ? n.drain.state : n.draining ? "draining" : "";
          return { node: n.id, admin: n.admin, zone: n.zone, ready: s.ok ? s.summary.node.ready : s.why, drain, mode: sm ? sm.node.mode : "-", revision: sm?.revision ?? "-", leader: leader ? "yes" : "" };
        });
        // The full state from the first node that answered; the DNS view from one that runs a responder.
        const answered = nodes.map((n, i) => ({ n, s: summaries[i] })).filter((x) => x.s.ok);
        const trustedToken = (n: NodeRecord) => (trust.trusts(n.admin) ? o.token : undefined);
        let first: StateView | undefined;
        for (const { n } of answered.slice(0, 3)) {
          first = await fetchJson<StateView>(`http://${n.admin}/api/state`, trustedToken(n)).catch(() => undefined);
          if (first) break;
        }
        let dnsState = first?.dns ?? null;
        const dnsNode = dnsState ? undefined : answered.find((x) => x.s.ok && x.s.summary.dns === true);
        if (dnsNode) dnsState = (await fetchJson<StateView>(`http://${dnsNode.n.admin}/api/state`, trustedToken(dnsNode.n)).catch(() => undefined))?.dns ?? null;
        const rollout = first?.rollout ?? null;
        const down = membersDown(members.members, new Set(nodes.map((n) => n.id)), new Set(drained));
        // A bad member record is listed as the nodes list it (when one answered) or as read here.
        const listed = new Set((first?.invalid ?? []).map((r) => r.key));
        const badMembers = members.invalid.filter((r) => !listed.has(r.key));
        if (opts.output === "json") {
          print(opts, [], { nodes: nodeRows, services: first?.services ?? [], invalid: [...(first?.invalid ?? []), ...badNodes, ...badMembers], health: first?.health ?? null, dns: dnsState, rollout, members: { count: members.members.length, down } });
          return;
        }
        process.stdout.write("NODES\n");
        print(opts, nodeRows);
        const r = rollout?.state;
        if (r) {
          const at = r.current ? `, at ${r.current.node} (${r.current.phase})` : "";
          process.stdout.write(`\nROLLOUT ${r.id}: ${r.status}, ${r.done.length}/${r.nodes.length} nodes done${at}${r.error ? ` — ${r.error}` : ""}\n`);
        }
        const gone = (rollout?.drains ?? []).filter((d) => !nodes.some((n) => n.id === d));
        if (gone.length > 0) process.stdout.write(`drain keys of nodes not registered (down): ${gone.join(", ")}\n`);
        if (down.length > 0) {
          process.stdout.write("\nDOWN (members with no live node record; the drain guard counts them out: start them, or `ballast node forget <id>` one that is gone for good)\n");
          print(opts, down.map((m) => ({ node: m.id, admin: m.admin, version: m.version, lastStarted: new Date(m.startedAt).toISOString(), firstSeen: new Date(m.firstSeen).toISOString(), drainKey: m.drained ? "yes" : "" })));
        }
        const svcRows = [];
        const beRows = [];
        for (const s of first?.services ?? []) {
          svcRows.push({ service: s.name, listen: s.listen, protocol: s.protocol, forwarding: forwardingCell(s.forwarding), algorithm: s.algorithm, affinity: affinityCell(s.affinity), locality: s.locality ?? "none", active: s.active });
          // Grouped by zone (then id), so a zone's capacity reads as one block.
          const grouped = [...s.backends].sort((x, y) => x.zone.localeCompare(y.zone) || x.id.localeCompare(y.id));
          for (const b of grouped) {
            const v = b.verdict;
            // A host-name backend shows what it resolved to on this node (older nodes send no resolution).
            const resolved = b.resolution ? ` → ${b.resolution.addresses.join(", ") || "none"}` : "";
            beRows.push({ service: s.name, zone: b.zone || "-", backend: b.id, address: `${b.address}:${b.port}${resolved}`, state: b.state, verdict: v ? `${v.state}${v.reason ? ` (${v.reason})` : ""}` : "unknown", routable: b.routable, why: b.why || "-", active: b.active });
          }
        }
        if (first) process.stdout.write(`\nSERVICES (as node ${first.node.id} sees them)\n`);
        else process.stdout.write("\nSERVICES\n");
        print(opts, svcRows);
        process.stdout.write("\nBACKENDS\n");
        print(opts, beRows);
        if (dnsState?.zone) {
          process.stdout.write(`\nDNS (zone ${dnsState.zone}, serial ${dnsState.serial}, ttl ${dnsState.ttl}s)\n`);
          print(opts, dnsRows(dnsState));
        }
        const known = new Set((first?.invalid ?? []).map((r) => r.key));
        const invalid = [...(first?.invalid ?? []), ...[...badNodes, ...badMembers].filter((r) => !known.has(r.key)).map((r) => ({ ...r, keptLastGood: false }))];
        process.stdout.write("\nINVALID RECORDS\n");
        print(opts, invalid.map((r) => ({ key: r.key, reason: r.reason, keptLastGood: r.keptLastGood ?? false })));
        if (nodes.length === 0) process.stdout.write("\n(no node is registered: are nodes running with this --cluster?)\n");
        // No command-wide deadline: every etcd read and every node call has its own (3 s), and a
        // command-wide one blamed etcd when 100 silent nodes took 4 rounds of 3 s (issue 19).
      }, Number.POSITIVE_INFINITY),
    );

  program
    .command("events")
    .description("the cluster's recent events (verdicts, ejections, leadership, modes, drains, reloads, invalid records); kept 1 h")
    .option("-f, --follow", "keep printing new events as they are written")
    .option("--limit <n>", "print at most the last n events", "100")
    .action(async (o: { follow?: boolean; limit: string }, cmd: Command) => {
      const opts = cmd.optsWithGlobals() as GlobalOpts;
      const row = (e: BallastEvent) => ({ time: new Date(e.at).toISOString(), node: e.node, kind: e.kind, service: e.service ?? "", backend: e.backend ?? "", message: e.message });
      const parse = (value: Buffer): BallastEvent | null => {
        try {
          return JSON.parse(value.toString()) as BallastEvent;
        } catch {
          return null;
        }
      };
      const events = await withStore(cmd, async (store, keys) => {
        const { kvs } = await store.list(eventsPrefix(keys));
        return kvs.map((kv) => parse(kv.value)).filter((e): e is BallastEvent => e !== null).sort((a, b) => a.at - b.at);
      });
      const last = events.slice(-Math.max(1, Number(o.limit) || 100));
      if (!o.follow) {
        print(opts, last.map(row), last);
        return;
      }
      // Follow: one JSON line per event with -o json, else one aligned-free line each; until Ctrl-C.
      const line = (e: BallastEvent) => {
        const r = row(e);
        process.stdout.write(opts.output === "json" ? `${JSON.stringify(e)}\n` : `${r.time}  ${r.node}  ${r.kind}  ${r.message}\n`);
      };
      for (const e of last) line(e);
      const { store, keys } = await etcdFrom(opts);
      const seen = new Set(last.map((e) => `${e.node}|${e.at}|${e.message}`));
      const handle = store.sync(eventsPrefix(keys), {
        reset: (kvs) => {
          for (const kv of kvs) {
            const e = parse(kv.value);
            if (e && !seen.has(`${e.node}|${e.at}|${e.message}`)) {
              seen.add(`${e.node}|${e.at}|${e.message}`);
              line(e);
            }
          }
        },
        events: (evs) => {
          for (const ev of evs) {
            if (ev.type !== "put") continue;
            const e = parse(ev.value);
            if (e) line(e);
          }
        },
        status: () => {},
      });
      await new Promise<void>((resolve) => {
        process.once("SIGINT", resolve);
        process.once("SIGTERM", resolve);
      });
      await handle.stop();
      await store.close();
    });

  program
    .command("route <service> <client-ip>")
    .description("which backend a client would get, and why (asks a node's admin API)")
    .option("--node <admin-address>", "admin address of the node to ask (default: the first ready node in etcd)")
    .option("--port <port>", "client source port (for flow-hashing algorithms)", "0")
    .option("--token <token>", "admin API bearer token")
    .action(async (service: string, client: string, o: { node?: string; port: string; token?: string }, cmd: Command) => {
      const opts = cmd.optsWithGlobals() as GlobalOpts;
      let admin = o.node;
      // The node named on the command line gets the token; one found in etcd only when --trust lists it.
      let token = o.token;
      if (!admin) {
        admin = await withStore(cmd, async (store, keys) => {
          const { nodes } = await listNodes(store, keys);
          const ready = nodes.find((n) => n.ready) ?? nodes[0];
          if (!ready) throw new CliError("no node is registered; pass --node ADMIN_ADDRESS");
          return ready.admin;
        });
        if (!peerTrust(opts).trusts(admin)) token = undefined;
      }
      const body = await fetchJson<RouteAnswer>(`http://${admin}/api/route?service=${encodeURIComponent(service)}&client=${encodeURIComponent(client)}&port=${o.port}`, token);
      const b = body.backend;
      print(opts, [{ service, client, backend: b ? `${b.id} (${b.address})` : "none", reason: body.reason, node: body.node, revision: body.revision }], body);
    });

  const dns = program.command("dns").description("the cluster's DNS zone (etcd key dns): what every node's DNS responder answers");
  dns
    .command("set")
    .description("create or replace the dns record from --zone (and flags), --json or --file")
    .option("--zone <name>", "the zone the nodes are authoritative for, e.g. lb.example.com")
    .option("--ttl <seconds>", "TTL of answers (default 5)")
    .option("--answers <n>", "addresses per answer (default 8)")
    .option("--nameserver <name...>", "NS names of the zone (default ns.<zone>; names inside the zone answer with every live node)")
    .option("--json <json>", "the whole record as JSON")
    .option("-f, --file <file>", "the whole record as a JSON or YAML file")
    .action(async (o: { zone?: string; ttl?: string; answers?: string; nameserver?: string[]; json?: string; file?: string }, cmd: Command) =>
      withStore(cmd, async (store, keys) => {
        let record: Record<string, unknown>;
        if (o.json) record = JSON.parse(o.json);
        else if (o.file) record = await parseYaml(readFileSync(o.file, "utf8"));
        else {
          if (!o.zone) throw new CliError("dns set needs --zone, --json or --file");
          const kv = await store.get(keys.dns);
          record = kv ? (JSON.parse(kv.value.toString()) as Record<string, unknown>) : {};
          record.zone = o.zone;
          if (o.ttl) record.ttl = Number(o.ttl);
          if (o.answers) record.answers = Number(o.answers);
          if (o.nameserver) record.nameservers = o.nameserver;
        }
        const rev = await putDns(store, keys, record);
        process.stdout.write(`dns zone ${String(record.zone)} written at revision ${rev}\n`);
      }),
    );
  dns
    .command("service <service>")
    .description("how a service is published: its name in the zone, TTL, answers, zone-first answers, or not at all")
    .option("--name <name>", "name in the zone (default: the service name)")
    .option("--ttl <seconds>", "TTL of its answers")
    .option("--answers <n>", "addresses per answer")
    .option("--locality <none|prefer-zone>", "clients matched to a zone (client-zone) get that zone's nodes first")
    .option("--no-publish", "leave the service out of DNS")
    .action(async (service: string, o: { name?: string; ttl?: string; answers?: string; locality?: string; publish: boolean }, cmd: Command) =>
      withStore(cmd, async (store, keys) => {
        const record = await getDns(store, keys);
        const services = (record.services ?? {}) as Record<string, Record<string, unknown>>;
        const entry = { ...(services[service] ?? {}) };
        if (o.name) entry.name = o.name;
        if (o.ttl) entry.ttl = Number(o.ttl);
        if (o.answers) entry.answers = Number(o.answers);
        if (o.locality) entry.locality = o.locality;
        entry.publish = o.publish;
        record.services = { ...services, [service]: entry };
        const rev = await putDns(store, keys, record);
        process.stdout.write(`dns service ${service} written at revision ${rev}\n`);
      }),
    );
  dns
    .command("client-zone <zone> [cidrs...]")
    .description("clients from these subnets belong to <zone> (for locality: prefer-zone answers); no CIDRs removes the zone")
    .action(async (zone: string, cidrs: string[], _o, cmd: Command) =>
      withStore(cmd, async (store, keys) => {
        const record = await getDns(store, keys);
        const zones = { ...((record.clientZones ?? {}) as Record<string, string[]>) };
        if (cidrs.length === 0) delete zones[zone];
        else zones[zone] = cidrs;
        record.clientZones = zones;
        const rev = await putDns(store, keys, record);
        process.stdout.write(`dns client zone ${zone} written at revision ${rev}\n`);
      }),
    );
  dns
    .command("get")
    .description("print the dns record")
    .action(async (_o, cmd: Command) =>
      withStore(cmd, async (store, keys) => {
        process.stdout.write(`${JSON.stringify(await getDns(store, keys), null, 2)}\n`);
      }),
    );
  dns
    .command("rm")
    .description("delete the dns record (the responders answer REFUSED for everything)")
    .action(async (_o, cmd: Command) =>
      withStore(cmd, async (store, keys) => {
        if (!(await store.delete(keys.dns))) throw new CliError("no dns record");
        process.stdout.write("dns record deleted\n");
      }),
    );
  dns
    .command("show")
    .description("the names a node answers for and the live nodes in each answer (asks a node's admin API)")
    .option("--node <admin-address>", "admin address of the node to ask (default: the first ready node in etcd)")
    .option("--token <token>", "admin API bearer token")
    .action(async (o: { node?: string; token?: string }, cmd: Command) => {
      const opts = cmd.optsWithGlobals() as GlobalOpts;
      const admin = o.node ?? (await withStore(cmd, async (store, keys) => firstReadyAdmin(store, keys)));
      const st = await fetchJson<StateView>(`http://${admin}/api/state`, o.token);
      if (!st.dns) throw new CliError(`node ${admin} runs no DNS responder (node config dns.listen)`);
      if (opts.output === "table") process.stdout.write(`zone ${st.dns.zone ?? "(no dns record)"}, serial ${st.dns.serial}, listening on ${st.dns.listen}${st.dns.error ? ` (error: ${st.dns.error})` : ""}\n`);
      print(opts, dnsRows(st.dns), st.dns);
    });

  return program;
}

function dnsRows(d: DnsStateView): Record<string, unknown>[] {
  return d.names.map((n) => {
    // Live nodes that cannot carry the service (listener failed to bind) are not in its answers: say which.
    const leftOut = n.service === "" ? [] : d.nodes.filter((x) => x.live && x.unserved?.includes(n.service)).map((x) => x.id);
    return {
      name: n.name,
      service: n.service || "(nameserver)",
      ttl: n.ttl,
      locality: n.locality,
      answers:
        (n.addresses.map((a) => `${a.address} (${a.node}${a.zone ? `, zone ${a.zone}` : ""})`).join(", ") || "(no live node)") +
        (leftOut.length > 0 ? `; not served by ${leftOut.join(", ")}` : ""),
    };
  });
}

async function getDns(store: Store, keys: KeySchema): Promise<Record<string, unknown>> {
  const kv = await store.get(keys.dns);
  if (!kv) throw new CliError("no dns record: create it with `ballast dns set --zone NAME`");
  return JSON.parse(kv.value.toString()) as Record<string, unknown>;
}

async function putDns(store: Store, keys: KeySchema, record: Record<string, unknown>): Promise<number> {
  const raw = Buffer.from(JSON.stringify(record));
  const { parseDnsValue } = await import("./control/dns-record.js");
  try {
    parseDnsValue(raw);
  } catch (err) {
    throw new CliError(`dns record is invalid: ${(err as Error).message}`);
  }
  return store.put(keys.dns, raw);
}

async function firstReadyAdmin(store: Store, keys: KeySchema): Promise<string> {
  const { nodes } = await listNodes(store, keys);
  const ready = nodes.find((n) => n.ready) ?? nodes[0];
  if (!ready) throw new CliError("no node is registered; pass --node ADMIN_ADDRESS");
  return String(ready.admin);
}

function affinityCell(a: ServiceStateView["affinity"]): string {
  return a.mode === "none" ? "none" : `${a.mode} ttl ${Math.round(a.ttlMs / 1000)}s, ${a.entries} entries`;
}

/** What closing a drained node (etcd calls, listeners) may take before the process exits regardless. */
const CLOSE_GRACE_MS = 10_000;

async function runNode(config: NodeConfig, path: string, watch: boolean): Promise<void> {
  // A rollout without a restart hook: once drained, the node exits RESTART_EXIT_CODE and its
  // supervisor (systemd RestartForceExitStatus=75, a container restart policy) starts it again.
  const [{ BallastNode: Node }, { RESTART_EXIT_CODE }, { loadConfig: loadFile }] = await Promise.all([import("./node.js"), import("../shared/rollout.js"), import("./config-file.js")]);
  /**
   * A stop must end: the supervisor restarts only a process that exited, and an etcd call that never
   * answers (a lease revoke, a resign) would otherwise hold a drained node out of service for good.
   */
  const exitWithin = (ms: number, code: number, what: string) => {
    setTimeout(() => {
      node.log.error({ ms }, `${what} did not finish in ${ms} ms: exiting ${code} anyway`);
      process.exit(code);
    }, ms).unref();
  };
  const node: BallastNode = new Node({
    config,
    restart: () => {
      exitWithin(CLOSE_GRACE_MS, RESTART_EXIT_CODE, "closing for the rollout's restart");
      node.close().then(
        () => process.exit(RESTART_EXIT_CODE),
        () => process.exit(RESTART_EXIT_CODE),
      );
    },
  });
  // SIGHUP (systemd ExecReload, logrotate, config management) re-reads the file; without this handler
  // Node's default would end the process (exit 129) and cut every connection.
  const reload = (source: string) => {
    let next: NodeConfig;
    try {
      next = loadFile(path);
    } catch (err) {
      node.reloadRejected(source, (err as Error).message);
      return;
    }
    void node.reload(next, source);
  };
  process.on("SIGHUP", () => reload("SIGHUP"));
  if (watch) {
    // Polling the file's stat survives editors and config tools that replace the file by rename.
    let last = "";
    watchFile(path, { interval: 1000, persistent: false }, (cur) => {
      const sig = `${cur.mtimeMs}|${cur.size}|${cur.ino}`;
      if (cur.mtimeMs === 0 || sig === last) return;
      last = sig;
      reload("watch");
    });
  }
  let shuttingDown = false;
  /** 1 once anything went fatally wrong, also during a drain a signal started. */
  let exitCode = 0;
  const drainThenExit = () => {
    node.shutdown().then(
      () => process.exit(exitCode),
      (err: Error) => {
        node.log.error({ err }, "shutdown failed");
        process.exit(1);
      },
    );
  };
  const stop = (signal: string) => {
    if (shuttingDown) {
      node.log.warn({ signal }, "second signal: exiting now");
      process.exit(1);
    }
    shuttingDown = true;
    node.log.info({ signal }, "shutting down");
    // The node's current timings: a reload may have changed them since start.
    exitWithin(node.config.withdrawDelay + node.config.drainTimeout + CLOSE_GRACE_MS, 1, `shutdown on ${signal}`);
    drainThenExit();
  };
  process.on("SIGTERM", () => stop("SIGTERM"));
  process.on("SIGINT", () => stop("SIGINT"));
  // An exception nothing caught means this process's state is no longer known to be sound: log it
  // with the error object, drain (readyz 503, open connections finish up to drainTimeout), and exit
  // non-zero so the supervisor starts a clean process. Carrying on served from possibly broken state.
  const fatal = (kind: "uncaught exception" | "unhandled rejection") => (err: unknown) => {
    node.log.fatal({ err }, `${kind}: draining, then exiting 1`);
    exitCode = 1;
    if (shuttingDown) return;
    shuttingDown = true;
    // If the drain itself hangs, the supervisor still gets its restart.
    exitWithin(node.config.drainTimeout + node.config.withdrawDelay + 5_000, 1, `drain after an ${kind}`);
    drainThenExit();
  };
  process.on("uncaughtException", fatal("uncaught exception"));
  process.on("unhandledRejection", fatal("unhandled rejection"));
  await node.start({ waitForSnapshot: false });
}

export async function main(argv = process.argv): Promise<void> {
  try {
    await buildCli().parseAsync(argv);
  } catch (err) {
    if (err instanceof CliError) {
      process.stderr.write(`ballast: ${err.message}\n`);
    } else {
      const e = err as { code?: string; message?: string };
      process.stderr.write(`ballast: ${e.code ? `${e.code}: ` : ""}${e.message ?? String(err)}\n`);
    }
    process.exitCode = 1;
  }
}

// Run when executed directly (bin/ballast.js imports main()).
if (import.meta.url === `file://${process.argv[1]}`) await main();
