// Ballast NAT and Ballast DSR in the namespace bench: their service records, the probe that says
// "skipped — not built yet" when the node does not have the mode (the record is refused, or nothing
// answers on the VIP), and the NAT control-plane figures: verdict flip → nft map updated on the node,
// a whole service's map loaded, and the table size used.
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { decodeValue } from "../../shared/codec.js";
import { nodeConfigSchema } from "../../shared/schema.js";
import { execCommand } from "../helpers/netns.js";
import { type BallastNode, type NodeOptions, seedServices, type ServiceRecord, serviceState, startNode, stopNode } from "./ballast.js";
import type { Context } from "./context.js";
import type { Etcd } from "./etcd.js";
import { httpGet, sleep } from "./net.js";
import { NET, type NsPlane } from "./netns-plane.js";
import type { Figure } from "./report.js";
import { median, percentile } from "./stats.js";

export interface KernelMode {
  target: "ballast-nat" | "ballast-dsr";
  mode: "nat" | "dsr";
  vip: string;
  http: string;
  bulk: string;
}

export const KERNEL_MODES: KernelMode[] = [
  { target: "ballast-nat", mode: "nat", vip: NET.natVip, http: "http-nat", bulk: "bulk-nat" },
  { target: "ballast-dsr", mode: "dsr", vip: NET.dsrVip, http: "http-dsr", bulk: "bulk-dsr" },
];

/**
 * Node config lines the kernel modes need in the balancer namespace: DSR's interface on the backends'
 * segment (`dsr.interface`). Only when this build's node config knows the key: the config is strict,
 * and a node that does not have DSR must still start for the other paths.
 */
export function kernelNodeConfig(_ns: NsPlane): string[] {
  const probe = nodeConfigSchema.safeParse({ node: { id: "probe" }, dsr: { interface: NET.dev } });
  const knowsDsr = probe.success || !probe.error.issues.some((i) => i.code === "unrecognized_keys" && i.keys.includes("dsr"));
  // NAT leaves with an address of its own (not 10.77.2.1, which HAProxy's and the proxies' connections
  // to the same backends use): see docs/keys.md, "The node's source address for full NAT".
  const knowsNat = nodeConfigSchema.safeParse({ node: { id: "probe" }, nat: { sourceAddresses: [NET.natSource] } }).success;
  return [...(knowsDsr ? [`dsr: { interface: ${NET.dev} }`] : []), ...(knowsNat ? [`nat: { sourceAddresses: [${NET.natSource}] }`] : [])];
}

type BackendRecord = ServiceRecord["backends"][number];

/** The NAT and DSR services: the same backends as the proxy services, on each mode's VIP (same ports: DSR cannot translate them). */
export function kernelServices(http: BackendRecord[], bulk: BackendRecord[]): ServiceRecord[] {
  return KERNEL_MODES.flatMap((m) => [
    { name: m.http, record: { listen: `${m.vip}:${NET.httpPort}`, protocol: "tcp", forwarding: m.mode, algorithm: "maglev" }, backends: http },
    { name: m.bulk, record: { listen: `${m.vip}:${NET.iperfPort}`, protocol: "tcp", forwarding: m.mode, algorithm: "maglev" }, backends: bulk },
  ]);
}

async function stateJson(node: BallastNode): Promise<Record<string, unknown> | null> {
  const r = await httpGet(`${node.admin}/api/state`, 3000);
  if (r.status !== 200) return null;
  try {
    return JSON.parse(r.body) as Record<string, unknown>;
  } catch {
    return null;
  }
}

/** Why the node refused a service record (from /api/state invalid[]), or null. */
function refusal(state: Record<string, unknown> | null, service: string): string | null {
  const invalid = (state?.invalid ?? []) as { key?: string; reason?: string }[];
  const hit = invalid.find((i) => typeof i.key === "string" && i.key.endsWith(`/services/${service}`));
  return hit ? String(hit.reason ?? "refused") : null;
}

