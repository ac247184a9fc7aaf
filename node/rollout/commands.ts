// The CLI's coordinated operations: `ballast node drain|undrain|forget <id>` (through the drain guard) and
// `ballast rollout restart|status|abort`. Registered on the program by node/cli.ts.
import os from "node:os";
import type { Command } from "commander";
import type { NodeRecord, RolloutView } from "../../shared/api.js";
import type { KeySchema } from "../../shared/keys.js";
import { NODE_ID } from "../../shared/keys.js";
import type { Store } from "../control/store.js";
import { getJson } from "../admin-client.js";
import type { GlobalOpts } from "../cli.js";

// The guard, members and runner modules (zod-built parsers) are imported by the actions that use them:
// registering these commands must not slow every other command's start (issue 19).
const guard = () => import("./guard.js");
const membersModule = () => import("./members.js");
const runner = () => import("./runner.js");

export interface CliParts {
  withStore<T>(cmd: Command, fn: (store: Store, keys: KeySchema, opts: GlobalOpts) => Promise<T>, timeoutMs?: number): Promise<T>;
  print(opts: GlobalOpts, rows: Record<string, unknown>[], json?: unknown): void;
  /** Whether --trust lets the token go to this admin address. */
  trusts(opts: GlobalOpts, admin: string): boolean;
}

/** Who is asking, for the drain record and the guard key. */
function operator(): string {
  try {
    return `${os.userInfo().username}@${os.hostname()}`;
  } catch {
    return os.hostname();
  }
}

function count(value: string, what: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1) throw new Error(`${what} must be a whole number ≥ 1, got ${value}`);
  return n;
}

function seconds(value: string, what: string): number {
  const n = Number(value);
  if (!Number.isFinite(n) || n < 0) throw new Error(`${what} must be a number of seconds ≥ 0, got ${value}`);
  return n * 1000;
}

function nodeId(id: string): string {
  if (!NODE_ID.test(id)) throw new Error(`node id ${JSON.stringify(id.slice(0, 70))} is not 1-63 characters of letters, digits, '_', '.', '-'`);
  return id;
}

