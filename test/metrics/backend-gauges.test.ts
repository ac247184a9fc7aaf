// Per-backend gauges on a real node (up, routable, state, weight, ejected), their series leaving with the
// backend, and the example alert rules in deploy/prometheus/ checked by Debian's promtool.
import { spawnSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { afterEach, describe, expect, it } from "vitest";
import { closeAllBackends, deadPort, startTcpEcho } from "../helpers/backends.js";
import { startNode, stopAllNodes } from "../helpers/node.js";
import { waitFor } from "../helpers/wait.js";
import { metricValue } from "../health/metrics-text.js";

const rulesDir = join(resolve(dirname(fileURLToPath(import.meta.url)), "../.."), "deploy/prometheus");

afterEach(async () => {
  await stopAllNodes();
  await closeAllBackends();
});

function promtool(...args: string[]): { status: number | null; out: string } {
  const r = spawnSync("promtool", args, { cwd: rulesDir, encoding: "utf8" });
  return { status: r.status, out: `${r.stdout}${r.stderr}${r.error ? String(r.error) : ""}` };
}

describe("per-backend gauges and alert rules", () => {
  it("reports up, routable, state, weight and ejected per backend; a removed backend's series go away", async () => {
    const a = await startTcpEcho("a");
    const dead = await deadPort();
    const node = await startNode({
      services: [
        {
          name: "web",
          listen: "127.0.0.1:0",
          health: { type: "tcp", interval: "100ms", timeout: "150ms", rise: 1, fall: 1 },
          backends: [
            { id: "a", address: "127.0.0.1", port: a.port, weight: 3, zone: "z1" },
            { id: "b", address: "127.0.0.1", port: dead, zone: "z2" },
            { id: "c", address: "127.0.0.2", port: a.port, state: "drain" },
          ],
        },
      ],
    });
    const scrape = async () => (await fetch(`http://${node.admin.address}/metrics`)).text();
    await waitFor(async () => metricValue(await scrape(), "ballast_backend_up", { backend: "b" }) === 0 && metricValue(await scrape(), "ballast_backend_up", { backend: "a" }) === 1, {
      message: "verdicts in ballast_backend_up",
    });
    const text = await scrape();
    expect(metricValue(text, "ballast_backend_up", { service: "web", backend: "a", zone: "z1" })).toBe(1);
    expect(metricValue(text, "ballast_backend_routable", { backend: "a" })).toBe(1);
    expect(metricValue(text, "ballast_backend_routable", { backend: "b" })).toBe(0);
    expect(metricValue(text, "ballast_backend_routable", { backend: "c" })).toBe(0);
    expect(metricValue(text, "ballast_backend_weight", { backend: "a" })).toBe(3);
    expect(metricValue(text, "ballast_backend_state", { backend: "c", state: "drain" })).toBe(1);
    expect(metricValue(text, "ballast_backend_state", { backend: "c", state: "active" })).toBe(0);
    expect(metricValue(text, "ballast_backend_ejected", { backend: "a" })).toBe(0);

    await node.store.delete(node.keys.backend("web", "b"));
    await waitFor(async () => metricValue(await scrape(), "ballast_backend_weight", { backend: "b" }) === null, { message: "b's series to go" });
    const after = await scrape();
    for (const name of ["ballast_backend_up", "ballast_backend_routable", "ballast_backend_state", "ballast_backend_ejected"]) {
      expect(metricValue(after, name, { backend: "b" }), name).toBeNull();
    }
    expect(metricValue(after, "ballast_backend_up", { backend: "a" })).toBe(1);

    // Every metric the example rules use is one a node exports.
    const rules = readFileSync(join(rulesDir, "ballast-alerts.yml"), "utf8");
    // (etcd's space metrics exist only on a node with etcd: test/control/etcd-space.test.ts checks those.)
    const used = new Set((rules.match(/\bballast_[a-z_]+/g) ?? []).filter((n) => !n.startsWith("ballast_etcd_")));
    expect(used.size).toBeGreaterThan(4);
    for (const name of used) expect(after, name).toContain(`# TYPE ${name} `);
  });

  it("promtool accepts the rules and their unit tests pass", () => {
    const check = promtool("check", "rules", "ballast-alerts.yml");
    expect(check.out).toContain("SUCCESS");
    expect(check.status, check.out).toBe(0);
    const unit = promtool("test", "rules", "ballast-alerts.test.yml");
    expect(unit.status, unit.out).toBe(0);
  });
});
