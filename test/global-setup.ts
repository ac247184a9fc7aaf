// Runs once before the test files: the cluster tests need real etcd processes. On a fresh Debian
// machine as root, installs Debian's etcd-server/etcd-client; otherwise fails with how to get them.
import { execFileSync, spawnSync } from "node:child_process";
import { existsSync } from "node:fs";

const have = (cmd: string) => spawnSync("sh", ["-c", `command -v ${cmd}`], { stdio: "ignore" }).status === 0;

export default function setup(): void {
  if (have("etcd") && have("etcdctl")) return;
  if (process.getuid?.() === 0 && existsSync("/etc/debian_version")) {
    execFileSync("sh", ["-c", "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server etcd-client"], { stdio: "inherit" });
    return;
  }
  throw new Error("the tests need etcd and etcdctl on PATH: apt-get install etcd-server etcd-client (Debian/Ubuntu)");
}