/**
 * A forwarder's status inside a service's /api/state entry: the first object (depth ≤ 3) with a boolean
 * `programmed`, so the bench does not depend on where the kernel forwarder puts it.
 */
export function forwarderStatus(svc: unknown, depth = 0): { programmed: boolean; revision?: number; reason?: string | null; [k: string]: unknown } | null {
  if (!svc || typeof svc !== "object" || depth > 3) return null;
  const o = svc as Record<string, unknown>;
  if (typeof o.programmed === "boolean") return o as { programmed: boolean };
  for (const v of Object.values(o)) {
    const s = forwarderStatus(v, depth + 1);
    if (s) return s;
  }
  return null;
}

/** null when the mode forwards (a GET through its VIP answers 200 from the client namespace), else why it is skipped. */
export async function probeKernelMode(ctx: Context, node: BallastNode, ns: NsPlane, m: KernelMode): Promise<string | null> {
  // The node has loaded the snapshot (its proxy services answered); a refused record shows in invalid[].
  const state = await stateJson(node);
  const refused = refusal(state, m.http);
  if (refused) return `skipped — not built yet (the node refuses \`forwarding: ${m.mode}\`: ${refused})`;
  const r = await ns.probeHttp(m.vip, NET.httpPort, ctx.opts.quick ? 10_000 : 20_000);
  if (r.ok) return null;
  const status = forwarderStatus(await serviceState(node, m.http));
  const said = status ? `; the node says programmed=${status.programmed}${status.reason ? `, reason: ${status.reason}` : ""}` : "";
  ctx.results.notes.push(`Ballast ${m.mode.toUpperCase()} was accepted by the node but did not forward: GET http://${m.vip}:${NET.httpPort}/ from the client namespace: ${r.last}${said}.`);
  return `skipped — not forwarding (GET through the VIP: ${r.last}${said})`;
}

// ---------------------------------------------------------------------------------------------------
// NAT control plane

const CP_CLUSTER = "benchnat";
const CP_SERVICE = "cp-nat";
const CP_BACKENDS = 100;
const CP_VIP = "10.77.3.2";
const ms = (x: number) => (Number.isFinite(x) ? `${x < 10 ? x.toFixed(1) : Math.round(x)} ms` : "–");

function add(ctx: Context, f: Figure): void {
  ctx.results.controlPlane.push(f);
  ctx.log(`  ${f.name}: ${f.value}${f.note ? ` (${f.note})` : ""}`);
}

/** Polls `check` every ~2 ms until it returns a value, or NaN after `timeoutMs`; returns [ms since t0, value]. */
async function until<T>(t0: number, timeoutMs: number, check: () => Promise<T | null>): Promise<[number, T | null]> {
  while (performance.now() - t0 < timeoutMs) {
    const v = await check();
    if (v !== null) return [performance.now() - t0, v];
    await sleep(2);
  }
  return [Number.NaN, null];
}

/**
 * When the node programmed a snapshot at or after a revision. Two sources, whichever the node has:
 * its per-service forwarder status in /api/state (`programmed`, `revision`), or its own log line
 * "nftables applied" (debug level, with the snapshot's revision), timed as it arrives on the pipe.
 * The log needs no polling, so it does not load the node while it applies.
 */
interface AppliedLine {
  revision: number;
  at: number;
  nftMs: number;
  slots: number;
}

class ApplyWatch {
  private readonly applied: AppliedLine[] = [];
  /** The nft transaction time and slots changed the node logged for the apply `until` last found (NaN from /api/state). */
  last = { nftMs: Number.NaN, slots: Number.NaN };
  private readonly stop: () => void;
  constructor(private readonly node: BallastNode) {
    this.stop = node.proc.onLine((line) => {
      if (!line.includes("nftables applied")) return;
      try {
        const j = JSON.parse(line) as { revision?: number; ms?: number; slotsChanged?: number };
        if (typeof j.revision === "number") this.applied.push({ revision: j.revision, at: performance.now(), nftMs: Number(j.ms ?? Number.NaN), slots: Number(j.slotsChanged ?? Number.NaN) });
      } catch {
        // not a JSON log line
      }
    });
  }

