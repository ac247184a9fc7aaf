// Watching a chaos cluster while a fault runs: one sampler (poll every interval until stopped) and one
// "the first time each node sees X" poll, which every timing figure of the scenarios is built on, plus
// the samplers the scenarios share (readiness, the router's next hops, the router's conntrack pins).

import type { StateView } from "../../../shared/api.js";
import { waitFor } from "../../helpers/wait.js";
import type { ChaosCluster } from "./chaos-cluster.js";

/** What firstSeen needs of a node (a NodeMember; anything with an id and a state in tests). */
export interface StateSource {
  readonly nodeId: string;
  state(): Promise<StateView>;
}

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/**
 * Calls `sample` every `intervalMs` (from the start of one call to the start of the next; never two at
 * once) until stopped, keeping what it returns other than undefined. A sample that throws is skipped:
 * the watched thing may be the one failing. `stop()` waits for the call in flight.
 */
export function sampleEvery<T>(intervalMs: number, sample: () => Promise<T | undefined>): { startedAt: number; stop: () => Promise<T[]> } {
  const samples: T[] = [];
  const startedAt = Date.now();
  let running = true;
  const loop = (async () => {
    while (running) {
      const at = Date.now();
      const s = await sample().catch(() => undefined);
      if (s !== undefined) samples.push(s);
      await sleep(Math.max(0, intervalMs - (Date.now() - at)));
    }
  })();
  return {
    startedAt,
    stop: async () => {
      running = false;
      await loop;
      return samples;
    },
  };
}

export interface FirstSeenOptions {
  /** Stop polling after this long (default 20 s). */
  timeoutMs?: number;
  /** Pause between rounds (default 100 ms). */
  intervalMs?: number;
}

/**
 * When each node's /api/state first satisfies `sees`: node id → epoch ms, stamped when the answer
 * arrived (so never earlier than the truth; late by at most one round). Polling starts at once —
 * start it before the fault, await it after. Resolves when every node has seen it or at the deadline;
 * a node missing from the map never saw it (the scenario reports that as its own figure). A node that
 * does not answer counts as "not yet".
 */
export async function firstSeen<N extends StateSource>(nodes: readonly N[], sees: (state: StateView, node: N) => boolean, opts: FirstSeenOptions = {}): Promise<Map<string, number>> {
  const seenAt = new Map<string, number>();
  const round = async () => {
    await Promise.all(
      nodes.map(async (n) => {
        if (seenAt.has(n.nodeId)) return;
        const s = await n.state().catch(() => null);
        if (s && sees(s, n)) seenAt.set(n.nodeId, Date.now());
      }),
    );
    return seenAt.size === nodes.length;
  };
  await waitFor(round, { timeoutMs: opts.timeoutMs ?? 20_000, intervalMs: opts.intervalMs ?? 100 }).catch(() => {});
  return seenAt;
}

/** firstSeen, failing with `message` and the nodes that never saw it when not every node did in time. */
export async function everyNodeSees<N extends StateSource>(
  nodes: readonly N[],
  sees: (state: StateView, node: N) => boolean,
  opts: FirstSeenOptions & { message: string },
): Promise<Map<string, number>> {
  const seenAt = await firstSeen(nodes, sees, opts);
  const missing = nodes.filter((n) => !seenAt.has(n.nodeId)).map((n) => n.nodeId);
  if (missing.length > 0) throw new Error(`timed out after ${opts.timeoutMs ?? 20_000} ms waiting for ${opts.message}: not seen by [${missing}]`);
  return seenAt;
}

export interface ReadinessSample {
  /** ms since the watch started */
  t: number;
  /** Per node: /readyz said 200 (true), something else (false), or did not answer in time (null: unknown). */
  ready: Record<string, boolean | null>;
  /** The router's next hops for the VIP; null when the router could not be asked (a docker exec failed). */
  announced: string[] | null;
}

/** Samples where some node answered not ready (an unanswered probe is unknown, not "not ready"). */
export function notReadySamples(samples: ReadinessSample[], node?: string): number {
  return samples.filter((s) => (node === undefined ? Object.values(s.ready).some((r) => r === false) : s.ready[node] === false)).length;
}

/** Samples the router answered where `ip` (or, without it, any of `count` nodes) was not a next hop. */
export function notAnnouncedSamples(samples: ReadinessSample[], opts: { ip?: string; count?: number }): number {
  return samples.filter((s) => s.announced !== null && (opts.ip !== undefined ? !s.announced.includes(opts.ip) : s.announced.length !== opts.count)).length;
}

/** Samples with an unanswered readiness probe or router question: reported beside the counts above. */
export function unknownSamples(samples: ReadinessSample[]): number {
  return samples.filter((s) => s.announced === null || Object.values(s.ready).some((r) => r === null)).length;
}

/** Samples every node's /readyz and the router's next hops until stopped (for "stayed ready" checks). */
export function watchReadiness(c: ChaosCluster, intervalMs = 250): { startedAt: number; stop: () => Promise<ReadinessSample[]> } {
  const t0 = Date.now();
  const watch = sampleEvery(intervalMs, async (): Promise<ReadinessSample> => {
    const at = Date.now();
    const [ready, announced] = await Promise.all([
      Promise.all(c.nodes.map(async (n) => [n.nodeId, await n.readiness()] as const)),
      c.announcedNodes().catch(() => null),
    ]);
    return { t: at - t0, ready: Object.fromEntries(ready), announced };
  });
  return { startedAt: t0, stop: watch.stop };
}

