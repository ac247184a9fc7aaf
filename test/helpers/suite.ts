// The frame of a cluster test file: one real etcd for the file, and every node and backend a test
// started torn down after it (tests keep apart by using their own cluster name, i.e. key prefix).
import { afterAll, afterEach, beforeAll } from "vitest";
import { closeAllBackends } from "./backends.js";
import { type EtcdProcess, startEtcd } from "./etcd.js";
import { stopAllNodes } from "./node.js";

export function useSharedEtcd(onStart: (etcd: EtcdProcess) => void): void {
  let etcd: EtcdProcess | undefined;
  beforeAll(async () => {
    etcd = await startEtcd();
    onStart(etcd);
  });
  afterAll(async () => {
    await etcd?.stop();
  });
  afterEach(async () => {
    await stopAllNodes();
    await closeAllBackends();
  });
}
