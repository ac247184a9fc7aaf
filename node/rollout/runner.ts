// `ballast rollout restart`: one node at a time, drain → drained → restart hook (or the node exits for
// its supervisor) → back, drained and converged at the revision read before the restart → undrain →
// ready and serving → next. Every step is written to rollout/state before it is taken, so a CLI that
// died is resumed by running the command again; one CLI at a time holds rollout/lock (leased to it).
import { spawn } from "node:child_process";
import type { NodeRecord, RolloutView, StateView } from "../../shared/api.js";
import type { KeySchema } from "../../shared/keys.js";
import { membersDown } from "../../shared/members.js";
import { parseRolloutValue } from "../../shared/rollout.js";
import type { Lease, Store } from "../control/store.js";
import { drainNode, readDrains, readNodeRecords, undrainNode } from "./guard.js";
import { readMembers } from "./members.js";

export interface RolloutOptions {
  maxUnavailable: number;
  /** Command template run with `sh -c`, `{node}` replaced by the node id; null: nodes restart themselves. */
  restartCmd: string | null;
  /** Bound of each wait (drained, back, ready) and of the restart hook. */
  timeoutMs: number;
  /** How long to wait for another rollout CLI's lock to expire (a killed CLI's lease ends within its TTL). */
  lockWaitMs: number;
  by: string;
  /** Progress lines for the operator. */
  say: (line: string) => void;
  /** GET a node's admin API (/readyz, /api/state); the caller decides which nodes get the token. */
  admin: (node: NodeRecord, path: string) => Promise<{ status: number; body: unknown }>;
}

/** The rollout stopped (a node did not come back, a hook failed, it was aborted): the message says which and why. */
export class RolloutStopped extends Error {
  constructor(message: string) {
    super(message);
    this.name = "RolloutStopped";
  }
}

const POLL_MS = 200;
const LOCK_TTL_S = 3;

export async function readRollout(store: Store, keys: KeySchema): Promise<{ state: RolloutView | null; modRevision: number }> {
  const kv = await store.get(keys.rolloutState);
  if (kv === null) return { state: null, modRevision: 0 };
  return { state: parseRolloutValue(kv.value), modRevision: kv.modRevision };
}

/** Runs (or resumes) the cluster's rollout; resolves with the finished record, throws RolloutStopped. */
export async function rolloutRestart(store: Store, keys: KeySchema, opts: RolloutOptions): Promise<RolloutView> {
  const lease = await takeLock(store, keys, opts);
  try {
    return await new Rollout(store, keys, opts).run();
  } finally {
    await lease.revoke().catch(() => undefined);
  }
}

async function takeLock(store: Store, keys: KeySchema, opts: RolloutOptions): Promise<Lease> {
  const lease = await store.grantLease(LOCK_TTL_S, true);
  const deadline = Date.now() + opts.lockWaitMs;
  let said = false;
  for (;;) {
    const r = await store.txn([{ key: keys.rolloutLock, modRevision: 0 }], [{ put: keys.rolloutLock, value: JSON.stringify({ by: opts.by, pid: process.pid, at: Date.now() }), lease: lease.id }]);
    if (r.succeeded) return lease;
    const holder = (await store.get(keys.rolloutLock))?.value.toString() ?? "";
    if (Date.now() >= deadline) {
      await lease.revoke().catch(() => undefined);
      throw new RolloutStopped(`another rollout CLI holds ${keys.rolloutLock} (${holder}); its lease ends ${LOCK_TTL_S} s after that CLI dies`);
    }
    if (!said) opts.say(`waiting for ${keys.rolloutLock} (held by ${holder}; a dead CLI's lease ends within ${LOCK_TTL_S} s)`);
    said = true;
    await sleep(500);
  }
}

class Rollout {
  private state!: RolloutView;
  private rev = 0;

  constructor(
    private readonly store: Store,
    private readonly keys: KeySchema,
    private readonly opts: RolloutOptions,
  ) {}