  /** ms from `t0` until a snapshot ≥ `revision` is programmed (NaN after `timeoutMs`). */
  async until(t0: number, revision: number, timeoutMs: number): Promise<number> {
    let polls = 0;
    while (performance.now() - t0 < timeoutMs) {
      const logged = this.applied.find((a) => a.revision >= revision);
      if (logged) {
        this.last = { nftMs: logged.nftMs, slots: logged.slots };
        return Math.max(0, logged.at - t0);
      }
      // /api/state only every ~50 ms: the log line usually answers first.
      if (polls++ % 25 === 0) {
        const s = forwarderStatus(await serviceState(this.node, CP_SERVICE));
        if (s?.programmed && typeof s.revision === "number" && s.revision >= revision) {
          const at = performance.now() - t0;
          // The state answered first; the node's log line (with its nft timing) follows within moments.
          const end = performance.now() + 300;
          let logged: AppliedLine | undefined = this.applied.find((a) => a.revision >= revision);
          while (!logged && performance.now() < end) {
            await sleep(5);
            logged = this.applied.find((a) => a.revision >= revision);
          }
          this.last = { nftMs: logged?.nftMs ?? Number.NaN, slots: logged?.slots ?? Number.NaN };
          return logged ? Math.min(at, Math.max(0, logged.at - t0)) : at;
        }
      }
      await sleep(2);
    }
    return Number.NaN;
  }

  close(): void {
    this.stop();
  }
}

/**
 * The control-plane node's maps and their element counts, from one listing of the balancer namespace's
 * ruleset: maps of the table named after its cluster; those named after the service first.
 */
async function mapElements(ns: NsPlane): Promise<{ maps: { table: string; name: string; size: number; values: string[] }[]; error?: string }> {
  const r = await ns.lb.exec("nft", ["-j", "list", "ruleset"], { timeoutMs: 60_000 });
  if (r.code !== 0) return { maps: [], error: r.stderr.trim().split("\n")[0] };
  try {
    type NftMap = { table?: string; name?: string; elem?: unknown[] };
    const j = JSON.parse(r.stdout) as { nftables: { map?: NftMap }[] };
    const ours = j.nftables.flatMap((o) => (o.map && String(o.map.table).includes(CP_CLUSTER) ? [o.map] : []));
    // The slot map (`…_slots`); counter maps of the same service are not the table.
    const named = ours.filter((m) => /cp.nat/.test(String(m.name)) && String(m.name).endsWith("_slots"));
    const maps = (named.length ? named : ours).map((m) => ({ table: String(m.table), name: String(m.name), size: m.elem?.length ?? 0, values: (m.elem ?? []).map((e) => JSON.stringify(e)) }));
    return { maps };
  } catch (e) {
    return { maps: [], error: (e as Error).message };
  }
}

