// A node's record under nodes/<id> says what the node is (ready, draining, mode, unserved services):
// DNS answers, `ballast status`, the drain guard and the rollout read it. The node keeps it true by
// level, not only on each change it notices: a record that says otherwise — overwritten by hand or by
// a rogue writer, or left behind by two writes applied out of order (a DNS answer without a ready node,
// once in CI) — is written again. Real etcd, one in-process node.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { EtcdStore } from "../../node/control/etcd-store.js";
import { encodeValue, parseNodeRecord } from "../../shared/codec.js";
import { KeySchema } from "../../shared/keys.js";
import { closeAllBackends, startTcpEcho } from "../helpers/backends.js";
import { type EtcdProcess, startEtcd } from "../helpers/etcd.js";
import { startNode, stopAllNodes } from "../helpers/node.js";
import { waitFor } from "../helpers/wait.js";

let etcd: EtcdProcess;
let store: EtcdStore;
beforeAll(async () => {
  etcd = await startEtcd();
  store = new EtcdStore({ endpoints: [etcd.endpoint] });
});
afterAll(async () => {
  await stopAllNodes();
  await closeAllBackends();
  await store?.close();
  await etcd?.stop();
});

describe("the node's own record", () => {
  it("a record that says 'not ready' about a ready node is written again, with the node's lease", async () => {
    const keys = KeySchema.forCluster("own");
    const b = await startTcpEcho("b");
    await etcd.put(keys.service("web"), JSON.stringify({ listen: "127.0.0.1:0", health: { type: "none" } }));
    await etcd.put(keys.backend("web", "b"), `127.0.0.1:${b.port}`);
    const node = await startNode({ node: { id: "n1" }, cluster: "own", etcd: { endpoints: [etcd.endpoint], leaseTtl: 5 } });
    const read = async () => {
      const kv = await store.get(keys.node("n1"));
      return kv === null ? null : { record: parseNodeRecord("n1", kv.value), lease: kv.lease };
    };
    await waitFor(async () => (await read())?.record.ready === true, { timeoutMs: 15_000, message: "n1 registered ready" });
    const before = (await read())!;
    expect(before.lease).not.toBe("0");

    // Overwritten with ready: false and no lease, as a stray writer would.
    await store.put(keys.node("n1"), encodeValue({ ...before.record, ready: false }));
    expect((await read())!.record.ready).toBe(false);
    expect(node.ready).toBe(true);

    await waitFor(async () => (await read())?.record.ready === true, { timeoutMs: 15_000, message: "n1's record ready again" });
    const after = (await read())!;
    // Under the node's lease again: it still goes with the node when the node dies.
    expect(after.lease).toBe(before.lease);
    expect(after.record).toMatchObject({ id: "n1", ready: true, draining: false, mode: before.record.mode });
  });
});