  async run(): Promise<RolloutView> {
    const { state, modRevision } = await readRollout(this.store, this.keys);
    if (state !== null && (state.status === "running" || state.status === "failed")) {
      this.state = { ...state, status: "running", error: null };
      this.rev = modRevision;
      const at = state.current ? `${state.current.node} (${state.current.phase})` : "the next node";
      this.opts.say(`resuming rollout ${state.id}: ${state.done.length}/${state.nodes.length} nodes done, at ${at}`);
    } else {
      const nodes = (await readNodeRecords(this.store, this.keys)).map((n) => n.id).sort();
      if (nodes.length === 0) throw new RolloutStopped("no node is registered: nothing to roll");
      // A node drained by an operator would be undrained by the rollout's last step: not ours to undo.
      const drained = await readDrains(this.store, this.keys);
      if (drained.length > 0) throw new RolloutStopped(`${drained.join(", ")} ${drained.length === 1 ? "is" : "are"} drained (rollout/drains/): undrain first (ballast node undrain <id>); a rollout starts with no node drained`);
      // A member that is down already takes a place of maxUnavailable: every drain would wait for it.
      const down = membersDown((await readMembers(this.store, this.keys)).members, new Set(nodes), new Set(drained));
      if (down.length > 0) {
        const ids = down.map((m) => m.id).join(", ");
        throw new RolloutStopped(`${ids} ${down.length === 1 ? "is" : "are"} down (a member with no live node record, members/): start it again, or if it was removed for good: ballast node forget <id>; a rollout starts with every member up`);
      }
      const now = Date.now();
      this.state = { id: `r-${now}`, status: "running", startedAt: now, updatedAt: now, maxUnavailable: this.opts.maxUnavailable, restartCmd: this.opts.restartCmd, nodes, done: [], current: null, error: null, steps: [] };
      this.rev = modRevision;
      this.opts.say(`rollout ${this.state.id}: ${nodes.join(", ")} (max unavailable ${this.opts.maxUnavailable}, restart ${this.opts.restartCmd === null ? "by each node's supervisor" : `hook: ${this.opts.restartCmd}`})`);
    }
    await this.save();
    try {
      for (const node of this.state.nodes) {
        if (this.state.done.includes(node)) continue;
        await this.rollNode(node);
      }
    } catch (err) {
      const message = (err as Error).message;
      if (!(err instanceof Aborted)) {
        this.state.status = "failed";
        this.state.error = message;
        await this.save().catch(() => undefined);
      }
      throw new RolloutStopped(message);
    }
    this.state.status = "done";
    this.state.current = null;
    await this.save();
    this.opts.say(`rollout ${this.state.id} done: ${this.state.done.length} nodes`);
    return this.state;
  }

