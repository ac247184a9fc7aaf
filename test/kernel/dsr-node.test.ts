// A real Ballast node process (dist/, standalone YAML) inside a balancer namespace of the DSR lab:
// it programs its netdev table from its own snapshot, reports the service in /api/state, explains
// routes with the kernel's hash, exports the kernel's counters, skips a backend its health checks
// find down, and — SIGKILLed — leaves the kernel forwarding (fail-static).
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { ChildProcess } from "node:child_process";
import { netnsUnavailable } from "../helpers/netns.js";
import { CLI } from "../helpers/node.js";
import { waitFor } from "../helpers/wait.js";
import { type DsrLab, dsrLab, type Reply } from "./dsr-topology.js";

const skip = netnsUnavailable();
const backendOf = (r: Reply | string): string => (typeof r === "string" ? `error: ${r}` : r.backend);

describe.skipIf(skip !== null)("a node process with forwarding: dsr (namespaces)", () => {
  let lab: DsrLab;
  let dir: string;
  let node: ChildProcess;

  /** GET on the node's admin API, from inside its namespace (127.0.0.1 there is the node's own). */
  const admin = async (path: string): Promise<string> =>
    lab.nodes[0].run(process.execPath, [
      "-e",
      // No keep-alive agent: the process exits as soon as the answer is in.
      `require("http").get("http://127.0.0.1:9090${path}", { agent: false }, (r) => { let b = ""; r.on("data", (d) => (b += d)); r.on("end", () => process.stdout.write(b)); }).on("error", () => process.exit(3))`,
    ]);

  beforeAll(async () => {
    lab = await dsrLab(["b1", "b2", "b3"]);
    dir = mkdtempSync(join(tmpdir(), "ballast-dsr-node-"));
    const backends = [...lab.backends].map(([id, b]) => `      - { id: ${id}, address: ${b.ip}, port: ${lab.port} }`).join("\n");
    const config = join(dir, "node.yaml");
    writeFileSync(
      config,
      `node: { id: n1 }
cluster: dsrlab
admin: { listen: 127.0.0.1:9090 }
log: { level: warn }
dsr: { interface: eth0 }
services:
  - name: web
    listen: ${lab.vip}:${lab.port}
    forwarding: dsr
    health: { type: tcp, interval: 300ms, timeout: 200ms, rise: 1, fall: 2 }
    backends:
${backends}
`,
    );
    node = lab.nodes[0].spawn(process.execPath, [CLI, "node", "--config", config], { stdio: ["ignore", "ignore", "inherit"] });
    await lab.routeVia(0);
  });
  afterAll(async () => {
    await lab?.topology.destroy();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it("programs the service from its snapshot; state, route explain and metrics describe the kernel path", async () => {
    let state: { services: { name: string; forwarding: { mode: string; programmed: boolean; reason: string | null }; backends: { id: string; dsr: { packets: number } }[] }[]; dsr: { table: string; device: string } } | null = null;
    await waitFor(
      async () => {
        state = JSON.parse(await admin("/api/state"));
        return state!.services[0]?.forwarding?.programmed === true;
      },
      { message: "dsr service programmed", timeoutMs: 60_000 },
    );
    expect(state!.services[0].forwarding).toMatchObject({ mode: "dsr", forwarder: "dsr", reason: null });
    expect(state!.dsr).toMatchObject({ table: "ballast_dsrlab", device: "eth0" });

    for (let i = 0; i < 8; i++) {
      const port = 47000 + i;
      await lab.driver.open(`e${i}`, port);
      const got = backendOf(await lab.driver.ask(`e${i}`));
      await lab.driver.reset(`e${i}`);
      const route = JSON.parse(await admin(`/api/route?service=web&client=${lab.clientIp}&port=${port}`));
      expect(route.forwarding).toBe("dsr");
      expect(route.backend?.id, `flow from ${port}`).toBe(got);
    }
    const metrics = await admin("/metrics");
    const packets = [...metrics.matchAll(/^ballast_dsr_backend_packets_total\{[^}]*\} (\d+)/gm)].reduce((n, m) => n + Number(m[1]), 0);
    expect(packets).toBeGreaterThanOrEqual(8 * 3);
    // The kernel's per-backend bytes land in the proxy's metric names, labelled forwarding="dsr".
    expect(metrics).toMatch(/^ballast_backend_bytes_in_total\{[^}]*forwarding="dsr"[^}]*\} [1-9]/m);
    expect(metrics).toMatch(/^ballast_dsr_service_programmed\{[^}]*service="web"[^}]*\} 1/m);
  }, 150_000);

  it("a backend its health checks find down takes no new flows", { timeout: 60_000 }, async () => {
    await lab.backends.get("b1")!.ns.ip("link", "set", "eth0", "down");
    try {
      await waitFor(async () => JSON.parse(await admin("/api/state")).services[0].backends.find((b: { id: string }) => b.id === "b1").routable === false, {
        message: "b1 verdicted down",
        timeoutMs: 30_000,
      });
      // The kernel table follows the snapshot: poll until a flow the old table sent to b1 goes elsewhere.
      for (let i = 0; i < 20; i++) {
        await lab.driver.open(`h${i}`);
        expect(backendOf(await lab.driver.ask(`h${i}`, 3000))).toMatch(/^b[23]$/);
        await lab.driver.reset(`h${i}`);
      }
    } finally {
      await lab.backends.get("b1")!.ns.ip("link", "set", "eth0", "up");
    }
  });

  it("keeps forwarding after the node process is SIGKILLed (the table stays in the kernel)", async () => {
    await lab.driver.open("k0");
    const before = backendOf(await lab.driver.ask("k0"));
    expect(before).toMatch(/^b\d$/);
    node.kill("SIGKILL");
    await waitFor(() => node.exitCode !== null || node.signalCode !== null, { message: "node exited" });
    expect(backendOf(await lab.driver.ask("k0"))).toBe(before);
    await lab.driver.open("k1");
    expect(backendOf(await lab.driver.ask("k1"))).toMatch(/^b\d$/);
  });

  it("ballast node --flush removes the DSR table: the kernel stops forwarding the VIP", async () => {
    const out = await lab.nodes[0].run(process.execPath, [CLI, "node", "--config", join(dir, "node.yaml"), "--flush"]);
    expect(out).toMatch(/removed nftables table netdev ballast_dsrlab/);
    expect(await lab.nodes[0].exec("nft", ["list", "table", "netdev", "ballast_dsrlab"])).toMatchObject({ code: 1 });
    expect(await lab.driver.ask("k0", 500)).toMatch(/timeout|ECONNRESET|closed/);
  });
});