export function registerRolloutCommands(program: Command, node: Command, cli: CliParts): void {
  node
    .command("drain <id>")
    .description("drain a node through its etcd key (withdraws from anycast and DNS, open connections finish); it stays drained across restarts until undrain")
    .option("--max-unavailable <n>", "refuse when this many other nodes are already drained or down", "1")
    .option("--wait [seconds]", "wait for the guard to admit the drain instead of refusing (default 300 s)")
    .option("--reason <text>", "why (kept in the drain record)", "")
    .action(async (id: string, o: { maxUnavailable: string; wait?: string | boolean; reason: string }, cmd: Command) => {
      const waitMs = o.wait === undefined || o.wait === false ? 0 : o.wait === true ? 300_000 : seconds(o.wait, "--wait");
      const max = count(o.maxUnavailable, "--max-unavailable");
      const { DrainRefused, drainNode } = await guard();
      await cli.withStore(
        cmd,
        async (store, keys) => {
          try {
            const r = await drainNode(store, keys, nodeId(id), {
              maxUnavailable: max,
              waitMs,
              by: operator(),
              reason: o.reason,
              onWait: (out) => process.stderr.write(`waiting: ${out.map((x) => `${x.node}: ${x.why}`).join(", ")} (at most ${max} out at once)\n`),
            });
            process.stdout.write(r.already ? `node ${id} was already drained\n` : `node ${id} drain requested at revision ${r.revision}; \`ballast node ls\` shows it drained once its connections finished\n`);
          } catch (err) {
            if (err instanceof DrainRefused) throw new Error(err.message);
            throw err;
          }
        },
        waitMs + 10_000,
      );
    });
  node
    .command("undrain <id>")
    .description("remove a node's drain key: it opens its listeners and reports ready again")
    .action(async (id: string, _o, cmd: Command) =>
      cli.withStore(cmd, async (store, keys) => {
        const { undrainNode } = await guard();
        const had = await undrainNode(store, keys, nodeId(id), operator());
        process.stdout.write(had ? `node ${id} undrained\n` : `node ${id} had no drain key\n`);
      }),
    );

  node
    .command("forget <id>")
    .description("remove a node that is gone for good (scale-down, renamed): its member record and drain key; refused while the node is live")
    .action(async (id: string, _o, cmd: Command) =>
      cli.withStore(cmd, async (store, keys) => {
        const { ForgetRefused, forgetNode } = await membersModule();
        try {
          const r = await forgetNode(store, keys, nodeId(id), operator());
          const what = [r.member ? `member record members/${id}` : "", r.drain ? `drain key rollout/drains/${id}` : ""].filter((x) => x !== "").join(" and ");
          process.stdout.write(`node ${id} forgotten (removed its ${what}); the drain guard no longer counts it\n`);
        } catch (err) {
          if (err instanceof ForgetRefused) throw new Error(err.message);
          throw err;
        }
      }),
    );

  const rollout = program.command("rollout").description("rolling operations across the cluster's nodes, one at a time (state in etcd: rollout/state)");
  rollout
    .command("restart")
    .description("restart every node in turn: drain → drained → restart hook → back (drained, converged) → undrain → ready; resumes a stopped rollout")
    .option("--max-unavailable <n>", "nodes drained or down at once, this one included", "1")
    .option("--restart-cmd <template>", "command run with sh -c for each node, {node} replaced by its id (default: the node exits 75 once drained and its supervisor restarts it)")
    .option("--timeout <seconds>", "bound of each wait (drained, back, ready) and of the hook", "300")
    .option("--token <token>", "admin API bearer token (sent only to nodes in --trust)")
    .action(async (o: { maxUnavailable: string; restartCmd?: string; timeout: string; token?: string }, cmd: Command) => {
      const timeoutMs = seconds(o.timeout, "--timeout");
      const max = count(o.maxUnavailable, "--max-unavailable");
      const opts = cmd.optsWithGlobals() as GlobalOpts;
      const { RolloutStopped, rolloutRestart } = await runner();
      // The whole rollout may take long: the CLI's etcd deadline covers each call, not the run.
      await cli.withStore(
        cmd,
        async (store, keys) => {
          try {
            await rolloutRestart(store, keys, {
              maxUnavailable: max,
              restartCmd: o.restartCmd ?? null,
              timeoutMs,
              lockWaitMs: 15_000,
              by: operator(),
              say: (line) => process.stdout.write(`${new Date().toISOString()}  ${line}\n`),
              admin: (n: NodeRecord, path: string) => getJson(`http://${n.admin}${path}`, o.token !== undefined && cli.trusts(opts, n.admin) ? o.token : undefined, 3000),
            });
          } catch (err) {
            if (err instanceof RolloutStopped) throw new Error(`rollout stopped: ${err.message}`);
            throw err;
          }
        },
        Number.POSITIVE_INFINITY,
      );
    });
  rollout
    .command("status")
    .description("the rollout's progress: each node's place, phase and figures, and the nodes drained now")
    .action(async (_o, cmd: Command) =>
      cli.withStore(cmd, async (store, keys, opts) => {
        const [{ readRollout }, { readDrains, readNodeRecords }, { readMembers }] = await Promise.all([runner(), guard(), membersModule()]);
        const [{ state }, drains, records, { members }] = await Promise.all([readRollout(store, keys), readDrains(store, keys), readNodeRecords(store, keys), readMembers(store, keys)]);
        const rows = rolloutRows(state, drains, records, members.map((m) => m.id));
        if (opts.output === "json") {
          cli.print(opts, [], { rollout: state, drains, nodes: rows });
          return;
        }
        process.stdout.write(state === null ? "no rollout recorded\n" : `rollout ${state.id}: ${state.status}, ${state.done.length}/${state.nodes.length} nodes done, max unavailable ${state.maxUnavailable}${state.error ? `\n  stopped: ${state.error}` : ""}\n`);
        cli.print(opts, rows);
      }),
    );
  rollout
    .command("abort")
    .description("stop the rollout: a running CLI stops at its next step; drain keys stay (undrain them with ballast node undrain)")
    .action(async (_o, cmd: Command) =>
      cli.withStore(cmd, async (store, keys) => {
        const [{ readRollout }, { readDrains }] = await Promise.all([runner(), guard()]);
        for (;;) {
          const { state, modRevision } = await readRollout(store, keys);
          if (state === null || state.status === "done" || state.status === "aborted") throw new Error(state === null ? "no rollout recorded" : `rollout ${state.id} is already ${state.status}`);
          const next: RolloutView = { ...state, status: "aborted", error: `aborted by ${operator()}`, updatedAt: Date.now() };
          const r = await store.txn([{ key: keys.rolloutState, modRevision }], [{ put: keys.rolloutState, value: JSON.stringify(next) }]);
          if (!r.succeeded) continue; // the running CLI wrote a step in between: abort what it wrote
          const drains = await readDrains(store, keys);
          process.stdout.write(`rollout ${state.id} aborted${drains.length > 0 ? `; still drained: ${drains.join(", ")} (ballast node undrain <id>)` : ""}\n`);
          return;
        }
      }),
    );
}

/** One row per node: its place in the rollout, its drain key and report, its readiness. */
function rolloutRows(state: RolloutView | null, drains: string[], records: NodeRecord[], members: string[]): Record<string, unknown>[] {
  const ids = [...new Set([...(state?.nodes ?? []), ...records.map((r) => r.id), ...drains, ...members])].sort();
  return ids.map((id) => {
    const r = records.find((x) => x.id === id);
    const step = state?.steps.find((s) => s.node === id);
    const place = state === null || !state.nodes.includes(id) ? "-" : state.done.includes(id) ? "done" : state.current?.node === id ? state.current.phase : "pending";
    return {
      node: id,
      rollout: place,
      drainKey: drains.includes(id) ? "yes" : "",
      drain: r?.drain ? r.drain.state : drains.includes(id) ? (r ? "requested" : "down") : "",
      ready: r ? r.ready : members.includes(id) ? "down (member, not registered)" : "not registered",
      figures: step ? `drain ${step.drainMs} ms, restart ${step.restartMs} ms, ready ${step.readyMs} ms, ${step.openAtStart} open, ${step.cut} cut` : "",
    };
  });
}
