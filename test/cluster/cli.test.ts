// The `ballast` CLI against real etcd and real nodes: services and backends written by the CLI are
// routed; -o json for scripts; status and route ask the nodes; clear errors without stack traces.
import http from "node:http";
import type { AddressInfo } from "node:net";
import { describe, expect, it } from "vitest";
import { encodeValue } from "../../shared/codec.js";
import { KeySchema } from "../../shared/keys.js";
import { EtcdStore } from "../../node/control/etcd-store.js";
import { deadPort, startTcpEcho, tcpExchange } from "../helpers/backends.js";
import { ballastCli } from "../helpers/cli.js";
import type { EtcdProcess } from "../helpers/etcd.js";
import { portOf, startNode } from "../helpers/node.js";
import { useSharedEtcd } from "../helpers/suite.js";
import { waitFor } from "../helpers/wait.js";

let etcd: EtcdProcess;
useSharedEtcd((e) => {
  etcd = e;
});
const ballast = ballastCli(() => etcd.endpoint, "cli");

describe("ballast CLI", () => {
  // Eleven CLI runs (more while polling), each a Node start: seconds apiece on a loaded 2-core machine (load 17: 30 s was not enough).
  it("manages services and backends that nodes route to, and explains routes", { timeout: 120_000 }, async () => {
    const a = await startTcpEcho("a");
    const b = await startTcpEcho("b");
    expect((await ballast("service", "put", "web", "--json", JSON.stringify({ listen: "127.0.0.1:0", algorithm: "source-ip", health: { type: "none" } }))).code).toBe(0);
    expect((await ballast("backend", "add", "web", "a", `127.0.0.1:${a.port}`, "--weight", "2", "--zone", "z1")).code).toBe(0);
    const node = await startNode({ node: { id: "n1" }, cluster: "cli", etcd: { endpoints: [etcd.endpoint], leaseTtl: 2 } });
    expect(await tcpExchange(portOf(node, "web"), "1")).toBe("a:1");

    const ls = JSON.parse((await ballast("-o", "json", "backend", "ls", "web")).stdout) as Array<Record<string, unknown>>;
    expect(ls).toEqual([expect.objectContaining({ id: "a", address: `127.0.0.1:${a.port}`, weight: 2, zone: "z1", state: "active" })]);

    await ballast("backend", "add", "web", "b", `127.0.0.1:${b.port}`);
    expect((await ballast("backend", "drain", "web", "a")).code).toBe(0);
    await waitFor(() => node.reconciler.snapshot?.services.get("web")?.targets.map((t) => t.id).join() === "b");
    expect(await tcpExchange(portOf(node, "web"), "2")).toBe("b:2");

    await waitFor(async () => JSON.parse((await ballast("-o", "json", "node", "ls")).stdout).length === 1, { message: "node registered" });
    const route = JSON.parse((await ballast("-o", "json", "route", "web", "203.0.113.9")).stdout) as { backend: { id: string }; reason: string; node: string };
    expect(route).toMatchObject({ backend: { id: "b" }, reason: "source-ip", node: "n1" });

    const status = await ballast("status");
    expect(status.stdout).toMatch(/NODES[\s\S]*n1[\s\S]*SERVICES[\s\S]*web[\s\S]*BACKENDS[\s\S]*a\s+127\.0\.0\.1:\d+\s+drain/);

    expect((await ballast("service", "rm", "web")).code).toBe(0);
    expect(JSON.parse((await ballast("-o", "json", "service", "ls")).stdout)).toEqual([]);
  });

  it("rejects an invalid record before writing it, naming the field", async () => {
    const r = await ballast("service", "put", "bad", "--json", JSON.stringify({ listen: "127.0.0.1:0", protocol: "sctp" }));
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/service bad is invalid: protocol/);
    expect(await etcd.get("/ballast/cli/services/bad")).toBeNull();
  });

  it("says clearly when etcd is unreachable, without a stack trace", async () => {
    const port = await deadPort();
    const r = await ballastCli(() => `http://127.0.0.1:${port}`, "cli")("service", "ls");
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/^ballast: .*(etcd|unavailable|connect)/i);
    expect(r.stderr).not.toMatch(/\n\s+at /);
  });

  it("status sends --token only to nodes in --trust, and lists junk node records as invalid (issue 13, finding 10)", async () => {
    const keys = KeySchema.forCluster("cli-trust");
    const node = await startNode({ node: { id: "t1" }, cluster: "cli-trust", etcd: { endpoints: [etcd.endpoint], leaseTtl: 2 }, admin: { listen: "127.0.0.1:0", token: "s3cret" } });
    const seen: Array<string | undefined> = [];
    const trap = http.createServer((req, res) => {
      seen.push(req.headers.authorization);
      res.writeHead(401, { "content-type": "application/json" }).end("{}");
    });
    await new Promise<void>((r) => trap.listen(0, "127.0.0.2", r));
    const admin = `127.0.0.2:${(trap.address() as AddressInfo).port}`;
    const client = new EtcdStore({ endpoints: [etcd.endpoint] });
    try {
      const record = { id: "rogue", address: admin, admin, zone: "", version: "0", ready: true, draining: false, revision: 1, mode: "shared", startedAt: 1, updatedAt: 1 };
      await client.put(keys.node("rogue"), encodeValue(record));
      await client.put(keys.node("junk"), encodeValue({ ...record, id: "junk", admin: "evil.example/steal?x=" }));
      await waitFor(() => node.reconciler.nodes.has("t1"), { message: "t1 registered" });
      const status = await ballast("--cluster", "cli-trust", "--trust", "127.0.0.1", "-o", "json", "status", "--token", "s3cret");
      const out = JSON.parse(status.stdout) as { nodes: Array<{ node: string; ready: unknown }>; invalid: Array<{ key: string; reason: string }> };
      expect(seen.length).toBe(1);
      expect(seen[0]).toBeUndefined();
      expect(out.nodes.find((n) => n.node === "rogue")?.ready).toBe("token withheld (not in --trust)");
      expect(out.nodes.find((n) => n.node === "t1")?.ready).toBe(true);
      expect(out.nodes.map((n) => n.node)).not.toContain("junk");
      expect(out.invalid.find((r) => r.key === keys.node("junk"))?.reason).toMatch(/admin/);
    } finally {
      await client.close();
      await new Promise((r) => trap.close(r));
    }
  });
});
