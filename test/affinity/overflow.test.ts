// Running past affinity.maxEntries is never silent: a node whose table evicts live entries shows a
// warning in /api/state, sets the ballast_affinity_overflow gauge and logs once per episode (not
// per entry); once entries expire and the table has room again, the episode ends (one more log line).
import { Writable } from "node:stream";
import pino from "pino";
import { describe, expect, it } from "vitest";
import type { StateView } from "../../shared/api.js";
import { nodeConfigSchema } from "../../shared/schema.js";
import type { ServiceState } from "../../node/model/snapshot.js";
import { BallastNode } from "../../node/node.js";
import type { EtcdProcess } from "../helpers/etcd.js";
import { getJson } from "../helpers/node.js";
import { useSharedEtcd } from "../helpers/suite.js";
import { waitFor } from "../helpers/wait.js";

let etcd: EtcdProcess;
useSharedEtcd((e) => {
  etcd = e;
});

const ips = (count: number) => Array.from({ length: count }, (_, i) => `10.77.${Math.floor(i / 254)}.${(i % 254) + 1}`);

describe("affinity table overflow", () => {
  it("warns in /api/state, the metric and one log line per episode, and clears when the table has room again", async () => {
    const p = "/ballast/affoverflow/";
    await etcd.put(`${p}services/web`, JSON.stringify({ listen: "127.0.0.1:0", health: { type: "none" }, affinity: { mode: "source-ip", ttl: "3s" } }));
    const rev = await etcd.put(`${p}backends/web/a`, JSON.stringify({ address: "127.0.0.1", port: 10001 }));
    const lines: Array<{ level: number; msg: string }> = [];
    const sink = new Writable({
      write(chunk, _enc, done) {
        for (const l of chunk.toString().split("\n")) if (l !== "") lines.push(JSON.parse(l));
        done();
      },
    });
    const config = nodeConfigSchema.parse({
      node: { id: "small" },
      cluster: "affoverflow",
      etcd: { endpoints: [etcd.endpoint], leaseTtl: 2 },
      admin: { listen: "127.0.0.1:0" },
      accessLog: { enabled: false },
      affinity: { maxEntries: 50 },
    });
    const node = new BallastNode({ config, log: pino({ level: "info" }, sink) });
    try {
      await node.start();
      await waitFor(() => node.reconciler.appliedRevision >= rev, { message: "node applies the service" });
      const svc = node.reconciler.snapshot!.services.get("web") as ServiceState;
      const full = () => lines.filter((l) => l.msg.startsWith("affinity table full"));
      const ended = () => lines.filter((l) => l.msg.startsWith("affinity table has room again"));

      const state0 = await getJson<StateView>(node.admin.address, "/api/state");
      expect(state0.warnings).toEqual([]);

      // 80 clients into a table of 50, in two bursts: 15 live entries evicted before their TTL, then up to 15 more.
      for (const ip of ips(65)) node.plane.router.route(svc, ip, 40000, null, Date.now());
      let warned: { message: string } | undefined;
      await waitFor(
        async () => {
          const s = await getJson<StateView>(node.admin.address, "/api/state");
          warned = s.warnings?.find((w) => w.kind === "affinity-overflow");
          return warned !== undefined;
        },
        { message: "the overflow warning appears in /api/state" },
      );
      expect(warned!.message).toMatch(/affinity\.maxEntries \(50\): \d+ live entries evicted/);
      await waitFor(() => full().length === 1, { message: "one warning log line" });
      // The second burst evicts only while the table is still full: on a loaded machine the waits
      // above can outlast the TTL and the sweep, so count what it holds in the same turn as the burst.
      const held = node.affinity.entries.count;
      for (const ip of ips(80).slice(65)) node.plane.router.route(svc, ip, 40000, null, Date.now());
      expect(node.affinity.entries.evictions).toBe(15 + Math.max(0, held + 15 - 50));
      expect(await node.metrics.registry.metrics()).toMatch(/ballast_affinity_overflow\{node="small"\} 1/);

      // Entries expire (TTL 3 s): the episode ends once, and the warning and gauge clear.
      await waitFor(() => ended().length === 1, { timeoutMs: 30_000, message: "the overflow episode ends" });
      const s = await getJson<StateView>(node.admin.address, "/api/state");
      expect(s.warnings).toEqual([]);
      expect(await node.metrics.registry.metrics()).toMatch(/ballast_affinity_overflow\{node="small"\} 0/);
      // One line each for the whole episode, not one per evicted entry.
      expect(full()).toHaveLength(1);
      expect(full()[0].level).toBe(40);
      expect(ended()).toHaveLength(1);
    } finally {
      await node.close();
    }
  });
});