/**
 * Samples the router's conntrack table while it runs: the node each client connection to the VIP
 * was pinned to (the sticky mark is 256 + the next hop's last octet), keyed "src:port". This names
 * the node of connections that failed before any answer, which the backends' replies cannot.
 * Entries outlive their connection (10 s after a reset, 2 min in TIME_WAIT), so a 1 s sample misses none.
 */
export function watchConntrack(c: ChaosCluster, intervalMs = 1000): { stop: () => Promise<Map<string, string>> } {
  const pinned = new Map<string, string>();
  const base = c.networks.fabric.base;
  const sample = async (): Promise<undefined> => {
    const out = await c.router!.exec(["cat", "/proc/net/nf_conntrack"]);
    for (const line of out.stdout.split("\n")) {
      const m = /src=(\S+) dst=(\S+) sport=(\d+) dport=(\d+).* mark=(\d+)/.exec(line);
      if (!m || m[2] !== c.vip) continue;
      const mark = Number(m[5]);
      if (mark > 256) pinned.set(`${m[1]}:${m[3]}`, `${base}.${mark - 256}`);
    }
    return undefined;
  };
  const watch = sampleEvery(intervalMs, sample);
  return {
    stop: async () => {
      await watch.stop();
      await sample().catch(() => {});
      return pinned;
    },
  };
}

/** Polls the router's next hops for the VIP until stopped: when each node left and came back. */
export function watchRoutes(c: ChaosCluster, intervalMs = 50): { stop: () => Promise<{ t: number; announced: string[]; askedAt: number }[]> } {
  return sampleEvery(intervalMs, async () => {
    const askedAt = Date.now();
    const announced = await c.announcedNodes();
    // Stamped when the answer is in: "withdrawn by t" is then never earlier than the truth. Each answer
    // is a `docker exec`, which takes from ~50 ms to over a second on a loaded machine: the truth lies
    // in [askedAt, t], and polling cannot time a change better than that (watchRouteEvents can).
    return { t: Date.now(), announced, askedAt };
  });
}

/** The VIP's route in the router's kernel table after one change: when (kernel event) and its next hops. */
export interface RouteEvent {
  /** Epoch ms of the netlink event, as `ip -ts monitor` in the router stamped it (the host's clock). */
  t: number;
  announced: string[];
}

/**
 * Records every change of the VIP's route in the router's kernel table as it happens (`ip -o -ts
 * monitor route` running in the router until stopped), with the kernel event's own time. Unlike
 * watchRoutes, the time of a change does not depend on how long a `docker exec` takes; the events
 * are read once, at the end. Resolves once the monitor runs; `initial` is the route just after.
 */
export async function watchRouteEvents(c: ChaosCluster): Promise<{ initial: string[]; stop: () => Promise<RouteEvent[]> }> {
  const router = c.router!;
  const vip = c.vip!;
  const file = `/run/bird/route-events-${Date.now()}-${Math.random().toString(16).slice(2, 8)}.log`;
  const pid = (await router.sh(`/usr/sbin/ip -o -ts monitor route >${file} 2>&1 </dev/null & echo $!`)).trim();
  if (!/^\d+$/.test(pid)) throw new Error(`route monitor in the router: no pid (${pid})`);
  // The monitor subscribes as it starts: a route read after its process exists misses no later change.
  await waitFor(async () => (await router.exec(["test", "-e", `/proc/${pid}`])).exitCode === 0, { timeoutMs: 5_000, intervalMs: 50, message: "the route monitor in the router" });
  const initial = await c.announcedNodes();
  return {
    initial,
    stop: async () => {
      const out = await router.sh(`kill ${pid} 2>/dev/null; cat ${file}; rm -f ${file}`);
      return parseRouteEvents(out, vip);
    },
  };
}

/**
 * The VIP's route after each event of `ip -o -ts monitor route` output: one line per event,
 * "[2026-12-02T07:12:16.421800] [Deleted ]10.1.255.10 proto bird metric 32 \	nexthop via A dev eth0 weight 1 \	nexthop via B …"
 * (or "… via A dev eth0 …" for one next hop). Other prefixes are skipped; a deleted route has none.
 */
export function parseRouteEvents(text: string, vip: string): RouteEvent[] {
  const events: RouteEvent[] = [];
  for (const line of text.split("\n")) {
    const m = /^\[(\d{4}-\d\d-\d\dT[\d:.]+)\]\s+(Deleted\s+)?(?:(?:unicast|unreachable|blackhole|prohibit)\s+)?(\S+)\s(.*)$/.exec(line);
    if (!m || (m[3] !== vip && m[3] !== `${vip}/32`)) continue;
    const t = Date.parse(`${m[1]}Z`);
    if (Number.isNaN(t)) continue;
    const announced = m[2] ? [] : [...m[4].matchAll(/via (\d+\.\d+\.\d+\.\d+)/g)].map((x) => x[1]).sort();
    events.push({ t, announced });
  }
  return events;
}
