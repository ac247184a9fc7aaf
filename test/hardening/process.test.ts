// Issue 13 (part A): the node process's policy for an exception or rejection nothing caught. It must
// not keep serving from state it no longer knows to be sound: log the error object, drain (readyz
// 503, open connections finish), exit 1 so the supervisor restarts a clean process. The fault is
// raised inside a real `ballast node` child by a preloaded module, on SIGUSR2.
import { mkdtempSync, writeFileSync } from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { closeAllBackends, startTcpEcho } from "../helpers/backends.js";
import { type NodeProcess, spawnNode } from "../helpers/node.js";
import { waitFor } from "../helpers/wait.js";

const PRELOAD = `
process.on("SIGUSR2", () => {
  if (process.env.FAULT === "reject") void Promise.reject(new Error("injected rejection"));
  else setImmediate(() => { throw new Error("injected exception"); });
});
`;

let proc: NodeProcess | null = null;
afterEach(async () => {
  proc?.kill("SIGKILL");
  proc = null;
  await closeAllBackends();
});

async function readyz(admin: string): Promise<number> {
  return (await fetch(`http://${admin}/readyz`)).status;
}

describe("uncaught errors in the node process", () => {
  it.each([
    { fault: "throw", logged: "uncaught exception", message: "injected exception" },
    { fault: "reject", logged: "unhandled rejection", message: "injected rejection" },
  ])("$fault: logs the error with its stack, drains, exits 1", async ({ fault, logged, message }) => {
    const backend = await startTcpEcho("a");
    const preload = join(mkdtempSync(join(tmpdir(), "ballast-fault-")), "fault.mjs");
    writeFileSync(preload, PRELOAD);
    const p = await spawnNode(
      {
        drainTimeout: "20s",
        services: [{ name: "web", listen: "127.0.0.1:0", health: { type: "none" }, backends: [{ id: "a", address: "127.0.0.1", port: backend.port }] }],
      },
      { nodeArgs: ["--import", preload], env: { FAULT: fault } },
    );
    proc = p;
    let exitCode: number | null | undefined;
    void p.exited.then((c) => (exitCode = c));
    await waitFor(async () => (await readyz(p.admin)) === 200, { message: "node ready" });
    const state = (await (await fetch(`http://${p.admin}/api/state`)).json()) as { services: Array<{ name: string; boundPort: number }> };
    const port = state.services.find((s) => s.name === "web")!.boundPort;
    // An open connection: the drain must let it finish rather than cut it.
    const conn = net.connect({ host: "127.0.0.1", port });
    await new Promise((r) => conn.once("connect", r));
    await waitFor(() => backend.open === 1, { message: "connection reaches the backend" });

    p.child.kill("SIGUSR2");
    await waitFor(async () => (await readyz(p.admin)) === 503, { message: "readyz turns 503 (draining)" });
    // The log line and the 503 travel different pipes: wait for the line rather than assume its order.
    await waitFor(() => p.logs.some((l) => l.includes(logged)), { message: `the ${logged} is logged` });
    const fatal = p.logs.map((l) => l.trim()).find((l) => l.includes(logged));
    const entry = JSON.parse(fatal!) as { level: number; err: { message: string; stack: string } };
    expect(entry.level).toBe(60);
    expect(entry.err.message).toBe(message);
    expect(entry.err.stack).toContain(message);
    expect(exitCode).toBeUndefined();

    conn.destroy();
    await waitFor(() => exitCode !== undefined, { timeoutMs: 15_000, message: "the process exits after the drain" });
    expect(exitCode).toBe(1);
  });
});
