// Runs once before the test files. The cluster tests need real etcd processes, the status-page
// test Debian's chromium, spoofed-datagram tests python3, the DNS tests dig (bind9-dnsutils), the kernel
// tests nftables and conntrack, the alert-rule test promtool (Debian's prometheus package), the IPv6
// anycast test BIRD. On a fresh Debian machine as root, installs what is missing;
// otherwise fails with the command that would.
import { execFileSync, spawnSync } from "node:child_process";
import { existsSync } from "node:fs";

const have = (cmd: string) => spawnSync("sh", ["-c", `command -v ${cmd}`], { stdio: "ignore" }).status === 0;

export default function setup(): void {
  const missing: string[] = [];
  if (!have("etcd")) missing.push("etcd-server");
  if (!have("etcdctl")) missing.push("etcd-client");
  if (!existsSync("/usr/bin/chromium")) missing.push("chromium");
  if (!have("dig")) missing.push("bind9-dnsutils");
  // forwarding: nat tests (test/kernel/) program nftables and read conntrack inside their own namespaces.
  if (!have("nft") && !existsSync("/usr/sbin/nft")) missing.push("nftables");
  if (!have("conntrack") && !existsSync("/usr/sbin/conntrack")) missing.push("conntrack");
  // promtool validates deploy/prometheus/ (test/metrics/backend-gauges.test.ts); apt does not start Prometheus.
  if (!have("promtool")) missing.push("prometheus");
  // BIRD for the IPv6 anycast test (test/anycast/ipv6.test.ts, root only: network namespaces).
  if (!existsSync("/usr/sbin/bird")) missing.push("bird2");
  // Spoofed-datagram tests (test/helpers/spoof.ts) send through Python's raw sockets.
  if (!have("python3")) missing.push("python3-minimal");
  if (missing.length === 0) return;
  if (process.getuid?.() === 0 && existsSync("/etc/debian_version")) {
    execFileSync("sh", ["-c", `apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ${missing.join(" ")}`], { stdio: "inherit" });
    return;
  }
  throw new Error(`the tests need ${missing.join(", ")}: apt-get install ${missing.join(" ")} (Debian/Ubuntu)`);
}
