// Issue 13 (part A), finding 2: a node that must list more than its gRPC receive limit in one page
// could never sync again (RESOURCE_EXHAUSTED on every try). Real etcd (started with a larger
// --max-request-bytes so big values can be written at all) and a small receive limit on the reading
// client, so the test stays fast: 64 MiB in production, 2 MiB here.
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { EtcdStore } from "../../node/control/etcd-store.js";
import { MAX_VALUE_BYTES } from "../../node/control/records.js";
import { createLogger } from "../../node/log.js";
import { BallastNode } from "../../node/node.js";
import { encodeValue } from "../../shared/codec.js";
import { nodeConfigSchema } from "../../shared/schema.js";
import { closeAllBackends, startTcpEcho, tcpExchange } from "../helpers/backends.js";
import { type EtcdProcess, startEtcd } from "../helpers/etcd.js";
import { waitFor } from "../helpers/wait.js";

const RECEIVE = 2 * 1024 * 1024;
let etcd: EtcdProcess;
let writer: EtcdStore;
const stores: EtcdStore[] = [];
const nodes: BallastNode[] = [];

beforeAll(async () => {
  etcd = await startEtcd({ extraArgs: ["--max-request-bytes=8388608"] });
  writer = new EtcdStore({ endpoints: [etcd.endpoint] });
});
afterAll(async () => {
  await writer?.close();
  await etcd?.stop();
});
afterEach(async () => {
  for (const n of nodes.splice(0)) await n.close();
  for (const s of stores.splice(0)) await s.close();
  await closeAllBackends();
});

function reader(): EtcdStore {
  const s = new EtcdStore({ endpoints: [etcd.endpoint], maxReceiveBytes: RECEIVE });
  stores.push(s);
  return s;
}

/** An affinity batch as another node would write it, padded to `bytes` (readers ignore unknown fields). */
function batch(bytes: number): Buffer {
  return encodeValue({ node: "n9", entries: [], pad: "x".repeat(bytes) });
}

describe("listing more than one message holds", () => {
  it("pages by size: 20 affinity batches of 300 KiB (6 MiB) through a 2 MiB receive limit", async () => {
    const prefix = "/ballast/pages/";
    for (let i = 0; i < 20; i++) await writer.put(`${prefix}affinity/web/n9/${String(i).padStart(3, "0")}`, batch(300 * 1024));
    const { kvs } = await reader().list(prefix);
    expect(kvs.length).toBe(20);
    expect(kvs.every((kv) => (kv as { unreadable?: string }).unreadable === undefined && kv.value.length > 300 * 1024)).toBe(true);
  });

  it("a value larger than the receive limit is listed by key as invalid; the node syncs and serves", async () => {
    const backend = await startTcpEcho("a");
    const prefix = "/ballast/huge/";
    await writer.put(`${prefix}services/web`, JSON.stringify({ listen: "127.0.0.1:0", health: { type: "none" } }));
    await writer.put(`${prefix}backends/web/a`, `127.0.0.1:${backend.port}`);
    for (let i = 0; i < 6; i++) await writer.put(`${prefix}affinity/web/n9/${i}`, batch(500 * 1024));
    await writer.put(`${prefix}affinity/web/n9/huge`, batch(3 * 1024 * 1024));
    await writer.put(`${prefix}affinity/web/n9/over-cap`, batch(MAX_VALUE_BYTES + 1024));

    const { kvs } = await reader().list(prefix);
    const huge = kvs.find((kv) => kv.key.endsWith("/huge"));
    expect((huge as { unreadable?: string } | undefined)?.unreadable).toMatch(/larger than this node may receive/);
    expect(kvs.length).toBe(10);

    const config = nodeConfigSchema.parse({ node: { id: "n1" }, cluster: "huge", admin: { listen: "127.0.0.1:0" }, etcd: { endpoints: [etcd.endpoint] } });
    const node = new BallastNode({ config, store: reader(), log: createLogger("silent") });
    nodes.push(node);
    await node.start();
    expect(node.ready).toBe(true);
    expect(await tcpExchange(node.plane.listenerOf("web")!.boundPort, "q")).toBe("a:q");
    const invalid = node.reconciler.snapshot!.invalid;
    expect(invalid).toEqual(
      expect.arrayContaining([
        { key: `${prefix}affinity/web/n9/huge`, reason: expect.stringMatching(/larger than this node may receive/) },
        { key: `${prefix}affinity/web/n9/over-cap`, reason: expect.stringMatching(/exceeds the 1048576-byte limit/) },
      ]),
    );
    expect(invalid.length).toBe(2);

    // A value over the cap arriving by watch is listed too; a routing record keeps its last good value.
    await writer.put(`${prefix}services/web`, Buffer.concat([Buffer.from(JSON.stringify({ listen: "127.0.0.1:0", health: { type: "none" } })), Buffer.alloc(MAX_VALUE_BYTES, 0x20)]));
    await waitFor(() => node.reconciler.snapshot!.invalid.some((r) => r.key === `${prefix}services/web`), { message: "oversized service listed" });
    expect(await tcpExchange(node.plane.listenerOf("web")!.boundPort, "r")).toBe("a:r");
  });
});
