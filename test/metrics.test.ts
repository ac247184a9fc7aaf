// Metric series follow the cluster (issue 13, finding 14): backends and services that leave the
// snapshot stop being exported once nothing is open on them, so churned ids do not pile up.
import net from "node:net";
import { afterEach, describe, expect, it } from "vitest";
import { KeySchema } from "../shared/keys.js";
import { nodeConfigSchema } from "../shared/schema.js";
import { MemoryStore } from "../node/control/memory-store.js";
import { createLogger } from "../node/log.js";
import { BallastNode } from "../node/node.js";
import { closeAllBackends, startTcpEcho } from "./helpers/backends.js";
import { waitFor } from "./helpers/wait.js";

const keys = KeySchema.forCluster("m");
const running: BallastNode[] = [];
afterEach(async () => {
  await Promise.all(running.splice(0).map((n) => n.close()));
  await closeAllBackends();
});

async function start(store: MemoryStore): Promise<BallastNode> {
  const config = nodeConfigSchema.parse({ node: { id: "n1" }, cluster: "m", admin: { listen: "127.0.0.1:0" } });
  const n = new BallastNode({ config, store, log: createLogger("silent", {}) });
  running.push(n);
  await n.start();
  return n;
}

async function scrape(n: BallastNode): Promise<string> {
  return (await fetch(`http://${n.admin.address}/metrics`)).text();
}
const backendLabels = (text: string) => new Set([...text.matchAll(/backend="([^"]+)"/g)].map((m) => m[1]));
const serviceLabels = (text: string) => new Set([...text.matchAll(/service="([^"]+)"/g)].map((m) => m[1]));

describe("metric series of removed backends and services", () => {
  it("drops series of churned backend ids and removed services", async () => {
    const store = new MemoryStore();
    await store.put(keys.service("keep"), JSON.stringify({ listen: "127.0.0.1:0", health: { type: "none" } }));
    const n = await start(store);
    for (let round = 0; round < 5; round++) {
      await store.put(keys.service(`churn${round}`), JSON.stringify({ listen: "127.0.0.1:0", health: { type: "none" } }));
      for (let i = 0; i < 40; i++) await store.put(keys.backend("keep", `r${round}-${i}`), `10.9.${round}.${i + 1}:80`);
      await waitFor(() => n.reconciler.snapshot?.services.get("keep")?.backends.length === 40);
      await scrape(n);
      for (let i = 0; i < 40; i++) await store.delete(keys.backend("keep", `r${round}-${i}`));
      await store.delete(keys.service(`churn${round}`));
    }
    await store.put(keys.backend("keep", "last"), "10.9.99.1:80");
    await waitFor(() => n.reconciler.snapshot?.services.get("keep")?.backends.map((b) => b.id).join() === "last");
    await waitFor(() => !n.plane.listenerOf("churn4"), { message: "the last churned service's listener is gone" });
    const text = await scrape(n);
    expect([...backendLabels(text)]).toEqual(["last"]);
    expect([...serviceLabels(text)]).toEqual(["keep"]);
    expect([...n.plane.stats.backends.keys()]).toEqual(["keep/last"]);
    expect([...n.plane.stats.services.keys()]).toEqual(["keep"]);
  });

  it("keeps a removed backend's series while it has an open connection, then drops it", async () => {
    const echo = await startTcpEcho("a");
    const store = new MemoryStore();
    await store.put(keys.service("web"), JSON.stringify({ listen: "127.0.0.1:0", health: { type: "none" }, timeouts: { drain: "1m" } }));
    await store.put(keys.backend("web", "a"), `127.0.0.1:${echo.port}`);
    const n = await start(store);
    const port = n.plane.listenerOf("web")!.boundPort;
    const c = net.connect(port, "127.0.0.1");
    let got = "";
    c.on("data", (d) => (got += d));
    c.write("x");
    await waitFor(() => got === "a:x" || got === "x");
    await store.delete(keys.backend("web", "a"));
    await waitFor(() => n.reconciler.snapshot?.services.get("web")?.backends.length === 0);
    expect(backendLabels(await scrape(n)).has("a")).toBe(true);
    c.destroy();
    await waitFor(async () => !backendLabels(await scrape(n)).has("a"), { message: "series dropped once the connection closed" });
  });
});
