// The CLI's read-only etcd client over etcd's JSON gateway (node/control/etcd-gateway.ts), against a
// real etcd: prefix listings in pages at one revision, the same records EtcdStore lists, the next
// endpoint when one is down, clear errors; and `ballast status` falling back to etcd3 when an endpoint
// is not etcd's gateway (issue 19).
import { execFile } from "node:child_process";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { EtcdGatewayReader } from "../../node/control/etcd-gateway.js";
import { EtcdStore } from "../../node/control/etcd-store.js";
import { StoreError } from "../../node/control/store.js";
import { type EtcdProcess, startEtcd } from "../helpers/etcd.js";
import { CLI } from "../helpers/node.js";

let etcd: EtcdProcess;
const servers: Server[] = [];

beforeAll(async () => {
  etcd = await startEtcd();
});

afterAll(async () => {
  for (const s of servers) s.close();
  await etcd?.stop();
});

/** A plain HTTP server on port 0 that answers 404 to everything (an endpoint without etcd's gateway); counts requests by path. */
async function notAGateway(): Promise<{ url: string; paths: string[] }> {
  const paths: string[] = [];
  const server = createServer((req, res) => {
    paths.push(req.url ?? "");
    res.writeHead(404, { "content-type": "text/plain" }).end("404 page not found\n");
  });
  servers.push(server);
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, paths };
}

describe("etcd JSON gateway reader", () => {
  it("lists a prefix in pages at one revision, the same records EtcdStore lists", async () => {
    const prefix = "/gw-test/list/";
    for (let i = 0; i < 7; i++) await etcd.put(`${prefix}k${i}`, `value ${i} é`);
    await etcd.put("/gw-test/list0", "outside the prefix");
    await etcd.put("/gw-test/lis", "outside too");
    const reader = new EtcdGatewayReader({ endpoints: [etcd.endpoint], pageSize: 2 });
    const store = new EtcdStore({ endpoints: [etcd.endpoint] });
    try {
      const got = await reader.list(prefix);
      const want = await store.list(prefix);
      expect(got.kvs.map((kv) => kv.key)).toEqual(Array.from({ length: 7 }, (_, i) => `${prefix}k${i}`));
      expect(got.kvs.map((kv) => kv.value.toString())).toEqual(Array.from({ length: 7 }, (_, i) => `value ${i} é`));
      expect(got.kvs).toEqual(want.kvs);
      expect(got.revision).toBe(want.revision);
      expect(await reader.list("/gw-test/none/")).toEqual({ kvs: [], revision: want.revision });
    } finally {
      await store.close();
    }
  });

  it("reads every page at the first page's revision: a key written between pages is not listed", async () => {
    const prefix = "/gw-test/rev/";
    for (let i = 0; i < 4; i++) await etcd.put(`${prefix}k${i}`, "v");
    // A proxy in front of etcd's gateway that writes a key into the prefix after answering the first page.
    let pages = 0;
    const proxy = createServer(async (req, res) => {
      const chunks: Buffer[] = [];
      for await (const c of req) chunks.push(c as Buffer);
      const answer = await fetch(`${etcd.endpoint}${req.url}`, { method: "POST", body: Buffer.concat(chunks), headers: { "content-type": "application/json" } });
      const text = await answer.text();
      if (req.url === "/v3/kv/range" && ++pages === 1) await etcd.put(`${prefix}k2a`, "written between pages");
      res.writeHead(answer.status, { "content-type": "application/json" }).end(text);
    });
    servers.push(proxy);
    await new Promise<void>((resolve) => proxy.listen(0, "127.0.0.1", resolve));
    const reader = new EtcdGatewayReader({ endpoints: [`http://127.0.0.1:${(proxy.address() as AddressInfo).port}`], pageSize: 1 });
    const before = await etcd.revision();
    const got = await reader.list(prefix);
    expect(pages).toBeGreaterThanOrEqual(4);
    expect(got.kvs.map((kv) => kv.key)).toEqual([0, 1, 2, 3].map((i) => `${prefix}k${i}`));
    expect(got.revision).toBe(before);
    expect(await etcd.get(`${prefix}k2a`)).toBe("written between pages");
  });

  it("tries the next endpoint when one refuses the connection; all down is STORE_UNAVAILABLE naming the socket error", async () => {
    await etcd.put("/gw-test/ep/a", "1");
    const dead = "http://127.0.0.1:1";
    const reader = new EtcdGatewayReader({ endpoints: [dead, etcd.endpoint] });
    expect((await reader.list("/gw-test/ep/")).kvs.map((kv) => kv.key)).toEqual(["/gw-test/ep/a"]);
    const err = await new EtcdGatewayReader({ endpoints: [dead] }).list("/gw-test/ep/").catch((e: unknown) => e);
    expect(err).toBeInstanceOf(StoreError);
    expect((err as StoreError).code).toBe("STORE_UNAVAILABLE");
    expect((err as StoreError).message).toMatch(/ECONNREFUSED 127\.0\.0\.1:1/);
  });

  it("an endpoint that is not etcd's gateway is GatewayUnavailable", async () => {
    const other = await notAGateway();
    const err = await new EtcdGatewayReader({ endpoints: [other.url] }).list("/x/").catch((e: unknown) => e);
    expect((err as Error).name).toBe("GatewayUnavailable");
    expect(other.paths).toEqual(["/v3/kv/range"]);
  });

  it("ballast status falls back to etcd3 when the first endpoint is not etcd's gateway", async () => {
    const other = await notAGateway();
    await etcd.put("/ballast/gw/members/m1", "not a member record");
    const r = await promisify(execFile)(process.execPath, [CLI, "--etcd", `${other.url},${etcd.endpoint}`, "--cluster", "gw", "-o", "json", "status"]);
    const out = JSON.parse(r.stdout) as { nodes: unknown[]; invalid: Array<{ key: string; reason: string }> };
    expect(other.paths).toContain("/v3/kv/range");
    expect(out.nodes).toEqual([]);
    // Read through etcd3 from the second endpoint: the malformed member record is listed with its key.
    expect(out.invalid.map((x) => x.key)).toEqual(["/ballast/gw/members/m1"]);
  }, 30_000);
});