export async function runNatControlPlane(ctx: Context, etcd: Etcd, ns: NsPlane, baseOpts: NodeOptions): Promise<void> {
  const { log, opts } = ctx;
  log(`NAT control plane: ${CP_BACKENDS} backends, verdict flips and map loads …`);
  // 100 backend addresses in the backend namespace, all answered by the TCP sink on 0.0.0.0; a set in
  // the backend namespace's own nft table rejects health checks to the addresses the bench takes down.
  const addrs = Array.from({ length: CP_BACKENDS }, (_, i) => `${NET.manyPrefix}${i + 1}`);
  const batch = join(ns.sockDir, "addrs.batch");
  writeFileSync(batch, addrs.map((a) => `addr add ${a}/24 dev ${NET.dev}`).join("\n") + "\n");
  const added = await execCommand("ip", ["-n", ns.backend.name, "-batch", batch]);
  if (added.code !== 0) throw new Error(`adding the control-plane backend addresses: ${added.stderr}`);
  await ns.lb.addRoute(`${NET.manyPrefix}0/24`, NET.backends[0]);
  const flipRules = join(ns.sockDir, "flip.nft");
  writeFileSync(flipRules, `table inet bench_flip {\n  set down { type ipv4_addr; }\n  chain input { type filter hook input priority 0; ip daddr @down tcp dport ${NET.sinkPort} reject with tcp reset; }\n}\n`);
  const loaded = await ns.backend.exec("nft", ["-f", flipRules]);
  if (loaded.code !== 0) throw new Error(`backend flip table: ${loaded.stderr}`);
  const setDown = (addr: string, down: boolean) => ns.backend.exec("nft", [down ? "add" : "delete", "element", "inet", "bench_flip", "down", `{ ${addr} }`]);

  const prefix = `/ballast/${CP_CLUSTER}/`;
  const record = {
    listen: `${CP_VIP}:${NET.sinkPort}`,
    protocol: "tcp",
    forwarding: "nat",
    algorithm: "maglev",
    health: { type: "tcp", interval: "500ms", timeout: "300ms", rise: 1, fall: 1, jitter: 0 },
  };
  const backends = addrs.map((a, i) => ({ id: `m${i + 1}`, value: { address: a, port: NET.sinkPort } }));
  // Backends first, the service record last: its put is the moment the whole map has to be loaded.
  await seedServices(etcd, CP_CLUSTER, [{ name: CP_SERVICE, record, backends: [] }]);
  await etcd.delete(`${prefix}services/${CP_SERVICE}`);
  for (const b of backends) await etcd.put(`${prefix}backends/${CP_SERVICE}/${b.id}`, JSON.stringify(b.value));
  const node = await startNode(ctx.group, { ...baseOpts, id: "bench-nat-cp", cluster: CP_CLUSTER, logLevel: "debug" });
  const watch = new ApplyWatch(node);
  try {
    // A whole service's map loaded: put the service record → the node reports it programmed at that revision.
    const loads: number[] = [];
    const loadNft: number[] = [];
    const tries = opts.quick ? 1 : 3;
    for (let i = 0; i < tries; i++) {
      if (i > 0) {
        await etcd.delete(`${prefix}services/${CP_SERVICE}`);
        const del = await etcd.delete(`${prefix}services/${CP_SERVICE}`);
        await watch.until(performance.now(), del, 10_000);
      }
      const t0 = performance.now();
      const rev = await etcd.put(`${prefix}services/${CP_SERVICE}`, JSON.stringify(record));
      loads.push(await watch.until(t0, rev, 15_000));
      loadNft.push(watch.last.nftMs);
    }
    const status = forwarderStatus(await serviceState(node, CP_SERVICE));
    if (!loads.some(Number.isFinite)) {
      const why = status ? `the service's kernel status never reached the put's revision (last: ${JSON.stringify(status).slice(0, 200)})` : "neither /api/state (`programmed`, `revision`) nor the node's log (`nftables applied`) showed the service programmed";
      add(ctx, { name: `NAT: whole service map loaded (${CP_BACKENDS} backends)`, value: "skipped", meets: null, note: `not built yet (${why})` });
      return;
    }
    const listing = await mapElements(ns);
    const tableSize = listing.maps.length ? Math.max(...listing.maps.map((m) => m.size)) : Number.NaN;
    const loadMs = median(loads);
    add(ctx, {
      name: `NAT: whole service map loaded (${CP_BACKENDS} backends)`,
      value: `${ms(loadMs)}${loads.length > 1 ? ` (median of ${loads.length}: ${loads.map(ms).join(", ")})` : ""}`,
      target: "≤ 1 s",
      meets: Number.isFinite(loadMs) ? loadMs <= 1000 : null,
      note: `etcd put of the service record (backends already in etcd) → the node has programmed that revision (its \`nftables applied\` log line, or /api/state); includes the put's round trip. Of which the nft transaction (the node's own timing): ${loadNft.map(ms).join(", ")}`,
      data: { loadsMs: loads, nftMs: loadNft },
    });
    add(ctx, {
      name: "NAT: table size used",
      value: Number.isFinite(tableSize) ? `${tableSize.toLocaleString("en-US")} slots for ${CP_BACKENDS} backends` : "–",
      meets: null,
      note: listing.maps.length
        ? `elements of ${listing.maps.map((m) => `${m.table}/${m.name}`).join(", ")} counted in \`nft -j list ruleset\` in the balancer namespace`
        : `could not read the map (${listing.error ?? "no map named after the service"}); the node's state says ${JSON.stringify(status).slice(0, 160)}`,
    });

    // Verdict flips: reject health checks to one backend (then accept them again); time from the verdict
    // written in etcd to the service programmed at that revision on the node.
    const flips = opts.quick ? 2 : 20;
    const applied: number[] = [];
    const detected: number[] = [];
    const flipNft: number[] = [];
    const flipSlots: number[] = [];
    let lost = 0;
    for (let i = 0; i < flips; i++) {
      const b = backends[(i >> 1) % backends.length];
      const down = i % 2 === 0;
      const key = `${prefix}health/verdicts/${CP_SERVICE}/${b.id}`;
      const before = (await etcd.range(key)).revision;
      const t0 = performance.now();
      await setDown(b.value.address, down);
      const [tv, kv] = await until(t0, 20_000, async () => {
        const r = await etcd.range(key, { minModRevision: before + 1 });
        const v = r.kvs[0];
        if (!v) return null;
        const state = (decodeValue(v.value) as { state?: string } | null)?.state;
        return state === (down ? "down" : "up") ? v : null;
      });
      if (!kv) {
        lost++;
        continue;
      }
      const tVerdict = t0 + tv;
      const ta = await watch.until(tVerdict, kv.modRevision, 10_000);
      detected.push(tv);
      applied.push(ta);
      flipNft.push(watch.last.nftMs);
      flipSlots.push(watch.last.slots);
    }
    const p50 = percentile(applied, 50);
    const p99 = percentile(applied, 99);
    add(ctx, {
      name: `NAT: verdict flip → map updated on the node (${CP_BACKENDS} backends)`,
      value: `p50 ${ms(p50)} / p99 ${ms(p99)} (${applied.filter(Number.isFinite).length} flips${lost ? `, ${lost} without a verdict in 20 s` : ""})`,
      target: "p99 ≤ 200 ms",
      meets: Number.isFinite(p99) ? p99 <= 200 : null,
      note: `health verdict written to etcd (down, then up again; checks every 500 ms, fall/rise 1) → the node has programmed the verdict's revision (its \`nftables applied\` log line, or /api/state); etcd polled every ~2 ms. Of which the nft transaction (the node's own timing): p50 ${ms(percentile(flipNft, 50))} / p99 ${ms(percentile(flipNft, 99))}, ${median(flipSlots)} slots changed (median). Failure → verdict in etcd took p50 ${ms(percentile(detected, 50))} (health detection, not counted)`,
      data: { appliedMs: applied, nftMs: flipNft, slotsChanged: flipSlots, detectedMs: detected, lost },
    });
    // After an even number of flips every backend is up again: the map must still hold all of them.
    const after = await mapElements(ns);
    if (after.maps.length) {
      const seen = new Set(addrs.filter((a) => after.maps.some((m) => m.values.some((v) => v.includes(`"${a}"`)))));
      ctx.results.notes.push(`NAT control plane: after the flips the map holds ${seen.size} of ${CP_BACKENDS} backend addresses (read back with nft).`);
    }
  } finally {
    watch.close();
    await stopNode(node);
    await ns.backend.exec("nft", ["delete", "table", "inet", "bench_flip"]);
  }
}