  private async rollNode(node: string): Promise<void> {
    const s = this.state;
    if (s.current === null || s.current.node !== node) {
      const rec = await this.record(node);
      if (rec === null) throw new Error(`node ${node} is not registered (down?): stopped before draining it`);
      s.current = { node, phase: "draining", since: Date.now(), revision: 0, startedAtBefore: rec.startedAt, marks: { drain: Date.now(), restart: 0, undrain: 0, openAtStart: 0, cut: 0 } };
      await this.save();
    }
    const cur = s.current;
    if (cur.phase === "draining") {
      this.opts.say(`${node}: draining`);
      await drainNode(this.store, this.keys, node, {
        maxUnavailable: s.maxUnavailable,
        waitMs: this.opts.timeoutMs,
        by: this.opts.by,
        reason: `rollout ${s.id}`,
        rollout: s.id,
        // Without a hook the node restarts itself once drained: a process started before now does.
        restartAt: s.restartCmd === null ? cur.marks.drain : null,
        onWait: (out) => this.opts.say(`${node}: waiting for the drain guard (${out.map((o) => `${o.node}: ${o.why}`).join(", ")})`),
      });
      const drained = await this.until(`${node} to report drained`, async () => {
        const r = await this.record(node);
        if (r !== null && r.startedAt > cur.startedAtBefore) return r; // already restarted itself
        return r?.drain?.state === "drained" ? r : null;
      });
      if (drained.drain) {
        cur.marks.openAtStart = drained.drain.openAtStart;
        cur.marks.cut = drained.drain.state === "drained" ? drained.drain.open : 0;
      }
      cur.revision = (await this.store.list(this.keys.drainGuard)).revision;
      this.opts.say(`${node}: drained in ${Date.now() - cur.marks.drain} ms (${cur.marks.openAtStart} open at start, ${cur.marks.cut} cut)`);
      await this.phase("restarting");
    }
    if (cur.phase === "restarting") {
      cur.marks.restart ||= Date.now();
      const now = await this.record(node);
      if (s.restartCmd !== null && !(now !== null && now.startedAt > cur.startedAtBefore)) {
        this.opts.say(`${node}: running the restart hook`);
        await runHook(s.restartCmd, node, this.opts.timeoutMs);
      }
      await this.phase("waiting");
    }
    if (cur.phase === "waiting") {
      this.opts.say(`${node}: waiting for the new process (drained, converged at revision ${cur.revision})`);
      // What the last poll saw, for the failure message: an operator must tell "the old process never
      // exited" (its supervisor or the hook) from "no process registered" and "the new one lags".
      let seen = "";
      await this.until(`${node} to come back (a new process, drained, at revision ≥ ${cur.revision})`, async () => {
        seen = "";
        const r = await this.record(node);
        if (r === null) {
          seen = "no node record: no process of it is registered";
          return null;
        }
        if (r.startedAt <= cur.startedAtBefore) {
          seen = `the process started ${new Date(r.startedAt).toISOString()} (before the drain) is still registered, drain ${r.drain?.state ?? "none"}: it did not exit, or its record outlived it`;
          return null;
        }
        if (r.drain?.state !== "drained") {
          seen = `a new process (started ${new Date(r.startedAt).toISOString()}) reports drain ${r.drain?.state ?? "none"}`;
          return null;
        }
        seen = `a new process (started ${new Date(r.startedAt).toISOString()}) is drained; its admin API at ${r.admin} did not answer /api/state`;
        const st = await this.stateOf(r);
        if (st === null) return null;
        seen = `a new process (started ${new Date(r.startedAt).toISOString()}) is drained at revision ${st.revision}, snapshot revision ${st.snapshotRevision}`;
        return st.revision >= cur.revision && st.snapshotRevision > 0 ? r : null;
      }, "did not come back", () => seen);
      await this.phase("undraining");
    }
    if (cur.phase === "undraining") {
      cur.marks.undrain ||= Date.now();
      await undrainNode(this.store, this.keys, node, this.opts.by);
      await this.until(`${node} to be ready and serving`, async () => {
        const r = await this.record(node);
        if (r === null || !r.ready || r.draining || r.drain !== undefined) return null;
        const ready = await this.opts.admin(r, "/readyz");
        if (ready.status !== 200) return null;
        const st = await this.stateOf(r);
        if (st === null || st.revision < cur.revision) return null;
        // Serving: every service carried, except what this node could never carry (a mode no forwarder
        // here handles, an address it cannot bind: reported per node, not a reason to hold the rollout).
        return st.services.every((svc) => svc.forwarding.programmed || svc.forwarding.forwarder === null || svc.listenerError !== null) ? r : null;
      }, "did not become ready after undrain");
      const end = Date.now();
      s.steps.push({
        node,
        drainMs: Math.max(0, cur.marks.restart - cur.marks.drain),
        restartMs: Math.max(0, cur.marks.undrain - cur.marks.restart),
        readyMs: end - cur.marks.undrain,
        openAtStart: cur.marks.openAtStart,
        cut: cur.marks.cut,
      });
      s.done.push(node);
      s.current = null;
      await this.save();
      this.opts.say(`${node}: back and serving (${end - cur.marks.drain} ms)`);
    }
  }

