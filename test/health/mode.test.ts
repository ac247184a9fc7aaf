// The verdict mode machine of one node on an in-memory store, with the heartbeat written by hand:
// no heartbeat for staleAfter → local fallback; a fresh but unsettled heartbeat keeps it there;
// a heartbeat that disappears never ends a fallback; a fresh, settled one returns the node to shared.
import { afterEach, describe, expect, it } from "vitest";
import { MemoryStore } from "../../node/control/memory-store.js";
import { pino } from "pino";
import { BallastNode } from "../../node/node.js";
import { encodeValue } from "../../shared/codec.js";
import { nodeConfigSchema } from "../../shared/schema.js";
import { closeAllBackends, startTcpEcho } from "../helpers/backends.js";
import { waitFor } from "../helpers/wait.js";

const nodes: BallastNode[] = [];
afterEach(async () => {
  for (const n of nodes.splice(0)) await n.close();
  await closeAllBackends();
});

describe("verdict mode", () => {
  it("falls back without a heartbeat, and returns only on a fresh, settled one", async () => {
    const store = new MemoryStore();
    const config = nodeConfigSchema.parse({ node: { id: "n1" }, cluster: "m", admin: { listen: "127.0.0.1:0" }, health: { staleAfter: "300ms" } });
    const errors: string[] = [];
    const log = pino({ level: "error" }, { write: (line: string) => errors.push(line) });
    const node = new BallastNode({ config, store, log });
    nodes.push(node);
    const keys = node.keys;
    // Another candidate holds the election and never writes: no heartbeat, ever, unless we write one.
    const ghost = await store.campaign(keys.election, "ghost", 30);
    const a = await startTcpEcho("a");
    await store.put(keys.service("web"), JSON.stringify({ listen: "127.0.0.1:0", health: { interval: "50ms", timeout: "50ms", rise: 1, fall: 1 } }));
    await store.put(keys.backend("web", "a"), `127.0.0.1:${a.port}`);
    await node.start();
    expect(node.mode).toBe("shared");

    await waitFor(() => node.mode === "local-fallback", { message: "fallback after staleAfter without a heartbeat" });
    expect(node.health.status().modeReason).toMatch(/no leader heartbeat for/);
    await waitFor(() => node.reconciler.snapshot?.services.get("web")?.backends[0]?.verdict?.source === "local", { message: "local verdict routes" });

    const heartbeat = (settled: boolean) => store.put(keys.heartbeat, encodeValue({ leader: "ghost", at: Date.now(), term: "7", settled }));
    // Several evaluations each (they run every staleAfter/10): neither an unsettled heartbeat nor
    // one that disappears (within staleAfter, so not stale yet) ends the fallback.
    const watch = async (ms: number) => {
      const until = Date.now() + ms;
      await waitFor(() => Date.now() > until || node.mode !== "local-fallback");
      expect(node.mode).toBe("local-fallback");
    };
    await heartbeat(false);
    await watch(120);
    await store.delete(keys.heartbeat);
    await watch(120);

    await heartbeat(true);
    await waitFor(() => node.mode === "shared", { message: "shared again" });
    expect(node.health.status()).toMatchObject({ mode: "shared", leader: "ghost", term: "7", isLeader: false });
    expect(node.reconciler.snapshot?.services.get("web")?.backends[0]?.verdict).toBeNull();
    expect(errors).toEqual([]);
    await ghost.resign();
  });
});
