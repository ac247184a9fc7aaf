// Events through real etcd: verdict and state changes, leadership and node starts land in each node's
// ring (/api/events) and once in the cluster's log in etcd, which `ballast events [--follow]` reads.
import { execFile, spawn } from "node:child_process";
import { promisify } from "node:util";
import { describe, expect, it } from "vitest";
import { startTcpEcho } from "../helpers/backends.js";
import type { EtcdProcess } from "../helpers/etcd.js";
import { CLI, startNode } from "../helpers/node.js";
import { useSharedEtcd } from "../helpers/suite.js";
import { waitFor } from "../helpers/wait.js";

let etcd: EtcdProcess;
useSharedEtcd((e) => {
  etcd = e;
});

interface Ev {
  at: number;
  node: string;
  kind: string;
  message: string;
  service?: string;
  backend?: string;
}

describe("events", () => {
  it("records verdict changes once per cluster, node events per node, and follows new ones", async () => {
    const a = await startTcpEcho("a");
    const b = await startTcpEcho("b");
    await etcd.put("/ballast/ev/services/web", JSON.stringify({ listen: "127.0.0.1:0", health: { type: "tcp", interval: "100ms", timeout: "200ms", rise: 1, fall: 1 } }));
    await etcd.put("/ballast/ev/backends/web/a", `127.0.0.1:${a.port}`);
    await etcd.put("/ballast/ev/backends/web/b", `127.0.0.1:${b.port}`);
    const nodes = await Promise.all(["e1", "e2"].map((id) => startNode({ node: { id }, cluster: "ev", etcd: { endpoints: [etcd.endpoint], leaseTtl: 2 } })));
    await waitFor(() => nodes.some((n) => n.health.status().isLeader), { message: "a health leader" });
    await waitFor(() => nodes.every((n) => n.reconciler.snapshot?.services.get("web")?.backends.find((x) => x.id === "b")?.verdict?.state === "up"), { message: "b up everywhere" });

    await b.close();
    await waitFor(() => nodes.every((n) => n.events.recent().some((e) => e.kind === "verdict" && e.backend === "b" && e.message.includes("down"))), { message: "the down verdict in both rings" });
    const api = (await (await fetch(`http://${nodes[1].admin.address}/api/events`)).json()) as { node: string; events: Ev[] };
    expect(api.node).toBe("e2");
    expect(api.events.some((e) => e.kind === "verdict" && e.backend === "b")).toBe(true);

    const cli = async (...args: string[]) => (await promisify(execFile)(process.execPath, [CLI, "--etcd", etcd.endpoint, "--cluster", "ev", "-o", "json", ...args])).stdout;
    let all: Ev[] = [];
    await waitFor(async () => {
      all = JSON.parse(await cli("events")) as Ev[];
      return all.some((e) => e.kind === "verdict" && e.backend === "b");
    }, { message: "the verdict in etcd" });
    // Written by the leader only: once, not once per node.
    expect(all.filter((e) => e.kind === "verdict" && e.backend === "b" && e.message.includes("down"))).toHaveLength(1);
    expect(new Set(all.filter((e) => e.kind === "started").map((e) => e.node))).toEqual(new Set(["e1", "e2"]));
    expect(all.some((e) => e.kind === "leadership")).toBe(true);
    for (let i = 1; i < all.length; i++) expect(all[i].at).toBeGreaterThanOrEqual(all[i - 1].at);

    // --follow prints an event written after it started.
    const follow = spawn(process.execPath, [CLI, "--etcd", etcd.endpoint, "--cluster", "ev", "-o", "json", "events", "--follow", "--limit", "1"], { stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    follow.stdout.on("data", (d) => (out += d));
    try {
      await waitFor(() => out.split("\n").filter((l) => l !== "").length >= 1, { timeoutMs: 15_000, message: "follow prints the last event" });
      await etcd.put("/ballast/ev/backends/web/a", JSON.stringify({ address: "127.0.0.1", port: a.port, state: "drain" }));
      await waitFor(() => out.includes('"backend-state"') && out.includes("active → drain"), { timeoutMs: 15_000, message: "follow prints the drain" });
    } finally {
      follow.kill("SIGTERM");
    }
    expect(
      out
        .split("\n")
        .filter((l) => l !== "")
        .every((l) => typeof (JSON.parse(l) as Ev).kind === "string"),
    ).toBe(true);
  }, 90_000);
});