  private async phase(phase: NonNullable<RolloutView["current"]>["phase"]): Promise<void> {
    this.state.current!.phase = phase;
    this.state.current!.since = Date.now();
    await this.save();
  }

  /** Writes the record if nobody else did since our last write: an abort in between stops us here. */
  private async save(): Promise<void> {
    this.state.updatedAt = Date.now();
    const r = await this.store.txn([{ key: this.keys.rolloutState, modRevision: this.rev }], [{ put: this.keys.rolloutState, value: JSON.stringify(this.state) }]);
    if (r.succeeded) {
      this.rev = r.revision;
      return;
    }
    await this.checkAborted();
    throw new Error(`${this.keys.rolloutState} was changed by someone else: stopped`);
  }

  private async checkAborted(): Promise<void> {
    const { state } = await readRollout(this.store, this.keys);
    if (state?.id === this.state.id && state.status === "aborted") throw new Aborted(`rollout ${state.id} aborted${state.error ? `: ${state.error}` : ""}`);
  }

  private async record(node: string): Promise<NodeRecord | null> {
    return (await readNodeRecords(this.store, this.keys)).find((n) => n.id === node) ?? null;
  }

  private async stateOf(r: NodeRecord): Promise<StateView | null> {
    const res = await this.opts.admin(r, "/api/state");
    if (res.status === 401) throw new Error(`${r.id}'s admin API at ${r.admin} wants a token: pass --token (and --trust for its address)`);
    return res.status === 200 ? (res.body as StateView) : null;
  }

  /** Polls `check` until it returns a value, the timeout passes (the rollout stops, naming `what`), or an abort. */
  private async until<T>(what: string, check: () => Promise<T | null>, failure = "timed out", lastSeen: () => string = () => ""): Promise<T> {
    const deadline = Date.now() + this.opts.timeoutMs;
    let last = "";
    for (;;) {
      await this.checkAborted();
      try {
        const v = await check();
        if (v !== null) return v;
      } catch (err) {
        last = (err as Error).message;
        if (/wants a token/.test(last)) throw err;
      }
      if (Date.now() >= deadline) {
        const node = this.state.current?.node ?? "?";
        const saw = lastSeen();
        throw new Error(`${node} ${failure}: waited ${Math.round(this.opts.timeoutMs / 1000)} s for ${what}${saw ? ` (last seen: ${saw})` : ""}${last ? ` (last error: ${last})` : ""}; the rollout stopped here, ${node} keeps its drain key (ballast rollout restart resumes, ballast rollout abort ends it)`);
      }
      await sleep(POLL_MS);
    }
  }
}

class Aborted extends Error {}

/** Runs the restart hook for one node: `sh -c` with {node} replaced; a non-zero exit stops the rollout. */
function runHook(template: string, node: string, timeoutMs: number): Promise<void> {
  // Node ids are 1-63 of [A-Za-z0-9_.-] (shared/keys.ts): safe inside single quotes.
  const cmd = template.replaceAll("{node}", `'${node}'`);
  return new Promise((resolve, reject) => {
    const child = spawn("sh", ["-c", cmd], { stdio: ["ignore", "inherit", "pipe"], env: { ...process.env, BALLAST_NODE: node } });
    let err = "";
    child.stderr!.on("data", (d: Buffer) => {
      err = (err + d.toString()).slice(-2000);
      process.stderr.write(d);
    });
    const timer = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
    child.on("error", (e) => {
      clearTimeout(timer);
      reject(new Error(`restart hook for ${node} could not run: ${e.message}`));
    });
    child.on("exit", (code, signal) => {
      clearTimeout(timer);
      if (code === 0) resolve();
      else reject(new Error(`restart hook for ${node} failed (${signal ? `killed by ${signal}` : `exit ${code}`}): ${err.trim().split("\n").slice(-3).join("; ") || cmd}`));
    });
  });
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}
